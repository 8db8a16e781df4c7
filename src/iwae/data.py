"""Benchmark datasets for importance-weighted autoencoders, loaded as float32 tensors.

This module finds, verifies and loads the four binary-image benchmarks of
Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016),
plus user arrays:

``mnist``
    LeCun et al.'s MNIST (the four IDX ``.gz`` files).  Paper split: the last
    400 of the 60,000 training images are held out for validation (59,600 train),
    10,000 test.  Training images are grey levels in [0, 1] and are binarized
    dynamically (a fresh Bernoulli sample at every use, see :func:`binarize`).
``fashion-mnist``
    Xiao, Rasul & Vollgraf's Fashion-MNIST, same layout and split as ``mnist``.
``binarized-mnist``
    Larochelle & Murray (AISTATS 2011) static binarization, 50,000 / 10,000 /
    10,000, from ``binarized_mnist.npz`` (arrays ``train``/``valid``/``test``) or
    the three original ``binarized_mnist_{train,valid,test}.amat`` text files.
``omniglot``
    Burda et al.'s 28x28 OMNIGLOT (``chardata.mat`` from github.com/yburda/iwae),
    converted exactly as their released code does; 24,345 training images are
    shuffled once with ``np.random.RandomState(123)`` and the last 1,345 of them
    are held out for validation (23,000 train), 8,070 test.
``npz:PATH``
    user arrays, see :func:`load_dataset`.

Grey-level datasets (MNIST, Fashion-MNIST, OMNIGLOT, grey user arrays) are
binarized as ``binarize`` says (:data:`BINARIZATIONS`):

``dynamic`` (the default, Burda et al.'s protocol)
    the training images stay grey and are binarized afresh at every use
    (:func:`binarize`); validation and test images are binarized *once*, with
    the fixed seeds :data:`VALID_BINARIZATION_SEED` and
    :data:`TEST_BINARIZATION_SEED` and numpy's PCG64 generator
    (:func:`fixed_binarization`), so that every caller of :func:`load_dataset`
    (``iwae evaluate`` included) gets exactly the same binary test images,
    whatever the torch version;
``static``
    the training images too are binarized once, with
    :data:`TRAIN_BINARIZATION_SEED`, and then stay fixed;
``none``
    no binarization at all: train, valid and test are grey levels in [0, 1]
    (``k / 255`` for 8-bit data), for the continuous likelihoods.

Binary data (binarized MNIST, {0, 1} user arrays) are the same in every mode.
With ``binarize="none"`` and ``dequantize=True``, 8-bit data are uniformly
dequantised, y = (255 x + u) / 256 with u ~ U[0, 1) per pixel: afresh at every
use for training (:func:`dequantize`, ``Splits.dequantize``), once with
:data:`VALID_DEQUANTIZATION_SEED` / :data:`TEST_DEQUANTIZATION_SEED` for
validation and test (:func:`fixed_dequantization`). A density on y then
bounds the probability of the 8-bit image: log P(x) >= E_u[log p(y)] - D log 256,
so a dequantised NLL in nats is comparable with a discrete likelihood's after
adding D log 256 (8 bits per dimension).

Files are looked up in this order (for every dataset):

1. the ``data_dir`` argument, else the environment variable ``IWAE_DATA_DIR``:
   a root folder holding one subfolder per dataset (``mnist/``,
   ``fashion_mnist/``, ``binarized_mnist/``, ``omniglot/``), or the files
   directly inside it;
2. the user cache ``default_cache_dir()/<subfolder>/``;
3. if ``download`` is true, a download from the official source into the cache
   (written to a temporary file in the same folder, checked, then renamed).

Every file is checked against a known hash (SHA-256; per-array SHA-256 for
``binarized_mnist.npz``; the git blob id for ``chardata.mat``) before it is
parsed; any problem raises :class:`DataError` with a one-line message that says
what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch

from .choices import BINARIZATIONS, DATASETS, resolve_binarize
from .errors import DataError

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DataError",
    "Splits",
    "TEST_BINARIZATION_SEED",
    "TEST_DEQUANTIZATION_SEED",
    "TRAIN_BINARIZATION_SEED",
    "VALID_BINARIZATION_SEED",
    "VALID_DEQUANTIZATION_SEED",
    "binarize",
    "dequantize",
    "fixed_dequantization",
    "resolve_binarize",
    "default_cache_dir",
    "fixed_binarization",
    "load_dataset",
    "missing_files",
]

logger = logging.getLogger(__name__)

#: Seed of the one-time binarization of the test split of dynamically binarized datasets.
TEST_BINARIZATION_SEED: int = 20160201
#: Seed of the one-time binarization of the validation split (distinct from the test seed).
VALID_BINARIZATION_SEED: int = 20151101
#: Seed of the one-time binarization of the training split with ``binarize="static"``.
TRAIN_BINARIZATION_SEED: int = 20150601
#: Seeds of the one-time uniform dequantisation of the validation and test splits.
VALID_DEQUANTIZATION_SEED: int = 20180401
TEST_DEQUANTIZATION_SEED: int = 20180402

#: MNIST / Fashion-MNIST: number of training images (the last ones) held out for validation.
MNIST_N_VALID: int = 400
#: OMNIGLOT: number of (shuffled) training images held out for validation.
OMNIGLOT_N_VALID: int = 1345
#: OMNIGLOT: seed of ``np.random.RandomState`` that shuffles the training images once.
OMNIGLOT_PERMUTATION_SEED: int = 123
#: User ``.npz`` without ``valid``/``.npy``: fraction of rows held out (at least one row).
NPZ_HOLDOUT_FRACTION: float = 0.1

#: Seconds before a download attempt gives up waiting for the server.
DOWNLOAD_TIMEOUT: float = 60.0

# Base URLs (the file name is appended), tried in order.
MNIST_URLS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_URLS: tuple[str, ...] = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
BINARIZED_MNIST_URLS: tuple[str, ...] = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
)
OMNIGLOT_URLS: tuple[str, ...] = ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",)

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
BINARIZED_MNIST_NPZ = "binarized_mnist.npz"
#: SHA-256 of ``arr.astype(np.uint8).tobytes()`` (C order) of each array of binarized_mnist.npz.
BINARIZED_MNIST_ARRAY_SHA256: dict[str, str] = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}
#: Accepted SHA-256 of each .amat file: Larochelle's original text file, and the
#: MATLAB v5 file of the same name (variable ``X``) committed in mingzhang-yin/ARM-gradient.
BINARIZED_MNIST_AMAT_SHA256: dict[str, tuple[str, ...]] = {
    "binarized_mnist_train.amat": (
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        "79a0312c7389d855cfc97e3812de3998417c5829d8a51543b56a90a91252ae7e",
    ),
    "binarized_mnist_valid.amat": (
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        "7436afc856959075c7787025bb8a4ba2b520b9230ee39667c66aa7dd2819dd68",
    ),
    "binarized_mnist_test.amat": (
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
        "5bc30222e1e7896cbccd1e1db6b28540cc1230f4d2d5473841a5f6cc54be8d38",
    ),
}
OMNIGLOT_FILES = ("chardata.mat", "omniglot.mat")
#: Git blob id (``git hash-object``) of Burda et al.'s chardata.mat; no SHA-256 is published.
OMNIGLOT_GIT_BLOB_SHA1: str = "016a3536ffe5e1d38e42563a18d7a78bfaf643ec"

_SUBDIRS = {
    "mnist": "mnist",
    "fashion-mnist": "fashion_mnist",
    "binarized-mnist": "binarized_mnist",
    "omniglot": "omniglot",
}
_IMAGE_SIDE = 28
_IMAGE_DIM = _IMAGE_SIDE * _IMAGE_SIDE


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

    @property
    def dim(self) -> int:
        """Number of pixels per image, D."""
        return int(self.train.shape[1])

    def first(self, split: str, n: int | None, setting: str = "subset") -> torch.Tensor:
        """The first ``n`` images of ``split`` (``train``, ``valid`` or ``test``), all of them for None.

        Raises a ConfigError naming ``setting`` (e.g. ``train_subset``) when ``n`` is below 1 or more
        than the split holds: a larger subset is never clamped to the data without a word.
        """
        from .errors import ConfigError

        x = getattr(self, split)
        if n is None:
            return x
        if n < 1:
            raise ConfigError(f"{setting} must be >= 1, got {n}", [setting])
        if n > x.shape[0]:
            what = {"train": "training", "valid": "validation", "test": "test"}[split]
            raise ConfigError(f"{setting} {n} is more than the {x.shape[0]} {what} images of {self.name}", [setting])
        return x[:n]

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"valid={tuple(self.valid.shape)}, test={tuple(self.test.shape)}, "
            f"dynamic={self.dynamic}, labels={self.train_labels is not None}, "
            f"image_shape={self.image_shape}, binarization={self.binarization!r}, dequantize={self.dequantize})"
        )


# --------------------------------------------------------------------------- binarization


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a Bernoulli(x) sample of the same shape as float32 (dynamic binarization).

    ``x`` holds probabilities (grey levels) in [0, 1]; values 0 and 1 are kept
    as they are.  Each call draws fresh randomness from ``generator`` (the
    global torch generator if None), so pass a seeded generator to reproduce.
    """
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
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
        out.reshape(x.shape[0], -1)[rows] = (np.round(x.reshape(x.shape[0], -1)[rows].astype(np.float64) * 255) + u) / 256
    return out


