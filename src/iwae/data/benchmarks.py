"""The readers of the benchmark files: MNIST and Fashion-MNIST (IDX), Larochelle's binarized MNIST (.npz or
.amat) and Burda et al.'s OMNIGLOT (chardata.mat), each converted as the papers' code does."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import registry
from .arrays import _read_npz
from .files import _DIGEST_CACHE, _file_digest, _locate, _stat_key
from .registry import _AMAT_FILES, _IMAGE_DIM, _IMAGE_SIDE, BINARIZED_MNIST_NPZ, MNIST_FILES
from .splits import Splits, _dynamic_splits, _is_binary, _to_tensor

__all__: list[str] = []


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes (magic 0x801 labels, 0x803 images)."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}); delete it and run again to re-download it"
        ) from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path} is corrupt or truncated: only {len(raw)} bytes after decompression; delete it and re-download it"
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind: magic number 0x{found:x}, expected 0x{magic:x}; "
            "check that the file names are not swapped, or delete it and re-download it"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is corrupt or truncated: header says shape {dims} ({expected} bytes) but the payload has "
            f"{len(raw) - header} bytes; delete it and re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_files(
    what: str, sha: dict[str, str], urls: tuple[str, ...], dirs: list[Path], download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """The four IDX files of MNIST or Fashion-MNIST, found and verified: ``(x_train, y_train, x_test, y_test,
    files)``, uint8 images ``(N, 28, 28)``, labels ``(N,)`` and each file's SHA-256 (what a run records)."""
    paths = {f: _locate((f,), dirs, download, urls, "sha256", sha[f], what) for f in MNIST_FILES}
    x_train = _read_idx(paths["train-images-idx3-ubyte.gz"], 0x803, 3)
    y_train = _read_idx(paths["train-labels-idx1-ubyte.gz"], 0x801, 1)
    x_test = _read_idx(paths["t10k-images-idx3-ubyte.gz"], 0x803, 3)
    y_test = _read_idx(paths["t10k-labels-idx1-ubyte.gz"], 0x801, 1)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
            raise DataError(
                f"{what} {split} images have shape {x.shape[1:]}, expected (28, 28); "
                "delete the files and re-download them"
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{what} {split} files disagree: {x.shape[0]} images but {y.shape[0]} labels; "
                "delete them and re-download them"
            )
    return x_train, y_train, x_test, y_test, {f: _file_digest(p, "sha256") for f, p in paths.items()}


def _load_idx_dataset(
    name: str,
    what: str,
    sha: dict[str, str],
    urls: tuple[str, ...],
    dirs: list[Path],
    download: bool,
    mode: str = "dynamic",
    deq: bool = False,
    *,
    n_valid: int | None = None,
    binarize_once=None,
) -> Splits:
    """MNIST or Fashion-MNIST split as Burda et al. split it: the last ``n_valid`` training images
    (:data:`~.registry.MNIST_N_VALID`) held out for validation (the VampPrior paper's ``mnist-vamp``:
    10,000, its validation and test images binarized once by ``binarize_once``, see
    :func:`iwae.data.splits._dynamic_splits`)."""
    x_train, y_train, x_test, y_test, files = _read_idx_files(what, sha, urls, dirs, download)
    n_valid = registry.MNIST_N_VALID if n_valid is None else n_valid  # read when called (tests patch it)
    n = x_train.shape[0]
    if n <= n_valid:
        raise DataError(
            f"{what} has only {n} training images, need more than {n_valid}; delete the files and re-download them"
        )
    # grey levels: float32 k / 255 (as the VampPrior paper's code makes them too)
    grey_train = x_train.reshape(n, _IMAGE_DIM).astype(np.float32) / np.float32(255)
    grey_test = x_test.reshape(x_test.shape[0], _IMAGE_DIM).astype(np.float32) / np.float32(255)
    cut = n - n_valid
    return _dynamic_splits(
        name,
        grey_train[:cut],
        grey_train[cut:],
        grey_test,
        (_IMAGE_SIDE, _IMAGE_SIDE),
        labels=(y_train[:cut], y_train[cut:], y_test),
        mode=mode,
        deq=deq,
        binarize_once=binarize_once,
        files=files,
    )


