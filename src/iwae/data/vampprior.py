"""The data sets of Tomczak & Welling's VampPrior paper that Burda et al.'s do not cover, read as the paper's
code (``utils/load_data.py`` of github.com/jmtomczak/vae_vampprior) reads them.

``mnist-vamp``
    MNIST (the four IDX files of ``mnist``) with the paper's split: the first 50,000 training images for
    training (binarized afresh at every use), the last 10,000 for validation, the 10,000 test images; the
    validation and then the test images binarized once by ``np.random.RandomState(777).binomial(1, p)``,
    the code's generator, seed and order, so they are the code's binary images.
``caltech101``
    Marlin's Caltech 101 Silhouettes, 28x28, split 1 (``caltech101_silhouettes_28_split1.mat``): train
    4,100 / validation 2,264 / test 2,307 binary images, stored column-major (MATLAB): each row is read
    as 28 x 28 in Fortran order, so the images come out upright, and flipped (1 - x) as the code flips them.
    Binary data: the same in every binarize mode.
``frey``
    Roweis's Frey faces (``frey_rawface.mat``, variable ``ff``, uint8 560 x 1,965): 1,965 faces of 28 rows
    of 20 pixels, 8-bit grey levels k/255, shuffled once with ``np.random.RandomState(14)`` and split
    1,565 / 200 / 200 as the code splits them (the code's own shuffle is unseeded). The file is verified by
    the SHA-256 of its images (``ff.T`` as uint8 in C order), not of its bytes: only that digest is known.
    Read by ``scipy.io.loadmat``, which parses MATLAB arrays and runs no code; nothing is ever unpickled
    (the code reads a pickled copy, ``freyfaces.pkl``, which iwae does not accept).

Every file is found, verified and downloaded as :mod:`.files` says (``data_dir``, ``$IWAE_DATA_DIR``, the
cache, then the official source), and refused with a one-line DataError naming the file when it is
missing offline, fails its checksum or does not hold what it should.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import registry
from .benchmarks import _load_idx_dataset, _read_mat
from .files import ContentHash, _file_digest, _locate
from .registry import _IMAGE_DIM, _IMAGE_SIDE
from .splits import Splits, _dynamic_splits, _is_binary, _to_tensor

__all__: list[str] = []


# --------------------------------------------------------------------------- mnist-vamp
def _paper_binarization(valid: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The validation, then the test images binarized by one legacy RandomState seeded with
    :data:`~.registry.MNIST_VAMP_BINARIZATION_SEED`, as the VampPrior code does (``np.random.seed(777)``,
    ``np.random.binomial(1, x)``); the legacy stream is frozen across numpy versions."""
    rng = np.random.RandomState(registry.MNIST_VAMP_BINARIZATION_SEED)
    valid = rng.binomial(1, valid).astype(np.float32)
    test = rng.binomial(1, test).astype(np.float32)
    return valid, test


_paper_binarization.seed = registry.MNIST_VAMP_BINARIZATION_SEED  # recorded by evaluations (Splits.test_seed)


def _load_mnist_vamp(dirs: list[Path], download: bool, mode: str = "dynamic", deq: bool = False) -> Splits:
    return _load_idx_dataset(
        "mnist-vamp",
        "MNIST",
        registry.MNIST_SHA256,
        registry.MNIST_URLS,
        dirs,
        download,
        mode,
        deq,
        n_valid=registry.MNIST_VAMP_N_VALID,
        binarize_once=_paper_binarization,
    )