# --------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """Return the user cache folder: ``$IWAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iwae``, else ``~/.cache/iwae``."""
    explicit = os.environ.get("IWAE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "iwae"
    return Path.home() / ".cache" / "iwae"


def _search_dirs(data_dir: str | os.PathLike | None, subdir: str) -> list[Path]:
    """Local folders searched for a dataset's files, in order (the cache is last)."""
    root: Path | None = None
    if data_dir is not None and str(data_dir) != "":
        root, source = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get("IWAE_DATA_DIR"):
        root, source = Path(os.environ["IWAE_DATA_DIR"]).expanduser(), "IWAE_DATA_DIR"
    dirs: list[Path] = []
    if root is not None:
        if not root.is_dir():
            raise DataError(
                f"data directory {root} (from {source}) does not exist or is not a folder; "
                "pass --data-dir DIR or set IWAE_DATA_DIR to an existing folder"
            )
        dirs += [root / subdir, root]
    dirs.append(default_cache_dir() / subdir)
    return dirs


def _describe_dirs(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


# --------------------------------------------------------------------------- hashing

# Digests computed in this process, keyed by (real path, device, inode, size, mtime_ns, kind).
_DIGEST_CACHE: dict[tuple, str] = {}


def _stat_key(path: Path, kind: str) -> tuple:
    real = os.path.realpath(path)
    st = os.stat(real)
    return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, kind)


def _file_digest(path: Path, kind: str) -> str:
    """SHA-256 (kind "sha256") or git blob SHA-1 (kind "git-blob") of a file, cached per process."""
    key = _stat_key(path, kind)
    if key in _DIGEST_CACHE:
        return _DIGEST_CACHE[key]
    if kind == "sha256":
        h = hashlib.sha256()
    elif kind == "git-blob":
        h = hashlib.sha1()
        h.update(b"blob %d\0" % key[3])
    else:  # pragma: no cover - internal misuse
        raise ValueError(kind)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _DIGEST_CACHE[key] = digest
    return digest


def _hash_label(kind: str) -> str:
    return "sha256" if kind == "sha256" else "git blob sha1"


def _verify_file(path: Path, kind: str, expected: str | tuple[str, ...], what: str) -> None:
    """Raise DataError unless the file's digest is one of ``expected``."""
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    actual = _file_digest(path, kind)
    if actual not in accepted:
        raise DataError(
            f"{what} file {path} fails its checksum: expected {_hash_label(kind)} "
            f"{' or '.join(accepted)}, got {actual} ({path.stat().st_size} bytes); "
            "the file is corrupt, truncated or not the original: delete it and run again "
            "to re-download it, or replace it with the original file"
        )


# --------------------------------------------------------------------------- download


def _download(urls: tuple[str, ...], name: str, dest_dir: Path, kind: str,
              expected: str | tuple[str, ...], what: str) -> tuple[Path | None, str]:
    """Download ``name`` from the first working base URL into ``dest_dir``, verified.

    Returns (path, "") on success, (None, reason) if no source could be reached.
    Raises DataError if a download completed but its checksum is wrong.  The file
    is written to a temporary file in ``dest_dir`` and renamed only once verified,
    so no partial file is ever left under the final name (nor at all).
    """
    if not urls:
        return None, "no download URL configured"
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    reasons: list[str] = []
    mismatches: list[str] = []
    for base in urls:
        url = base + name
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        except OSError as e:
            return None, f"cannot write to cache folder {dest_dir}: {e}"
        tmp = Path(tmp_name)
        try:
            logger.info("downloading %s to %s", url, dest_dir)
            h = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
            with os.fdopen(fd, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": "iwae"})
                with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
                    if kind == "git-blob":
                        # the blob header needs the size: hash after download
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                    else:
                        while chunk := response.read(1 << 20):
                            h.update(chunk)
                            out.write(chunk)
            if kind == "git-blob":
                h.update(b"blob %d\0" % tmp.stat().st_size)
                with open(tmp, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            actual = h.hexdigest()
            if actual not in accepted:
                mismatches.append(
                    f"{url} gave {_hash_label(kind)} {actual}, expected {' or '.join(accepted)}"
                )
                continue
            final = dest_dir / name
            os.replace(tmp, final)
            _DIGEST_CACHE[_stat_key(final, kind)] = actual
            logger.info("saved %s", final)
            return final, ""
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts
            reasons.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    if mismatches:
        raise DataError(
            f"downloaded {what} file {name} fails its checksum ({'; '.join(mismatches)}); "
            "nothing was saved: try again later, or download the file yourself and pass "
            "--data-dir DIR or set IWAE_DATA_DIR to its folder"
        )
    return None, "; ".join(reasons)


def _locate(names: tuple[str, ...], dirs: list[Path], download: bool, urls: tuple[str, ...],
            kind: str, expected: str | tuple[str, ...], what: str) -> Path:
    """Find the first of ``names`` in ``dirs`` (in order), else download ``names[0]``; verify it."""
    for d in dirs:
        for n in names:
            p = d / n
            if p.is_file():
                _verify_file(p, kind, expected, what)
                return p
    shown = names[0] if len(names) == 1 else " or ".join(names)
    where = _describe_dirs(dirs)
    if not download:
        raise DataError(
            f"{what} file {shown} not found in {where} and download is disabled; "
            "pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it"
        )
    path, reason = _download(urls, names[0], dirs[-1], kind, expected, what)
    if path is None:
        raise DataError(
            f"{what} file {shown} not found in {where} and download failed ({reason}); "
            "pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it"
        )
    return path


# --------------------------------------------------------------------------- array checks


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
        raise DataError(
            f"{what} has shape {arr.shape}; expected (N, D), (N, H, W) or (N, C, H, W) images"
        )
    if arr.size == 0:
        raise DataError(f"{what} is empty (shape {arr.shape}); it needs at least one image with at least one pixel")
    if arr.dtype == np.uint8 and (not _is_binary(arr) if grey8 is None else grey8):
        return (arr.reshape(arr.shape[0], -1).astype(np.float32) / np.float32(255))
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


def _dynamic_splits(name: str, train: np.ndarray, valid: np.ndarray, test: np.ndarray,
                    image_shape: tuple[int, ...] | None, labels: tuple | None = None,
                    mode: str = "dynamic", deq: bool = False) -> Splits:
    """Grey-level splits, binarized as ``mode`` says (module docstring); dequantised where ``deq``."""
    lab = [None, None, None] if labels is None else [_to_tensor(y, torch.int64) for y in labels]
    if deq:
        if mode != "none":
            raise DataError(f"dequantize applies to grey levels (binarize none), not to binarize {mode}")
        for split in (train, valid, test):
            if not _on_8bit_grid(split):
                raise DataError(f"{name} is not 8-bit data (values k/255): uniform dequantisation needs 8-bit grey "
                                f"levels; train it without dequantize")
        valid = fixed_dequantization(valid, VALID_DEQUANTIZATION_SEED)
        test = fixed_dequantization(test, TEST_DEQUANTIZATION_SEED)
    elif mode != "none":
        if mode == "static":
            train = fixed_binarization(train, TRAIN_BINARIZATION_SEED)
        valid = fixed_binarization(valid, VALID_BINARIZATION_SEED)
        test = fixed_binarization(test, TEST_BINARIZATION_SEED)
    return Splits(name, _to_tensor(train), _to_tensor(valid), _to_tensor(test), mode == "dynamic",
                  lab[0], lab[1], lab[2], image_shape, mode, deq)


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


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
        raise DataError(f"{path} is corrupt or truncated: only {len(raw)} bytes after decompression; delete it and re-download it")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind: magic number 0x{found:x}, expected 0x{magic:x}; "
            "check that the file names are not swapped, or delete it and re-download it"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is corrupt or truncated: header says shape {dims} ({expected} bytes) but the payload has "
            f"{len(raw) - header} bytes; delete it and re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_dataset(name: str, what: str, sha: dict[str, str], urls: tuple[str, ...],
                      dirs: list[Path], download: bool, mode: str = "dynamic", deq: bool = False) -> Splits:
    paths = {f: _locate((f,), dirs, download, urls, "sha256", sha[f], what) for f in MNIST_FILES}
    x_train = _read_idx(paths["train-images-idx3-ubyte.gz"], 0x803, 3)
    y_train = _read_idx(paths["train-labels-idx1-ubyte.gz"], 0x801, 1)
    x_test = _read_idx(paths["t10k-images-idx3-ubyte.gz"], 0x803, 3)
    y_test = _read_idx(paths["t10k-labels-idx1-ubyte.gz"], 0x801, 1)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
            raise DataError(f"{what} {split} images have shape {x.shape[1:]}, expected (28, 28); delete the files and re-download them")
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{what} {split} files disagree: {x.shape[0]} images but {y.shape[0]} labels; delete them and re-download them"
            )
    n = x_train.shape[0]
    if n <= MNIST_N_VALID:
        raise DataError(f"{what} has only {n} training images, need more than {MNIST_N_VALID}; delete the files and re-download them")
    grey_train = x_train.reshape(n, _IMAGE_DIM).astype(np.float32) / np.float32(255)
    grey_test = x_test.reshape(x_test.shape[0], _IMAGE_DIM).astype(np.float32) / np.float32(255)
    cut = n - MNIST_N_VALID
    return _dynamic_splits(
        name, grey_train[:cut], grey_train[cut:], grey_test, (_IMAGE_SIDE, _IMAGE_SIDE),
        labels=(y_train[:cut], y_train[cut:], y_test), mode=mode, deq=deq,
    )


# --------------------------------------------------------------------------- binarized MNIST

_AMAT_FILES = {s: f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}


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
        expected = BINARIZED_MNIST_ARRAY_SHA256[split]
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
            raise DataError(f"{path} is a MATLAB file without variable 'X'; replace it with Larochelle's text .amat file")
        arr = np.asarray(mat["X"])
    else:
        width = 2 * _IMAGE_DIM
        a = np.frombuffer(raw, dtype=np.uint8)
        if a.size and a.size % width == 0:
            a = a.reshape(-1, width)
            digits = a[:, ::2]
            if ((a[:, 1:-1:2] == 32).all() and (a[:, -1] == 10).all()
                    and ((digits == 48) | (digits == 49)).all()):
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
    for d in dirs:
        if (d / BINARIZED_MNIST_NPZ).is_file():
            arrays = _load_binarized_npz(d / BINARIZED_MNIST_NPZ)
            break
        if all((d / f).is_file() for f in _AMAT_FILES.values()):
            break
    if arrays is None:
        arrays = {}
        for split, f in _AMAT_FILES.items():
            try:
                p = _locate((f,), dirs, download, BINARIZED_MNIST_URLS, "sha256",
                            BINARIZED_MNIST_AMAT_SHA256[f], what)
            except DataError as e:
                if "not found" in str(e):
                    raise DataError(str(e).replace(
                        f"file {f} not found", f"file {BINARIZED_MNIST_NPZ} (or {f}) not found", 1)) from None
                raise
            arrays[split] = _parse_amat(p)
    t = {k: _to_tensor(v) for k, v in arrays.items()}
    return Splits("binarized-mnist", t["train"], t["valid"], t["test"], False, binarization=mode)


# --------------------------------------------------------------------------- OMNIGLOT


def _read_mat(path: Path, raw: bytes | None = None) -> dict:
    import scipy.io

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
        raise DataError(f"{path} has no variable '{key}'; it needs 'data' and 'testdata' as in Burda et al.'s chardata.mat")
    data = np.asarray(mat[key])
    if data.dtype.kind not in "biuf" or data.ndim != 2 or data.shape[0] != _IMAGE_DIM or data.shape[1] == 0:
        raise DataError(f"{path} variable '{key}' has dtype {data.dtype} and shape {data.shape}; expected (784, N) numbers")
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise DataError(f"{path} variable '{key}' has values outside [0, 1] or not finite; replace the file with the original")
    # Burda et al.: data.T.reshape((-1, 28, 28)).reshape((-1, 28*28), order='fortran')
    images = data.T.reshape((-1, _IMAGE_SIDE, _IMAGE_SIDE)).reshape((-1, _IMAGE_DIM), order="F")
    return np.ascontiguousarray(images, dtype=np.float32)


def _load_omniglot(dirs: list[Path], download: bool, mode: str = "dynamic", deq: bool = False) -> Splits:
    path = _locate(OMNIGLOT_FILES, dirs, download, OMNIGLOT_URLS, "git-blob", OMNIGLOT_GIT_BLOB_SHA1, "OMNIGLOT")
    mat = _read_mat(path)
    train = _omniglot_images(mat, "data", path)
    test = _omniglot_images(mat, "testdata", path)
    n = train.shape[0]
    if n <= OMNIGLOT_N_VALID:
        raise DataError(f"{path} has only {n} training images, need more than {OMNIGLOT_N_VALID}; replace it with the original")
    train = train[np.random.RandomState(OMNIGLOT_PERMUTATION_SEED).permutation(n)]
    cut = n - OMNIGLOT_N_VALID
    return _dynamic_splits("omniglot", train[:cut], train[cut:], test, (_IMAGE_SIDE, _IMAGE_SIDE), mode=mode, deq=deq)


# --------------------------------------------------------------------------- user arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise DataError(f"{path} is corrupt or not a .npz (zip) archive; write it again with numpy.savez")
    try:
        # open the file ourselves: np.load leaks its handle when the archive is corrupt
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds object arrays (pickled); save plain numeric arrays instead") from None
        raise DataError(f"{path} is corrupt or truncated, or not a .npz file ({e}); write it again with numpy.savez") from None
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, KeyError) as e:
        raise DataError(
            f"{path} is corrupt or truncated, or not a .npz file ({type(e).__name__}: {e}); write it again with numpy.savez"
        ) from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            arr = np.load(f, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds an object array (pickled); save a plain numeric array instead") from None
        raise DataError(f"{path} is corrupt or truncated, or not a .npy file ({e}); write it again with numpy.save") from None
    except (EOFError, OSError) as e:
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}); write it again with numpy.save") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path} is a .npz archive, not a .npy file; name it .npz")
    return arr