# --------------------------------------------------------------------------- binarized MNIST
def _load_binarized_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = _read_npz(path)
    out = {}
    for split in ("train", "valid", "test"):
        if split not in arrays:
            raise DataError(
                f"{path} has no array '{split}' (it has {sorted(arrays)}); it needs arrays train, valid and test"
            )
        arr = arrays[split]
        what = f"{path} array '{split}'"
        if arr.dtype.kind not in "biuf" or arr.ndim != 2 or arr.shape[1] != _IMAGE_DIM or arr.shape[0] == 0:
            raise DataError(f"{what} has dtype {arr.dtype} and shape {arr.shape}; expected (N, 784) values in {{0, 1}}")
        if not _is_binary(arr):
            raise DataError(f"{what} has values other than 0 and 1; it is not the static binarized MNIST")
        u8 = np.ascontiguousarray(arr.astype(np.uint8))
        key = _stat_key(path, f"npz:{split}")
        actual = _DIGEST_CACHE.get(key) or hashlib.sha256(u8.tobytes()).hexdigest()
        _DIGEST_CACHE[key] = actual
        expected = registry.BINARIZED_MNIST_ARRAY_SHA256[split]
        if actual != expected:
            raise DataError(
                f"{what} fails its checksum: expected sha256 {expected} of its uint8 bytes, got {actual}; "
                "it is not Larochelle's binarized MNIST: delete the file (the original .amat files are then "
                "downloaded) or replace it with the original"
            )
        out[split] = u8
    return out


def _parse_amat(path: Path) -> np.ndarray:
    """Parse one .amat file: Larochelle's text (784 0/1 values per line) or a MATLAB v5 file with ``X``."""
    raw = path.read_bytes()
    if raw.startswith(b"MATLAB"):
        mat = _read_mat(path, raw)
        if "X" not in mat:
            raise DataError(
                f"{path} is a MATLAB file without variable 'X'; replace it with Larochelle's text .amat file"
            )
        arr = np.asarray(mat["X"])
    else:
        width = 2 * _IMAGE_DIM
        a = np.frombuffer(raw, dtype=np.uint8)
        if a.size and a.size % width == 0:
            a = a.reshape(-1, width)
            digits = a[:, ::2]
            if (a[:, 1:-1:2] == 32).all() and (a[:, -1] == 10).all() and ((digits == 48) | (digits == 49)).all():
                return digits - np.uint8(48)
        # general text: any whitespace, values such as "0.0"
        try:
            rows = [line.split() for line in raw.splitlines() if line.strip()]
            arr = np.array(rows, dtype=np.float64)
        except ValueError:
            raise DataError(
                f"{path} is corrupt: expected lines of {_IMAGE_DIM} numbers separated by spaces; "
                "delete it and run again to re-download it"
            ) from None
    if arr.ndim != 2 or arr.shape[1] != _IMAGE_DIM or arr.shape[0] == 0 or not _is_binary(arr):
        raise DataError(
            f"{path} holds an array of shape {arr.shape}, expected (N, {_IMAGE_DIM}) values in {{0, 1}}; "
            "delete it and run again to re-download it"
        )
    return arr.astype(np.uint8)