# --------------------------------------------------------------------------- Caltech 101 Silhouettes
def _caltech_split(mat: dict, key: str, path: Path) -> np.ndarray:
    """One split of Marlin's file as upright row-major images ``(N, 784)`` in {0, 1}, flipped as the code flips
    them (x = 1 - stored)."""
    if key not in mat:
        raise DataError(
            f"{path} has no variable '{key}'; it needs train_data, val_data and test_data as Marlin's "
            f"{registry.CALTECH101_FILE}"
        )
    data = np.asarray(mat[key])
    if data.dtype.kind not in "biuf" or data.ndim != 2 or data.shape[1] != _IMAGE_DIM or data.shape[0] == 0:
        raise DataError(f"{path} variable '{key}' has dtype {data.dtype} and shape {data.shape}; expected (N, 784)")
    if not _is_binary(data):
        raise DataError(f"{path} variable '{key}' has values other than 0 and 1; replace the file with the original")
    # stored column-major: each row is a 28 x 28 image in Fortran order (the code's reshape(..., order='fortran'))
    upright = data.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE).reshape(-1, _IMAGE_DIM, order="F")
    return 1 - np.ascontiguousarray(upright, dtype=np.float32)


def _load_caltech101(dirs: list[Path], download: bool, mode: str = "static") -> Splits:
    path = _locate(
        (registry.CALTECH101_FILE,),
        dirs,
        download,
        registry.CALTECH101_URLS,
        "sha256",
        registry.CALTECH101_SHA256,
        "Caltech 101 Silhouettes",
    )
    mat = _read_mat(path)
    train, valid, test = (_caltech_split(mat, key, path) for key in ("train_data", "val_data", "test_data"))
    files = {registry.CALTECH101_FILE: _file_digest(path, "sha256")}  # what a run records
    return Splits(
        "caltech101", _to_tensor(train), _to_tensor(valid), _to_tensor(test), False, binarization=mode, files=files
    )


# --------------------------------------------------------------------------- Frey faces
def _frey_faces(path: Path) -> np.ndarray:
    """The faces of a ``frey_rawface.mat``: ``ff.T`` as uint8 ``(N, 560)``, each row 28 rows of 20 pixels."""
    mat = _read_mat(path)
    if "ff" not in mat:
        raise DataError(f"{path} has no variable 'ff'; it is not Roweis's {registry.FREY_FILE}")
    ff = np.asarray(mat["ff"])
    pixels = int(np.prod(registry.FREY_IMAGE_SHAPE))
    if ff.dtype != np.uint8 or ff.ndim != 2 or ff.shape[0] != pixels or ff.shape[1] == 0:
        raise DataError(
            f"{path} variable 'ff' has dtype {ff.dtype} and shape {ff.shape}; expected uint8 ({pixels}, N), "
            f"one face per column"
        )
    return np.ascontiguousarray(ff.T)


def _frey_digest(path: Path) -> str:
    """SHA-256 of the faces ``ff.T`` as uint8 bytes in C order: the content digest the data README gives."""
    return hashlib.sha256(_frey_faces(path).tobytes()).hexdigest()


FREY_CONTENT = ContentHash("frey-faces", "sha256 of the faces (ff.T, uint8, C order)", _frey_digest)


def _load_frey(dirs: list[Path], download: bool, mode: str = "none", deq: bool = False) -> Splits:
    path = _locate(
        (registry.FREY_FILE,),
        dirs,
        download,
        registry.FREY_URLS,
        FREY_CONTENT,
        registry.FREY_CONTENT_SHA256,
        "Frey faces",
    )
    faces = _frey_faces(path)
    n_train, n_valid, n_test = registry.FREY_SPLIT
    if faces.shape[0] < n_train + n_valid + n_test:
        raise DataError(
            f"{path} holds {faces.shape[0]} faces, fewer than the {n_train + n_valid + n_test} of the split "
            f"{n_train} / {n_valid} / {n_test}; replace it with the original"
        )
    faces = faces[np.random.RandomState(registry.FREY_PERMUTATION_SEED).permutation(faces.shape[0])]
    grey = faces.astype(np.float32) / np.float32(255)
    return _dynamic_splits(
        "frey",
        grey[:n_train],
        grey[n_train : n_train + n_valid],
        grey[n_train + n_valid : n_train + n_valid + n_test],
        tuple(registry.FREY_IMAGE_SHAPE),
        mode=mode,
        deq=deq,
        files={registry.FREY_FILE: _file_digest(path, "sha256")},  # what a run records
    )
