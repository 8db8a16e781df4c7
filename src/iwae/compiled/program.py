"""A traced step compiled by inductor, where the compiled programs are cached on disk, and CUDA graphs of them.

Inductor compiles a graph into C++ loops around MKL's matrix products on the CPU (Triton kernels on
CUDA), called without Dynamo's guards (``torch._inductor.standalone_compile``). Compiling takes tens of
seconds on a 2-core CPU; inductor's on-disk caches (its FX graph and AOTAutograd caches) serve the
same program to a later process, a resume or another run of the same shapes, in a few seconds. They
live in :func:`cache_dir`: ``$TORCHINDUCTOR_CACHE_DIR`` where it is set, else ``inductor/`` in iwae's
cache folder (``$IWAE_CACHE_DIR``, ``$XDG_CACHE_HOME/iwae`` or ``~/.cache/iwae``, where the data sets
are kept too), not inductor's default under the system's temporary folder, which a reboot empties.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..data import default_cache_dir

__all__ = ["INDUCTOR_OPTIONS", "inductor_options", "cache_dir", "compile_graph", "capture_cuda_graph"]

# inductor's settings on the CPU: a C++ wrapper calls the kernels (the Python one cost 4-9% of a B = 20,
# k = 1 step on 1 thread, measured alternating on a loaded 2-core CPU; its cold compile took as long, 43 s)
INDUCTOR_OPTIONS = {"config_patches": {"cpp_wrapper": True}}


def inductor_options(device: torch.device) -> dict:
    """Inductor's options for ``device``: on CUDA its Python wrapper (a CUDA graph replays the kernels
    without calling it)."""
    return INDUCTOR_OPTIONS if device.type == "cpu" else {}


def cache_dir() -> Path:
    """The folder of inductor's on-disk caches: ``$TORCHINDUCTOR_CACHE_DIR``, else ``inductor/`` in
    :func:`iwae.data.default_cache_dir`."""
    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(explicit) if explicit else default_cache_dir() / "inductor"


# compiled programs of this process by graph: a second compiled step of the same step (a resume, another
# run of the same shapes, the next member of a --seeds group) reuses the program instead of loading it again
_PROGRAMS: dict[tuple, Callable] = {}


def compile_graph(graph: torch.fx.GraphModule, example: list[torch.Tensor], device: torch.device) -> Callable:
    """``graph`` compiled by inductor for inputs like ``example``, once per process for each graph and
    input layout, through the on-disk caches of :func:`cache_dir`."""
    # deferred: inductor takes seconds to import, and only --compile step needs it
    from torch._inductor import standalone_compile

    # inductor reads its cache folder from the environment, when it compiles
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())

    def build() -> Callable:
        options = inductor_options(device)
        return standalone_compile(graph, example, dynamic_shapes="from_example_inputs", options=options)

    if any(node.op == "get_attr" for node in graph.graph.nodes):  # tensor constants: the code does not say all
        return build()
    key = (  # C++ kernels are compiled for the number of threads (as inductor's own cache keys them)
        hashlib.sha256(graph.code.encode()).hexdigest(),
        tuple((t.shape, t.stride(), t.dtype, t.device) for t in example),
        torch.get_num_threads(),
    )
    if key not in _PROGRAMS:
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def capture_cuda_graph(program: Callable, args: list[torch.Tensor]) -> Callable[[], tuple]:
    """A CUDA graph of ``program(*args)``: a function that replays it and returns its outputs (the
    graph's own tensors, overwritten by the next replay).

    The program updates its inputs in place (the parameters, Adam's state), so it is warmed up on
    copies of ``args``, on a side stream as CUDA graphs need; the capture itself records the kernels on
    ``args`` without running them. Every later replay reads and writes those same tensors: the caller
    copies each step's inputs into them (:class:`iwae.compiled.step.CompiledStep` does)."""
    device = args[0].device
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        scratch = [a.clone() for a in args]
        for _ in range(2):
            program(*scratch)
    torch.cuda.current_stream(device).wait_stream(side)
    del scratch
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = program(*args)

    def replay() -> tuple:
        graph.replay()
        return outputs

    return replay
