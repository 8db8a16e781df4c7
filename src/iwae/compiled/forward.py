"""``torch.compile`` of the training step's forward pass (``--compile``).

    forward = compiled_forward("default", device)
    bound = accumulate_gradients(model, x, spec, generator, forward=forward)

The compiled function is :func:`iwae.estimators.forward_terms`: the encoder, the sampling, the
decoder, the log-weights and the estimator's surrogates. AOTAutograd compiles its backward with it,
so ``backward()`` runs compiled kernels too; the draws from the run's generator stay eager calls
between compiled graphs (dynamo does not trace a ``torch.Generator``), so a compiled step draws the
same random numbers as an eager one, and its bound and gradients agree to float rounding (tested).

Modes: ``none`` (eager, the default), ``default`` (inductor), ``reduce-overhead`` (inductor with CUDA
graphs on CUDA, for the per-step launch overhead at small k; on CPU it is ``default``). Each new
input shape compiles once more (the last, smaller minibatch of an epoch; each kl_warmup weight).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..choices import COMPILE_MODES
from ..errors import ConfigError
from ..estimators import forward_terms

__all__ = ["COMPILE_MODES", "compiled_forward"]


def compiled_forward(mode: str, device: str | torch.device) -> Callable | None:
    """:func:`iwae.estimators.forward_terms` compiled in ``mode`` for ``device``; None for ``none`` (eager)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode in ("none", "step"):  # eager, or the whole step (iwae.compiled.step) instead
        return None
    if mode == "reduce-overhead" and torch.device(device).type != "cuda":
        mode = "default"  # CUDA graphs only exist on CUDA
    try:
        return torch.compile(forward_terms, mode=mode, dynamic=False)
    except RuntimeError as e:  # a torch that cannot compile here (torch 2.3 on Python 3.12: no dynamo)
        raise ConfigError(
            f"compile {mode} is not available with torch {torch.__version__} here "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); use compile none",
            ["compile"],
        ) from None
