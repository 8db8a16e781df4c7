"""The splits of a data set as tensors (:class:`Splits`), and the checks and conversions of the arrays they
are made from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .registry import (
    _IMAGE_SIDE,
    TEST_BINARIZATION_SEED,
    TEST_DEQUANTIZATION_SEED,
    TRAIN_BINARIZATION_SEED,
    VALID_BINARIZATION_SEED,
    VALID_DEQUANTIZATION_SEED,
)
from .transforms import fixed_binarization, fixed_dequantization

__all__ = ["Splits"]


@dataclass(frozen=True, repr=False, eq=False)
class Splits:
    """Train / validation / test images of one dataset, flattened to (N, D) float32.

    ``train`` holds grey levels in [0, 1] when ``dynamic`` (re-binarize every
    training batch with :func:`binarize`) or when ``dequantize`` (dequantise every
    training batch with :func:`dequantize`). With ``binarization`` "dynamic" or
    "static" (and for binary data) ``valid`` and ``test`` are in {0, 1}: binarized
    once with :data:`VALID_BINARIZATION_SEED` / :data:`TEST_BINARIZATION_SEED`;
    with "none" they are grey levels, dequantised once where ``dequantize``.
    Labels are int64 tensors for MNIST and Fashion-MNIST, else None.
    ``image_shape`` is (H, W) or (C, H, W) with product D, or None when unknown.
    ``files`` maps the name of each data file read to its SHA-256 (empty for splits built in Python):
    what a run records of its data (:mod:`iwae.rundir.integrity`). ``test_seed`` is the seed the test
    split was binarized or dequantised with, once; None when the test images are as stored (binary
    data, grey levels with binarization none, splits built in Python).
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    dynamic: bool
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    image_shape: tuple[int, ...] | None = (_IMAGE_SIDE, _IMAGE_SIDE)
    binarization: str = "dynamic"  # the mode asked for (binary data are the same in every mode)
    dequantize: bool = False  # train: grey levels to dequantise afresh at every use
    files: dict[str, str] = field(default_factory=dict)  # data file name -> SHA-256
    test_seed: int | None = None  # the one-time binarization's (or dequantisation's) seed of the test split

    @property
    def dim(self) -> int:
        """Number of pixels per image, D."""
        return int(self.train.shape[1])

    def first(self, split: str, n: int | None, setting: str = "subset") -> torch.Tensor:
        """The first ``n`` images of ``split`` (``train``, ``valid`` or ``test``), all of them for None.

        Raises a ConfigError naming ``setting`` (e.g. ``train_subset``) when ``n`` is below 1 or more
        than the split holds: a larger subset is never clamped to the data without a word.
        """
        x = getattr(self, split)
        if n is None:
            return x
        if n < 1:
            raise ConfigError(f"{setting} must be >= 1, got {n}", [setting])
        if n > x.shape[0]:
            what = {"train": "training", "valid": "validation", "test": "test"}[split]
            raise ConfigError(f"{setting} {n} is more than the {x.shape[0]} {what} images of {self.name}", [setting])
        return x[:n]

    def test_binarization(self) -> dict:
        """How the test images were made from the data files, as evaluations record and print it:
        ``{"mode": the binarization mode, "test": what was done to the test images}``."""
        if self.test_seed is None:
            test = "test images as stored" + (" (binary data)" if self.binarization != "none" else "")
        elif self.dequantize:
            test = f"test images dequantised once with seed {self.test_seed}"
        else:
            test = f"test images binarized once with seed {self.test_seed}"
        return {"mode": self.binarization, "test": test}

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"valid={tuple(self.valid.shape)}, test={tuple(self.test.shape)}, "
            f"dynamic={self.dynamic}, labels={self.train_labels is not None}, "
            f"image_shape={self.image_shape}, binarization={self.binarization!r}, dequantize={self.dequantize})"
        )