def _load_binarized_mnist(dirs: list[Path], download: bool, mode: str = "static") -> Splits:
    what = "binarized-MNIST"
    arrays = None
    files: dict[str, str] = {}
    for d in dirs:
        if (d / BINARIZED_MNIST_NPZ).is_file():
            arrays = _load_binarized_npz(d / BINARIZED_MNIST_NPZ)
            files[BINARIZED_MNIST_NPZ] = _file_digest(d / BINARIZED_MNIST_NPZ, "sha256")
            break
        if all((d / f).is_file() for f in _AMAT_FILES.values()):
            break
    if arrays is None:
        arrays = {}
        for split, f in _AMAT_FILES.items():
            try:
                p = _locate(
                    (f,),
                    dirs,
                    download,
                    registry.BINARIZED_MNIST_URLS,
                    "sha256",
                    registry.BINARIZED_MNIST_AMAT_SHA256[f],
                    what,
                )
            except DataError as e:
                if "not found" in str(e):
                    raise DataError(
                        str(e).replace(f"file {f} not found", f"file {BINARIZED_MNIST_NPZ} (or {f}) not found", 1)
                    ) from None
                raise
            arrays[split] = _parse_amat(p)
            files[f] = _file_digest(p, "sha256")
    t = {k: _to_tensor(v) for k, v in arrays.items()}
    return Splits("binarized-mnist", t["train"], t["valid"], t["test"], False, binarization=mode, files=files)


# --------------------------------------------------------------------------- OMNIGLOT
def _read_mat(path: Path, raw: bytes | None = None) -> dict:
    import scipy.io  # deferred: only OMNIGLOT's .mat files need scipy.io, slow to import

    try:
        src = io.BytesIO(raw) if raw is not None else str(path)
        return scipy.io.loadmat(src)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, OSError, zlib.error ...
        raise DataError(
            f"{path} is corrupt or truncated, or not a MATLAB file ({type(e).__name__}: {e}); "
            "delete it and run again to re-download it"
        ) from None


def _omniglot_images(mat: dict, key: str, path: Path) -> np.ndarray:
    """Convert a (784, N) Fortran-order array to (N, 784) row-major images, as Burda et al.'s code."""
    if key not in mat:
        raise DataError(
            f"{path} has no variable '{key}'; it needs 'data' and 'testdata' as in Burda et al.'s chardata.mat"
        )
    data = np.asarray(mat[key])
    if data.dtype.kind not in "biuf" or data.ndim != 2 or data.shape[0] != _IMAGE_DIM or data.shape[1] == 0:
        raise DataError(
            f"{path} variable '{key}' has dtype {data.dtype} and shape {data.shape}; expected (784, N) numbers"
        )
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise DataError(
            f"{path} variable '{key}' has values outside [0, 1] or not finite; replace the file with the original"
        )
    # Burda et al.: data.T.reshape((-1, 28, 28)).reshape((-1, 28*28), order='fortran')
    images = data.T.reshape((-1, _IMAGE_SIDE, _IMAGE_SIDE)).reshape((-1, _IMAGE_DIM), order="F")
    return np.ascontiguousarray(images, dtype=np.float32)


def _load_omniglot(dirs: list[Path], download: bool, mode: str = "dynamic", deq: bool = False) -> Splits:
    path = _locate(
        registry.OMNIGLOT_FILES,
        dirs,
        download,
        registry.OMNIGLOT_URLS,
        "git-blob",
        registry.OMNIGLOT_GIT_BLOB_SHA1,
        "OMNIGLOT",
    )
    mat = _read_mat(path)
    train = _omniglot_images(mat, "data", path)
    test = _omniglot_images(mat, "testdata", path)
    n = train.shape[0]
    if n <= registry.OMNIGLOT_N_VALID:
        raise DataError(
            f"{path} has only {n} training images, need more than {registry.OMNIGLOT_N_VALID}; "
            "replace it with the original"
        )
    train = train[np.random.RandomState(registry.OMNIGLOT_PERMUTATION_SEED).permutation(n)]
    cut = n - registry.OMNIGLOT_N_VALID
    files = {path.name: _file_digest(path, "sha256")}
    return _dynamic_splits(
        "omniglot", train[:cut], train[cut:], test, (_IMAGE_SIDE, _IMAGE_SIDE), mode=mode, deq=deq, files=files
    )
