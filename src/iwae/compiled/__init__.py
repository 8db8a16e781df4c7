"""Compiled training steps (``--compile``).

- :mod:`iwae.compiled.forward`: ``torch.compile`` of the step's forward pass (modes ``default`` and
  ``reduce-overhead``; the optimiser and the draws stay eager).
- :mod:`iwae.compiled.step`: the whole step, forward, every estimator's surrogate, backward and Adam,
  as one program compiled by inductor (mode ``step``): :mod:`~iwae.compiled.trace` traces it,
  :mod:`~iwae.compiled.program` compiles it (and caches it on disk, and captures it in a CUDA graph).
"""

from __future__ import annotations

from ..choices import COMPILE_MODES
from .forward import compiled_forward
from .program import INDUCTOR_OPTIONS, cache_dir
from .step import CompiledStep, compiled_step
from .trace import NotCompilable, check_compilable

__all__ = [
    "COMPILE_MODES",
    "compiled_forward",
    "CompiledStep",
    "NotCompilable",
    "check_compilable",
    "compiled_step",
    "INDUCTOR_OPTIONS",
    "cache_dir",
]