def _holdout(n: int) -> int:
    return max(1, int(n * NPZ_HOLDOUT_FRACTION))


def _load_user_arrays(spec: str, mode: str = "dynamic", deq: bool = False) -> Splits:
    path = Path(spec[len("npz:"):]).expanduser()
    if not spec[len("npz:"):]:
        raise DataError("dataset 'npz:' needs a path, e.g. npz:/path/to/images.npz")
    if not path.is_file():
        raise DataError(f"user data file {path} not found; give an existing .npz or .npy file as npz:PATH")
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK\x03\x04"):
        arrays = _read_npz(path)
        for key in ("train", "test"):
            if key not in arrays:
                raise DataError(
                    f"{path} has no array '{key}' (it has {sorted(arrays)}); save arrays train, test and optionally valid"
                )
        splits = {k: arrays[k] for k in ("train", "valid", "test") if k in arrays}
    elif head == b"\x93NUMPY":
        splits = {"all": _read_npy(path)}
    else:
        raise DataError(f"{path} is neither a .npz nor a .npy file (or it is corrupt); save it with numpy.savez or numpy.save")

    checked: dict[str, np.ndarray] = {}
    feature_shape = None
    # one file, one reading of uint8: grey levels k/255 if any of its uint8 arrays has a value above 1
    grey8 = any(a.dtype == np.uint8 and not _is_binary(a) for a in splits.values())
    for key, arr in splits.items():
        what = f"{path}" if key == "all" else f"{path} array '{key}'"
        x = _check_array(arr, what, grey8)
        if feature_shape is None:
            feature_shape = arr.shape[1:]
        elif arr.shape[1:] != feature_shape:
            raise DataError(
                f"{what} has images of shape {arr.shape[1:]} but train has {feature_shape}; all splits need the same image shape"
            )
        checked[key] = x
    if "all" in checked:
        x = checked.pop("all")
        n = x.shape[0]
        k = _holdout(n)
        if n - 2 * k < 1:
            raise DataError(f"{path} has only {n} images; a .npy file needs at least 3 (split 80/10/10 into train/valid/test)")
        checked = {"train": x[: n - 2 * k], "valid": x[n - 2 * k: n - k], "test": x[n - k:]}
    elif "valid" not in checked:
        x = checked["train"]
        n = x.shape[0]
        k = _holdout(n)
        if n - k < 1:
            raise DataError(f"{path} array 'train' has only {n} image; add an array 'valid' or more training images")
        checked["train"], checked["valid"] = x[: n - k], x[n - k:]

    assert feature_shape is not None
    if len(feature_shape) in (2, 3):
        image_shape: tuple[int, ...] | None = tuple(int(n) for n in feature_shape)
    else:
        side = math.isqrt(int(feature_shape[0]))
        image_shape = (side, side) if side * side == feature_shape[0] else None
    if all(_is_binary(v) for v in checked.values()):
        if deq:
            raise DataError(f"{path} holds binary images (values 0 and 1): dequantize applies to 8-bit grey levels")
        t = {k: _to_tensor(v) for k, v in checked.items()}
        return Splits(spec, t["train"], t["valid"], t["test"], False, image_shape=image_shape, binarization=mode)
    return _dynamic_splits(spec, checked["train"], checked["valid"], checked["test"], image_shape, mode=mode, deq=deq)


