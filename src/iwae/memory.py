"""How many samples a no-grad forward pass may take at once: the bytes one sample of one image needs
(:func:`bytes_per_row`), and the chunks of images and samples a memory budget allows (:func:`chunking`);
and what training needs (:func:`training_bytes`), estimated before anything is allocated.

L_k (:func:`iwae.evaluate.log_likelihood`), the validation bound of training and AIS
(:mod:`iwae.ais.likelihood`) all draw their samples in chunks sized here, so that no decoder call
exceeds its budget whatever k and the number of images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .models import VAE

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "GIB",
    "CPU_ROWS_PER_CALL",
    "CPU_HEAP_FACTOR",
    "TRAIN_ROW_FACTOR",
    "bytes_per_row",
    "row_budget",
    "chunking",
    "training_bytes",
]

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes
GIB = 1 << 30  # bytes; budgets are reported in GiB, the unit of ``iwae evaluate --memory-budget``
# Decoder calls of a few thousand rows keep their temporaries in cache: faster than larger calls
# on CPU (see benchmarks/). Larger calls only happen on CUDA, where they are faster.
CPU_ROWS_PER_CALL = 2500
# What a chunk costs the process on the CPU, in multiples of its tensors' bytes: glibc keeps freed
# temporaries resident in its heap (iwae.runtime.tune_allocator raises its trim and mmap thresholds for
# speed), and the varying sizes of a chunk's temporaries fragment it, so the process's peak resident
# memory grows by up to about three times the tensor peak of a chunk (measured with getrusage around
# L_5000 of 4 images: 2.5 to 3.5 times for the 500-component mixture, tests/test_memory_budget.py).
CPU_HEAP_FACTOR = 3
# A training step keeps the forward pass's activations for the backward pass and builds their gradients:
# its peak per sample row is about this many times a no-grad pass's bytes_per_row (measured 0.7 to 8 by torch's
# profiler for the networks and priors of tests/test_memory_budget.py at 1,000-2,000 rows, 8 for the gated net)
TRAIN_ROW_FACTOR = 3


def bytes_per_row(model: VAE) -> int:
    """Upper estimate of the memory one sample of one image needs in a no-grad forward pass.

    The pass runs in stages (the encoder layers above the first, log p(z_L), the Gaussian decoder
    layers, p(x | z_1)) whose temporaries are freed before the next, so a row needs what it holds
    throughout plus the largest stage. The prior's stage is the prior's own count
    (``floats_per_row``): a mixture's per-component densities, C of them per row, can exceed the
    networks' (measured in tests/test_memory_budget.py, which also pins this estimate within a
    factor 2 of the measured peak).
    """
    cfg = model.config
    widest = max(h for hs in cfg.hidden_dims for h in hs)
    # held throughout: every layer's sample and noise, log q, log p, the log-weight pieces
    held = 2 * sum(cfg.latent_dims) + 8
    stages = (
        3 * widest,  # a tanh layer: its input, 2h and the sigmoid
        # p(x | z_1): the raw output and the likelihood's temporaries (Bernoulli: logits and softplus),
        # the last hidden layer
        _likelihood_floats_per_pixel(model) * cfg.input_dim + max(cfg.hidden_dims[0]),
        widest + 6 * max(cfg.latent_dims),  # a Gaussian layer: its head, loc and log-scale, log N's temporaries
        _prior_floats_per_row(model),  # log p(z_L)
        # p(x | z_1) of a network that counts its own (gated, conv: wider temporaries than the MLP's)
        getattr(model.decoder[0], "floats_per_row", 0),
    )
    element_size = next(model.parameters()).element_size()
    return element_size * (held + max(stages))


def _likelihood_floats_per_pixel(model: VAE) -> int:
    """Floats per pixel that p(x | z_1) holds at once in a no-grad pass: its own count (2 for Bernoulli)."""
    return getattr(getattr(model, "likelihood", None), "floats_per_pixel", 2)


def _prior_floats_per_row(model: VAE) -> int:
    """The prior's own count of temporary floats per row; for a prior module without
    ``floats_per_row`` (a user's), that of a diagonal Gaussian of its dimension."""
    count = getattr(model.prior_module, "floats_per_row", None)
    return count() if count is not None else model.config.latent_dims[-1] + 1


def row_budget(model: VAE, device: torch.device) -> int:
    """The bytes of a memory budget that one sample row takes on ``device``: its bytes_per_row, times
    CPU_HEAP_FACTOR on the CPU, where the budget holds for the process's resident memory."""
    return bytes_per_row(model) * (CPU_HEAP_FACTOR if torch.device(device).type == "cpu" else 1)


def chunking(model: VAE, k: int, n: int, memory_budget: int, device: torch.device) -> tuple[int, int]:
    """(images per chunk, samples per chunk) so that images * samples rows fit the budget: on the CPU
    the budget holds for the process, so a row counts CPU_HEAP_FACTOR times its bytes_per_row."""
    max_rows = max(1, memory_budget // row_budget(model, device))
    if device.type == "cpu":
        max_rows = min(max_rows, CPU_ROWS_PER_CALL)
    if k <= max_rows:
        return max(1, min(n, max_rows // k)), k
    chunks = math.ceil(k / max_rows)
    return 1, math.ceil(k / chunks)


def training_bytes(model: VAE, rows: int) -> dict[str, int]:
    """Estimated memory of training ``model`` on ``rows`` sample rows per step (batch size x K):
    ``{"model": the weights, their gradients and Adam's two moments (4 floats per parameter),
    "step": one step's activations and gradients (TRAIN_ROW_FACTOR x bytes_per_row per row)}``.

    Works on a model built on the ``meta`` device (shapes without storage), so that a setting too large
    to allocate is estimated, and refused, before anything is allocated.
    """
    parameters = sum(p.numel() for p in model.parameters())
    element_size = next(model.parameters()).element_size()
    return {"model": 4 * parameters * element_size, "step": TRAIN_ROW_FACTOR * rows * bytes_per_row(model)}
