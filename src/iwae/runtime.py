"""Process-level settings that make CPU training and evaluation faster, and honest timing on CUDA.

:func:`synchronize` waits for queued CUDA kernels before a clock is read; :func:`describe` records the
device and the torch and CUDA versions beside a result.

glibc's malloc serves large blocks with mmap and returns freed memory at the top of the heap to
the operating system. A training step or an L_5000 chunk allocates and frees tens of megabytes of
temporaries of varying sizes, so the same memory is unmapped and faulted back in, page by page, on
every step: in a virtual machine each fault costs microseconds, and L_5000 ran at 30-33 images/s
with about 3 million page faults against 49-52 images/s with the thresholds raised (2-core CPU,
see benchmarks/). Raising glibc's mmap and trim thresholds keeps freed blocks in the heap for reuse;
the process then holds on to its peak memory, which for these models is a few hundred MB.

Set ``IWAE_KEEP_MALLOC=1`` to leave the allocator alone.

Threads (:func:`choose_threads`): torch starts one thread per core, and on a machine that others are
using its threads wait for each other. A 1-layer IWAE training step on a 2-core machine under a load
average of 6.5 took a median 16 ms with one thread and 281 ms with two (6 alternating repeats of 60
steps). So where the user has not chosen (``--threads``, ``OMP_NUM_THREADS``), the default is torch's,
but at most the cores that the load average leaves free, and at least one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

from .errors import ConfigError

__all__ = [
    "tune_allocator",
    "synchronize",
    "describe",
    "runtime_text",
    "check_device",
    "cores",
    "free_cores",
    "choose_threads",
    "available_memory",
]

# environment variables by which a user has already chosen the thread count: left alone
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Raises glibc's mmap and trim thresholds to ``threshold`` bytes, once per process.

    Returns True if the allocator was tuned (Linux with glibc), False otherwise.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("IWAE_KEEP_MALLOC"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, threshold)) and ok
    _done = ok
    return ok


def synchronize(device: str | torch.device) -> None:
    """Waits for the kernels queued on ``device`` to finish (CUDA runs them asynchronously), so that a
    clock read next measures them; nothing to do on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: str | torch.device) -> dict:
    """Where a number was computed: the device, its name (GPU) and the torch and CUDA versions; the
    same seed gives other random numbers on CPU and CUDA, so results record it."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores() -> int:
    """The cores the 1-minute load average leaves free, at least 1 (all of them where the load average
    cannot be read)."""
    total = cores()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return total
    return max(1, min(total, total - round(load)))


def choose_threads(threads: int | None = None) -> int:
    """Sets torch's CPU threads: ``threads`` where given; else, unless ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` chose them, torch's default capped at :func:`free_cores`. Returns the count."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}", ["threads"])
        torch.set_num_threads(threads)
        return threads
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        return torch.get_num_threads()
    chosen = min(torch.get_num_threads(), free_cores())
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    return chosen


def runtime_text(runtime: dict) -> str:
    """One line of a :func:`describe` record: ``cpu, torch 2.13.0+cpu``; the CUDA version is the one
    torch was built for (it says nothing about the machine's driver), so on the CPU it is labelled as
    the build's: ``cpu, torch 2.14.1+cu130 (a build for CUDA 13.0, not used on the CPU)``."""
    device = str(runtime.get("device"))
    text = device + (f" ({runtime['gpu']})" if runtime.get("gpu") else "") + f", torch {runtime.get('torch')}"
    cuda = runtime.get("cuda")
    if cuda and device.startswith("cuda"):
        text += f", built for CUDA {cuda}"
    elif cuda:
        text += f" (a build for CUDA {cuda}, not used on the CPU)"
    return text


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a ConfigError (field ``device``) that says what is wrong with it:
    an unknown name (``gpu``), or CUDA asked for where there is none."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N", ["device"]) from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N", ["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but CUDA is not available; use device cpu", ["device"])
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device} requested but there are {torch.cuda.device_count()} CUDA devices", ["device"]
        )
    return dev


def available_memory(device: str | torch.device) -> int:
    """Bytes of memory a new allocation on ``device`` can still get: on CUDA the device's free memory; on
    the CPU the system's available memory (``MemAvailable`` of /proc/meminfo on Linux: free pages plus
    caches the kernel can drop), else the physical memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: nothing known, nothing refused
        return 1 << 62