def _check_array(arr: np.ndarray, what: str, grey8: bool | None = None) -> np.ndarray:
    """Check dtype, shape and value range of user images; return float32 (N, D).

    uint8 arrays are 8-bit grey levels, k -> k / 255, except where every value is 0 or 1 (binary
    images, as before uint8 grey levels were read; ``grey8`` decides it for all splits of a file at
    once); bool, other integer types and floats must hold values in [0, 1].
    """
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise DataError(
            f"{what} has dtype {arr.dtype}; expected uint8 grey levels (0-255), or bool, integer or floating-point "
            f"pixel values in [0, 1]"
        )
    if arr.ndim not in (2, 3, 4):
        raise DataError(f"{what} has shape {arr.shape}; expected (N, D), (N, H, W) or (N, C, H, W) images")
    if arr.size == 0:
        raise DataError(f"{what} is empty (shape {arr.shape}); it needs at least one image with at least one pixel")
    if arr.dtype == np.uint8 and (not _is_binary(arr) if grey8 is None else grey8):
        return arr.reshape(arr.shape[0], -1).astype(np.float32) / np.float32(255)
    if kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{what} contains NaN or infinite values; replace them with values in [0, 1]")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 1:
        hint = "rescale the values to [0, 1]"
        if lo >= 0 and hi <= 255:
            hint = "these look like 8-bit grey levels: save them as uint8 (read as k/255) or divide by 255"
        raise DataError(f"{what} has values in [{lo:g}, {hi:g}], outside [0, 1]; {hint}")
    return arr.reshape(arr.shape[0], -1).astype(np.float32)


def _is_binary(x: np.ndarray) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _to_tensor(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    np_dtype = np.float32 if dtype == torch.float32 else np.int64
    arr = np.ascontiguousarray(x, dtype=np_dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def _on_8bit_grid(x: np.ndarray) -> bool:
    return bool(np.all(np.abs(x.astype(np.float64) * 255 - np.round(x.astype(np.float64) * 255)) < 1e-3))


def _dynamic_splits(
    name: str,
    train: np.ndarray,
    valid: np.ndarray,
    test: np.ndarray,
    image_shape: tuple[int, ...] | None,
    labels: tuple | None = None,
    mode: str = "dynamic",
    deq: bool = False,
    binarize_once=None,
    files: dict[str, str] | None = None,
) -> Splits:
    """Grey-level splits, binarized as ``mode`` says (module docstring); dequantised where ``deq``.
    ``binarize_once(valid, test) -> (valid, test)`` (with its generator's seed as ``.seed``) replaces the
    fixed binarization of validation and test images with the module's seeds (for a data set whose paper
    binarized them with a generator of its own);
    ``files``: the data files they were read from (name -> SHA-256)."""
    lab = [None, None, None] if labels is None else [_to_tensor(y, torch.int64) for y in labels]
    if deq:
        if mode != "none":
            raise DataError(f"dequantize applies to grey levels (binarize none), not to binarize {mode}")
        for split in (train, valid, test):
            if not _on_8bit_grid(split):
                raise DataError(
                    f"{name} is not 8-bit data (values k/255): uniform dequantisation needs 8-bit grey "
                    f"levels; train it without dequantize"
                )
        valid = fixed_dequantization(valid, VALID_DEQUANTIZATION_SEED)
        test = fixed_dequantization(test, TEST_DEQUANTIZATION_SEED)
        test_seed = TEST_DEQUANTIZATION_SEED
    elif mode != "none":
        if mode == "static":
            train = fixed_binarization(train, TRAIN_BINARIZATION_SEED)
        if binarize_once is not None:
            valid, test = binarize_once(valid, test)
            test_seed = binarize_once.seed  # the generator's seed that binarized them
        else:
            valid = fixed_binarization(valid, VALID_BINARIZATION_SEED)
            test = fixed_binarization(test, TEST_BINARIZATION_SEED)
            test_seed = TEST_BINARIZATION_SEED
    else:
        test_seed = None
    return Splits(
        name,
        _to_tensor(train),
        _to_tensor(valid),
        _to_tensor(test),
        mode == "dynamic",
        lab[0],
        lab[1],
        lab[2],
        image_shape,
        mode,
        deq,
        dict(files or {}),
        test_seed,
    )
