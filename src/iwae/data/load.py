"""The entry points of :mod:`iwae.data`: :func:`load_dataset` and :func:`missing_files`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from . import registry
from .arrays import _load_user_arrays
from .benchmarks import _load_binarized_mnist, _load_idx_dataset, _load_omniglot
from .files import _search_dirs
from .registry import _AMAT_FILES, _SUBDIRS, BINARIZED_MNIST_NPZ, DATASETS, MNIST_FILES, resolve_binarize
from .splits import Splits
from .vampprior import _load_caltech101, _load_frey, _load_mnist_vamp

__all__ = ["load_dataset", "missing_files"]


def missing_files(name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The files :func:`load_dataset` would still need to download for dataset ``name``: ``[]`` when
    they are all present locally (``data_dir`` or ``$IWAE_DATA_DIR``, then the cache).

    Looks at file names only: nothing is read, hashed or downloaded (a present file may still fail
    its checksum when loaded). For ``npz:PATH``, the path itself; for binarized MNIST, the ``.npz``
    or the three ``.amat`` files. Raises DataError for an unknown name or a data folder that does
    not exist, as :func:`load_dataset` does.
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}")
    if name.startswith("npz:"):
        path = Path(name[len("npz:") :]).expanduser()
        return [] if path.is_file() else [str(path)]
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or npz:PATH for your own arrays"
        )
    dirs = _search_dirs(data_dir, _SUBDIRS[key])

    def present(names: tuple[str, ...]) -> bool:
        return any((d / n).is_file() for d in dirs for n in names)

    if key in ("mnist", "fashion-mnist", "mnist-vamp"):
        return [f for f in MNIST_FILES if not present((f,))]
    if key in ("caltech101", "frey"):
        name = registry.CALTECH101_FILE if key == "caltech101" else registry.FREY_FILE
        return [] if present((name,)) else [name]
    if key == "binarized-mnist":
        if present((BINARIZED_MNIST_NPZ,)):
            return []
        return [f for f in _AMAT_FILES.values() if not present((f,))]
    return [] if present(registry.OMNIGLOT_FILES) else [registry.OMNIGLOT_FILES[0]]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    binarize: str = "dynamic",
    dequantize: bool = False,
) -> Splits:
    """Load a benchmark dataset (one of :data:`DATASETS`) or user arrays (``"npz:PATH"``) as :class:`Splits`.

    Files are searched in ``data_dir`` (else ``$IWAE_DATA_DIR``), in its
    per-dataset subfolder and at its top level, then in the cache
    ``default_cache_dir()/<subfolder>``; if still missing and ``download`` is
    true they are downloaded into the cache.  Every file is checked against its
    known hash.  Dynamic datasets (MNIST, Fashion-MNIST, OMNIGLOT, grey-level
    user arrays) return grey-level ``train`` and ``valid``/``test`` binarized
    once with the module's fixed seeds; ``binarized-mnist`` and {0, 1} user
    arrays are static.

    ``npz:PATH`` loads a ``.npz`` with arrays ``train``, ``test`` and optional
    ``valid`` (if missing, the last 10% of ``train``, at least one row, in file
    order), or a ``.npy`` array split in order 80/10/10 (the last 10% each,
    at least one row, for valid and test).  Arrays are (N, D), (N, H, W) or
    (N, C, H, W), uint8 grey levels 0-255 (read as k / 255) or bool, integer or
    float values in [0, 1]; the image shape is kept in ``Splits.image_shape``
    ((H, W) or (C, H, W); for (N, D), square where D is). ``data_dir`` is not
    used for them.

    ``binarize`` (one of :data:`BINARIZATIONS`, or ``auto`` read as ``dynamic``)
    and ``dequantize`` act as the module docstring says; dequantisation needs
    ``binarize="none"`` and 8-bit grey levels.

    Names are matched case-insensitively with ``_`` read as ``-`` (``"fashion_mnist"``
    works); ``Splits.name`` is the canonical name, or the ``npz:PATH`` string.

    ``Splits.files`` names each file read with its SHA-256 (a run records them: :mod:`iwae.rundir.integrity`),
    and ``Splits.test_seed`` the seed of the test split's one-time binarization or dequantisation.

    Raises :class:`DataError` for an unknown name, missing or corrupt files,
    checksum mismatches and invalid arrays.
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}")
    splits = _load(name, data_dir, download, resolve_binarize(binarize), dequantize)
    # every loader records the files it read: a run records them to tell, later, whether they changed
    assert splits.files, f"the loader of {splits.name} recorded no data files (Splits.files)"
    return splits


def _load(name: str, data_dir, download: bool, mode: str, dequantize: bool) -> Splits:
    if name.startswith("npz:"):
        return _load_user_arrays(name, mode, dequantize)
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or npz:PATH for your own arrays"
        )
    dirs = _search_dirs(data_dir, _SUBDIRS[key])
    if key == "mnist":
        return _load_idx_dataset(
            "mnist", "MNIST", registry.MNIST_SHA256, registry.MNIST_URLS, dirs, download, mode, dequantize
        )
    if key == "fashion-mnist":
        return _load_idx_dataset(
            "fashion-mnist",
            "Fashion-MNIST",
            registry.FASHION_MNIST_SHA256,
            registry.FASHION_MNIST_URLS,
            dirs,
            download,
            mode,
            dequantize,
        )
    if key == "mnist-vamp":
        return _load_mnist_vamp(dirs, download, mode, dequantize)
    if key == "caltech101" and dequantize:
        raise DataError("caltech101 is binary: dequantize applies to 8-bit grey levels (frey, mnist, fashion-mnist)")
    if key == "caltech101":
        return _load_caltech101(dirs, download, mode)
    if key == "frey":
        return _load_frey(dirs, download, mode, dequantize)
    if key == "binarized-mnist":
        if dequantize:
            raise DataError("binarized-mnist is binary: dequantize applies to 8-bit grey levels (mnist, fashion-mnist)")
        return _load_binarized_mnist(dirs, download, mode)
    return _load_omniglot(dirs, download, mode, dequantize)
