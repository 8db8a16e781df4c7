"""Where the runs of a reproduction execute (:func:`iwae.experiments.engine.reproduce` picks one):

- ``workers=1`` (the default on CPU): one run after another in this process.
- ``workers=N``: N worker processes; on CPU each is pinned (``sched_setaffinity``) to its own
  share of the cores and sets torch's threads to it; with ``device="cuda"`` the workers take the
  GPUs in turn, several workers per GPU when N exceeds the GPUs (small runs then share a GPU);
  the default on CUDA is one worker per GPU, and even one worker is a process of its own.
  A worker that dies takes down the pool: it is rebuilt, and the runs it held run again, one at
  a time. A run that fails on its device (CUDA out of memory, a CUDA error,
  :func:`is_device_failure`) counts as a dead worker, since its CUDA context may be unusable:
  the worker exits, and the run is retried alone once; failing again, it is failed with its error.
- ``ray="auto"`` or an address: each run is a Ray task asking for ``cpus_per_run`` CPUs (or one
  GPU with ``device="cuda"``). The task trains in a temporary folder on its node, from the files
  the driver sends (a checkpoint to resume, the model a continued run starts from), and returns
  the run's files, which the driver writes to the output folder: no shared file system is needed.
  Ray is an optional dependency (``pip install "iwae[ray]"``), imported when asked for. With ``device="cuda"`` a cluster
  without a GPU is refused before anything runs (its tasks would wait for ever), and a run whose
  device fails is run once more in a fresh task.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch

from .. import rundir
from .execute import execute_run

__all__ = ["DEVICE_FAILURE_EXIT"]

_WORKER: dict = {}  # this worker process's device, threads and progress (set by _init_worker)
DEVICE_FAILURE_EXIT = 75  # a worker's exit status after a device failure (EX_TEMPFAIL: try again)


def _init_worker(slots, threads: int, device: str, progress: bool = False) -> None:
    """Runs once in each worker process: takes a slot, pins to its cores or picks its GPU."""
    slot = slots.get()
    if device == "cuda":
        _WORKER["device"] = f"cuda:{slot % max(1, torch.cuda.device_count())}"
    else:
        _WORKER["device"] = device
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if cores:  # a contiguous share of the cores: workers do not contend for the same ones
            mine = [cores[(slot * threads + i) % len(cores)] for i in range(threads)]
            os.sched_setaffinity(0, mine)
    _WORKER["threads"], _WORKER["progress"] = threads, progress
    torch.set_num_threads(threads)


def _pool_run(spec: dict, run_dir: str, data_dir: str | None) -> dict:
    result = execute_run(spec, run_dir, data_dir, _WORKER["device"], _WORKER["threads"], _WORKER.get("progress", False))
    if result.get("device_failure"):
        # out of memory or a CUDA error: this process's CUDA context may be unusable for any later
        # run, so it exits like a dead worker; the pool is rebuilt and the run retried alone, and
        # its error.json (written above) says why if it fails again
        sys.stderr.flush()
        os._exit(DEVICE_FAILURE_EXIT)
    return result


class _Inline:
    """Runs each run when submitted, in this process (one worker): progress bars, plain tracebacks."""

    def __init__(self, device: str, threads: int, progress: bool, splits=None):
        self.device, self.threads, self.progress, self.splits = device, threads, progress, splits

    def submit(self, spec: dict, run_dir: str, data_dir: str | None) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(execute_run(spec, run_dir, data_dir, self.device, self.threads, self.progress, self.splits))
        return future

    def shutdown(self) -> None:
        pass


class _Pool:
    """Spawned worker processes, each pinned to its share of the cores (or taking a GPU in turn).

    A worker that dies (killed, out of memory) breaks a ProcessPoolExecutor for every run in it:
    :meth:`restart` starts a fresh pool so the reproduction can go on.
    """

    def __init__(self, workers: int, threads: int, device: str, progress: bool = False):
        self.workers, self.threads, self.device, self.progress = workers, threads, device, progress
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        slots = ctx.Queue()
        for i in range(self.workers):
            slots.put(i)
        self.pool = cf.ProcessPoolExecutor(
            self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(slots, self.threads, self.device, self.progress),
        )

    def submit(self, spec: dict, run_dir: str, data_dir: str | None) -> cf.Future:
        return self.pool.submit(_pool_run, spec, run_dir, data_dir)

    def restart(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._start()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _device_failure_written(run_dir: Path) -> dict | None:
    """The error.json a worker wrote before it exited for a device failure (see _pool_run); None if
    there is none: the worker died of something else. (_run_all removes it before each attempt.)"""
    error = rundir.read_error(run_dir)
    return error if error is not None and error.get("device_failure") else None


def _ray_task(
    spec: dict, files: dict[str, bytes], dependency: dict[str, bytes], data_dir: str | None, device: str, threads: int
) -> tuple[dict, dict[str, bytes]]:
    """A run on a Ray worker: rebuild its folder (and its dependency's model) in a temporary
    folder, execute it there, and return its result and files."""
    with tempfile.TemporaryDirectory(prefix="iwae-ray-") as tmp:
        runs = Path(tmp) / "runs"
        run_dir = runs / spec["name"]
        run_dir.mkdir(parents=True)
        rundir.write_files(run_dir, files)
        if spec.get("after"):
            rundir.write_files(runs / spec["after"], dependency)
        result = execute_run(spec, str(run_dir), data_dir, device, threads)
        return result, rundir.read_files(run_dir)


def _probe(address: str | None, seconds: float = 10.0) -> None:
    """Fails fast, with a clear message, when a ``host:port`` Ray address does not answer (Ray itself
    waits minutes for an unreachable head node)."""
    if not address or address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray wants auto, local or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as e:
        raise ValueError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}") from None


class _Ray:
    """Submits runs as Ray tasks and writes what they return into the output folder."""

    def __init__(self, address: str | None, cpus: int, threads: int, device: str):
        try:
            import ray  # deferred: Ray is optional (the [ray] extra) and slow to import
        except ImportError:
            raise ValueError('--ray needs Ray: pip install "iwae[ray]"') from None
        self.ray = ray
        if not ray.is_initialized():
            _probe(address)
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ValueError(
                    f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                ) from None
        if device == "cuda":
            # a task asking for a GPU that no node has is never scheduled: Ray would wait for ever
            available = ray.cluster_resources().get("GPU", 0)
            if available < 1:
                raise ValueError(
                    f"--device cuda, but the Ray cluster at {address or 'a new local instance'} has no "
                    f"GPU (ray.cluster_resources() lists {available:g}); its tasks would wait for ever: "
                    f"add nodes with GPUs or use --device cpu"
                )
        gpus = 1 if device == "cuda" else 0
        # max_calls=1 on a GPU (Ray's default there, said anyway): a worker whose CUDA context a
        # failed run may have poisoned serves no other run
        options = {"max_calls": 1} if gpus else {}
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0, **options)(_ray_task)
        self.threads, self.device = threads, device
        self.refs: list = []

    def submit(self, spec: dict, run_dir: str, data_dir: str | None) -> cf.Future:
        run_dir = Path(run_dir)
        files = {}
        if rundir.has_checkpoint(run_dir):  # resume on the worker
            files = rundir.read_files(run_dir, without_results=True)
        dependency = {}
        if spec.get("after"):
            dependency = rundir.model_bytes(run_dir.parent / spec["after"])
        ref = self.remote.remote(spec, files, dependency, data_dir, self.device, self.threads)
        self.refs.append(ref)
        future: cf.Future = cf.Future()

        def gather(ray_future: cf.Future) -> None:
            try:
                result, out_files = ray_future.result()
                with rundir.writing(run_dir, rundir.REPRODUCE):
                    rundir.write_files(run_dir, out_files)
                future.set_result(result)
            except BaseException as e:
                future.set_exception(e)

        ref.future().add_done_callback(gather)
        return future

    def shutdown(self) -> None:
        for ref in self.refs:  # after an interruption: stop the tasks still running (finished ones are unaffected)
            self.ray.cancel(ref, force=True)