# --------------------------------------------------------------------------- presence


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
        path = Path(name[len("npz:"):]).expanduser()
        return [] if path.is_file() else [str(path)]
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or npz:PATH for your own arrays")
    dirs = _search_dirs(data_dir, _SUBDIRS[key])

    def present(names: tuple[str, ...]) -> bool:
        return any((d / n).is_file() for d in dirs for n in names)

    if key in ("mnist", "fashion-mnist"):
        return [f for f in MNIST_FILES if not present((f,))]
    if key == "binarized-mnist":
        if present((BINARIZED_MNIST_NPZ,)):
            return []
        return [f for f in _AMAT_FILES.values() if not present((f,))]
    return [] if present(OMNIGLOT_FILES) else [OMNIGLOT_FILES[0]]


# --------------------------------------------------------------------------- entry point


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 binarize: str = "dynamic", dequantize: bool = False) -> Splits:
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

    Raises :class:`DataError` for an unknown name, missing or corrupt files,
    checksum mismatches and invalid arrays.
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}")
    mode = resolve_binarize(binarize)
    if name.startswith("npz:"):
        return _load_user_arrays(name, mode, dequantize)
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or npz:PATH for your own arrays")
    dirs = _search_dirs(data_dir, _SUBDIRS[key])
    if key == "mnist":
        return _load_idx_dataset("mnist", "MNIST", MNIST_SHA256, MNIST_URLS, dirs, download, mode, dequantize)
    if key == "fashion-mnist":
        return _load_idx_dataset("fashion-mnist", "Fashion-MNIST", FASHION_MNIST_SHA256, FASHION_MNIST_URLS, dirs,
                                 download, mode, dequantize)
    if key == "binarized-mnist":
        if dequantize:
            raise DataError("binarized-mnist is binary: dequantize applies to 8-bit grey levels (mnist, fashion-mnist)")
        return _load_binarized_mnist(dirs, download, mode)
    return _load_omniglot(dirs, download, mode, dequantize)

