"""Binarization and dequantisation of grey-level images: afresh at every use (torch, from a generator) or
once with a fixed seed (numpy's PCG64: the same numbers on every platform and torch version)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["binarize", "fixed_binarization", "dequantize", "fixed_dequantization"]


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a Bernoulli(x) sample of the same shape as float32 (dynamic binarization).

    ``x`` holds probabilities (grey levels) in [0, 1]; values 0 and 1 are kept
    as they are.  Each call draws fresh randomness from ``generator`` (the
    global torch generator if None), so pass a seeded generator to reproduce.
    """
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # torch.bernoulli's CPU kernel draws u ~ U[0, 1) per element, in order, from the generator, in
        # x's precision, and returns u < x: these are its numbers and its generator's state, bit for bit
        # (tests/test_data_modes.py checks it), 2.8x faster (184 against 508 us for 20 x 784 on one core
        # of a loaded 2-core CPU: the comparison is vectorised). CUDA's kernels draw otherwise.
        return (torch.rand(x.shape, generator=generator, dtype=x.dtype) < x).to(torch.float32)
    return torch.bernoulli(x, generator=generator).to(torch.float32)


def _fixed_uniform_rows(x: np.ndarray, seed: int):
    """Yields ``(rows, u)`` with ``u = np.random.default_rng(seed).random(x.shape)`` for those rows of a
    2-D ``x``, in blocks: the same numbers as one call (PCG64 fills in C order), without a float64
    copy of a whole training set."""
    rng = np.random.default_rng(seed)
    block = max(1, (1 << 22) // max(1, x.shape[1]))
    for i in range(0, x.shape[0], block):
        rows = slice(i, min(i + block, x.shape[0]))
        yield rows, rng.random((rows.stop - rows.start, x.shape[1]), dtype=np.float64)


def fixed_binarization(x: np.ndarray, seed: int) -> np.ndarray:
    """Binarize ``x`` (values in [0, 1]) once, deterministically: pixel = (u < x), u ~ U[0, 1).

    Computes ``(np.random.default_rng(seed).random(x.shape, dtype=np.float64) < x)
    .astype(np.float32)``: numpy's PCG64 stream, hence identical across torch
    versions and platforms (drawn in blocks of rows for 2-D ``x``: the same numbers).
    :func:`load_dataset` passes float32 grey levels.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        u = np.random.default_rng(seed).random(x.shape, dtype=np.float64)
        return (u < x).astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for rows, u in _fixed_uniform_rows(x, seed):
        out[rows] = u < x[rows]
    return out


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit grey levels ``x = k / 255``: ``(k + u) / 256``, u ~ U[0, 1) per pixel.

    Fresh randomness from ``generator`` at every call (training); values in [0, 1).
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    return (torch.round(x.to(torch.float32) * 255) + u) / 256


def fixed_dequantization(x: np.ndarray, seed: int) -> np.ndarray:
    """:func:`dequantize` drawn once, deterministically, from numpy's PCG64 with ``seed``:
    ``(round(255 x) + u) / 256`` with ``u = np.random.default_rng(seed).random(x.shape)`` (float64), as float32."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    for rows, u in _fixed_uniform_rows(x.reshape(x.shape[0], -1), seed):
        out.reshape(x.shape[0], -1)[rows] = (
            np.round(x.reshape(x.shape[0], -1)[rows].astype(np.float64) * 255) + u
        ) / 256
    return out
