"""Tests for iwae.data: real benchmark files, lookup order, downloads (file:// only) and validation.

The shared benchmark files are looked up in ``<repo parent>/shared/data`` (folders mnist/,
fashion_mnist/, binarized_mnist/), or in ``$IWAE_TEST_DATA_DIR``; tests that need them skip
when they are absent, and fail instead with ``IWAE_REQUIRE_DATA=1`` (as CI sets it).  No test touches
the network: socket connections fail and every download URL is replaced by a ``file://`` URL or nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from iwae import data
from iwae.data import DataError, Splits, load_dataset, registry
from iwae.data import files as data_files

SHARED = Path(os.environ.get("IWAE_TEST_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
DATA_FIXTURES = ("mnist", "bin_arrays")  # read the shared data: tests using them are marked `data` (conftest.py)
MNIST_FILES = registry.MNIST_FILES
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def shared(sub: str) -> Path:
    """The shared data subfolder; if it is not there, skip the test, or fail it with IWAE_REQUIRE_DATA=1."""
    p = SHARED / sub
    if not p.is_dir():
        message = f"shared data {p} not available (set IWAE_TEST_DATA_DIR)"
        if os.environ.get("IWAE_REQUIRE_DATA") == "1":
            pytest.fail(message + " (IWAE_REQUIRE_DATA=1)")
        pytest.skip(message)
    return p


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, no user cache, no IWAE_DATA_DIR from the environment."""
    monkeypatch.setenv("IWAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("IWAE_DATA_DIR", raising=False)
    for name in ("MNIST_URLS", "FASHION_MNIST_URLS", "BINARIZED_MNIST_URLS", "OMNIGLOT_URLS"):
        monkeypatch.setattr(registry, name, ())

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mnist() -> Splits:
    return load_dataset("mnist", shared("mnist").parent, download=False)


def read_idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def write_idx_gz(path: Path, arr: np.ndarray, magic: int | None = None) -> None:
    if magic is None:
        magic = 0x803 if arr.ndim == 3 else 0x801
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def link_files(src: Path, dst: Path, names=MNIST_FILES) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst / n).symlink_to(src / n)
    return dst


def garbage_files(dst: Path, names=MNIST_FILES) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst / n).write_bytes(b"not the real file")
    return dst


# --------------------------------------------------------------------------- real MNIST


def test_missing_shared_data_fails_when_required(monkeypatch):
    """CI sets IWAE_REQUIRE_DATA=1: a missing data folder must fail the tests, not skip them silently."""
    monkeypatch.setenv("IWAE_REQUIRE_DATA", "1")
    try:
        shared("no_such_dataset")
    except pytest.skip.Exception:
        pytest.fail("a missing data folder was skipped although IWAE_REQUIRE_DATA=1")
    except pytest.fail.Exception as e:
        assert "no_such_dataset not available" in str(e) and "IWAE_REQUIRE_DATA=1" in str(e)
    else:
        pytest.fail("shared() returned a folder that does not exist")
    monkeypatch.delenv("IWAE_REQUIRE_DATA")
    with pytest.raises(pytest.skip.Exception, match="no_such_dataset not available"):
        shared("no_such_dataset")


def test_mnist_shapes_labels_and_ranges(mnist):
    assert (mnist.name, mnist.dynamic, mnist.image_shape, mnist.dim) == ("mnist", True, (28, 28), 784)
    assert mnist.train.shape == (59600, 784)
    assert mnist.valid.shape == (400, 784)
    assert mnist.test.shape == (10000, 784)
    for x in (mnist.train, mnist.valid, mnist.test):
        assert x.dtype == torch.float32
    assert mnist.train.min() == 0 and mnist.train.max() == 1
    grey = mnist.train[:100]
    assert ((grey > 0) & (grey < 1)).any(), "train must hold grey levels"
    assert torch.equal(torch.unique(mnist.train[:1000] * 255).round(), torch.unique(mnist.train[:1000] * 255))
    for x in (mnist.valid, mnist.test):
        assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    for y in (mnist.train_labels, mnist.valid_labels, mnist.test_labels):
        assert y.dtype == torch.int64
    assert mnist.test_labels.bincount().tolist() == MNIST_TEST_COUNTS
    all_train = torch.cat([mnist.train_labels, mnist.valid_labels])
    assert all_train.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert "59600" in repr(mnist) and "tensor" not in repr(mnist)


def test_mnist_paper_split_and_fixed_binarization(mnist):
    raw_train = read_idx(shared("mnist") / "train-images-idx3-ubyte.gz", 16).reshape(60000, 784)
    raw_test = read_idx(shared("mnist") / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 784)
    grey_train = raw_train.astype(np.float32) / np.float32(255)
    grey_test = raw_test.astype(np.float32) / np.float32(255)
    # train = first 59,600 grey-level images; valid = last 400, binarized once
    np.testing.assert_array_equal(mnist.train.numpy(), grey_train[:59600])
    np.testing.assert_array_equal(
        mnist.valid.numpy(), data.fixed_binarization(grey_train[59600:], data.VALID_BINARIZATION_SEED)
    )
    np.testing.assert_array_equal(mnist.test.numpy(), data.fixed_binarization(grey_test, data.TEST_BINARIZATION_SEED))
    assert data.VALID_BINARIZATION_SEED != data.TEST_BINARIZATION_SEED
    # statistics: binarized mean ~ grey mean within 5 binomial standard errors
    p = grey_test.astype(np.float64)
    se = np.sqrt((p * (1 - p)).sum()) / p.size
    assert abs(mnist.test.double().mean().item() - p.mean()) < 5 * se
    # pixels at 0 stay 0, pixels at 255 become 1
    t = mnist.test.numpy()
    assert (t[raw_test == 0] == 0).all() and (t[raw_test == 255] == 1).all()


def test_mnist_test_set_is_reproducible(mnist):
    again = load_dataset("mnist", shared("mnist").parent, download=False)
    assert torch.equal(again.test, mnist.test) and torch.equal(again.valid, mnist.valid)
    assert again.test.data_ptr() != mnist.test.data_ptr()
    # pinned: changing the seeds or the binarization rule changes the images `iwae evaluate` uses
    digest = hashlib.sha256(mnist.test.numpy().astype(np.uint8).tobytes()).hexdigest()
    assert digest == PINNED_MNIST_TEST_SHA256
    assert int(mnist.test.sum()) == PINNED_MNIST_TEST_ONES


PINNED_MNIST_TEST_SHA256 = "8e1f6a9c1851d280fb7efc5ba27912aa0fc117de10b7fcf7c51e1b8b0a39a09e"
PINNED_MNIST_TEST_ONES = 1039146


def test_binarize_is_bernoulli_of_grey_levels(mnist):
    x = mnist.train[:16]
    g = torch.Generator().manual_seed(0)
    reps = 4000
    total = torch.zeros_like(x, dtype=torch.float64)
    for _ in range(reps):
        b = data.binarize(x, generator=g)
        total += b
    mean = total / reps
    sigma = torch.sqrt(x.double() * (1 - x.double()) / reps)
    assert (mean - x.double()).abs().le(6 * sigma + 1e-12).all()
    assert b.dtype == torch.float32 and b.shape == x.shape
    assert set(torch.unique(b).tolist()) <= {0.0, 1.0}


def test_binarize_random_across_calls_and_reproducible_with_generator(mnist):
    x = mnist.train[:64]
    assert not torch.equal(data.binarize(x), data.binarize(x))
    a = data.binarize(x, torch.Generator().manual_seed(7))
    b = data.binarize(x, torch.Generator().manual_seed(7))
    c = data.binarize(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    edge = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert torch.equal(data.binarize(edge), edge)
    assert data.binarize(torch.ones(3, 5, dtype=torch.uint8)).dtype == torch.float32


def test_fixed_binarization_formula_and_determinism():
    x = np.random.default_rng(1).random((50, 30)).astype(np.float32)
    expected = (np.random.default_rng(5).random(x.shape, dtype=np.float64) < x).astype(np.float32)
    out = data.fixed_binarization(x, 5)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, data.fixed_binarization(x, 5))
    assert not np.array_equal(out, data.fixed_binarization(x, 6))


# --------------------------------------------------------------------------- binarized MNIST


@pytest.mark.data  # reads the shared data through shared()
def test_binarized_mnist_npz_from_shared():
    s = load_dataset("binarized-mnist", shared("binarized_mnist").parent, download=False)
    assert (s.name, s.dynamic, s.image_shape) == ("binarized-mnist", False, (28, 28))
    assert s.train.shape == (50000, 784) and s.valid.shape == (10000, 784) and s.test.shape == (10000, 784)
    assert s.train.dtype == torch.float32 and s.train_labels is None
    assert [int(x.sum()) for x in (s.train, s.valid, s.test)] == [5118041, 1028036, 1038896]
    for x in (s.train, s.valid, s.test):
        assert ((x == 0) | (x == 1)).all()


def amat_text(arr: np.ndarray) -> bytes:
    """Larochelle's text format: 784 space-separated 0/1 per line."""
    b = np.full((arr.shape[0], 2 * arr.shape[1]), ord(" "), np.uint8)
    b[:, ::2] = arr.astype(np.uint8) + ord("0")
    b[:, -1] = ord("\n")
    return b.tobytes()


@pytest.fixture(scope="module")
def bin_arrays() -> dict[str, np.ndarray]:
    with np.load(shared("binarized_mnist") / "binarized_mnist.npz") as z:
        return {k: z[k] for k in ("train", "valid", "test")}


def test_binarized_mnist_from_full_size_original_amat_text(tmp_path, bin_arrays):
    # full-size text files, checked against the README's SHA-256 of Larochelle's originals (no patching)
    d = tmp_path / "root" / "binarized_mnist"
    d.mkdir(parents=True)
    for split, arr in bin_arrays.items():
        (d / f"binarized_mnist_{split}.amat").write_bytes(amat_text(arr))
    s = load_dataset("binarized-mnist", tmp_path / "root", download=False)
    for split, arr in bin_arrays.items():
        np.testing.assert_array_equal(getattr(s, split).numpy(), arr)
    assert s.dynamic is False


def write_small_amats(d: Path, bin_arrays, monkeypatch, rows=50, fmt="fast") -> None:
    d.mkdir(parents=True, exist_ok=True)
    for split, arr in bin_arrays.items():
        name = f"binarized_mnist_{split}.amat"
        if fmt == "fast":
            (d / name).write_bytes(amat_text(arr[:rows]))
        elif fmt == "loose":  # CRLF line ends, floats, double spaces
            lines = ["  ".join(f"{v:.1f}" for v in row) for row in arr[:rows]]
            (d / name).write_bytes(("\r\n".join(lines) + "\r\n").encode())
        else:  # MATLAB v5, as in mingzhang-yin/ARM-gradient
            scipy.io.savemat(d / name, {"X": arr[:rows]}, appendmat=False)
        monkeypatch.setitem(registry.BINARIZED_MNIST_AMAT_SHA256, name, (sha256(d / name),))


@pytest.mark.parametrize("fmt", ["fast", "loose", "mat"])
def test_binarized_mnist_from_small_amat_files(tmp_path, bin_arrays, monkeypatch, fmt):
    write_small_amats(tmp_path / "binarized_mnist", bin_arrays, monkeypatch, rows=50, fmt=fmt)
    s = load_dataset("binarized-mnist", tmp_path, download=False)
    for split, arr in bin_arrays.items():
        np.testing.assert_array_equal(getattr(s, split).numpy(), arr[:50])


def test_binarized_mnist_prefers_npz_and_checks_amat_hashes(tmp_path, bin_arrays, monkeypatch):
    d = tmp_path / "binarized_mnist"
    d.mkdir()
    for split, arr in bin_arrays.items():  # small text files with the real (full-size) hashes
        (d / f"binarized_mnist_{split}.amat").write_bytes(amat_text(arr[:50]))
    with pytest.raises(
        DataError,
        match=r"binarized_mnist_train\.amat fails its checksum: expected sha256 "
        r"ad693b29.* got [0-9a-f]{64}.*delete it",
    ):
        load_dataset("binarized-mnist", tmp_path, download=False)
    (d / "binarized_mnist.npz").symlink_to(shared("binarized_mnist") / "binarized_mnist.npz")
    s = load_dataset("binarized-mnist", tmp_path, download=False)
    assert s.train.shape == (50000, 784)


def test_binarized_mnist_npz_errors(tmp_path, bin_arrays):
    d = tmp_path / "binarized_mnist"
    d.mkdir()
    np.savez(d / "binarized_mnist.npz", train=bin_arrays["train"], test=bin_arrays["test"])
    with pytest.raises(DataError, match=r"has no array 'valid'"):
        load_dataset("binarized-mnist", tmp_path, download=False)
    np.savez(
        d / "binarized_mnist.npz", train=bin_arrays["train"][:10], valid=bin_arrays["valid"], test=bin_arrays["test"]
    )
    with pytest.raises(DataError, match=r"array 'train' fails its checksum: expected sha256 43490d4d"):
        load_dataset("binarized-mnist", tmp_path, download=False)
    np.savez(
        d / "binarized_mnist.npz", train=bin_arrays["train"] * 0.5, valid=bin_arrays["valid"], test=bin_arrays["test"]
    )
    with pytest.raises(DataError, match=r"array 'train' has values other than 0 and 1"):
        load_dataset("binarized-mnist", tmp_path, download=False)
    np.savez(
        d / "binarized_mnist.npz",
        train=bin_arrays["train"][:, :700],
        valid=bin_arrays["valid"],
        test=bin_arrays["test"],
    )
    with pytest.raises(DataError, match=r"array 'train' has dtype uint8 and shape \(50000, 700\); expected \(N, 784\)"):
        load_dataset("binarized-mnist", tmp_path, download=False)
    (d / "binarized_mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"binarized_mnist\.npz is corrupt or truncated"):
        load_dataset("binarized-mnist", tmp_path, download=False)
    # float copies of the real arrays (as in other distributions) are accepted
    np.savez(d / "binarized_mnist.npz", **{k: v.astype(np.float32) for k, v in bin_arrays.items()})
    s = load_dataset("binarized-mnist", tmp_path, download=False)
    assert int(s.test.sum()) == 1038896


@pytest.mark.parametrize(
    "content, message",
    [
        (b"0 1 x\n", r"train\.amat is corrupt: expected lines of 784 numbers"),
        (b"0 1 0\n1 0 1\n", r"train\.amat holds an array of shape \(2, 3\), expected \(N, 784\) values in \{0, 1\}"),
        (b"", r"train\.amat holds an array of shape"),
    ],
)
def test_binarized_mnist_bad_amat(tmp_path, bin_arrays, monkeypatch, content, message):
    write_small_amats(tmp_path / "binarized_mnist", bin_arrays, monkeypatch, rows=5)
    bad = tmp_path / "binarized_mnist" / "binarized_mnist_train.amat"
    bad.write_bytes(content)
    monkeypatch.setitem(registry.BINARIZED_MNIST_AMAT_SHA256, bad.name, (sha256(bad),))
    with pytest.raises(DataError, match=message):
        load_dataset("binarized-mnist", tmp_path, download=False)


def test_binarized_mnist_download_text_amat(tmp_path, bin_arrays, monkeypatch, isolated):
    mirror = tmp_path / "mirror"
    write_small_amats(mirror, bin_arrays, monkeypatch, rows=20)
    monkeypatch.setattr(registry, "BINARIZED_MNIST_URLS", (mirror.as_uri() + "/",))
    s = load_dataset("binarized-mnist")
    assert s.train.shape == (20, 784)
    assert sorted(p.name for p in (isolated / "binarized_mnist").iterdir()) == sorted(
        f"binarized_mnist_{k}.amat" for k in ("test", "train", "valid")
    )


def test_binarized_mnist_missing_message(tmp_path):
    with pytest.raises(DataError, match=r"binarized_mnist\.npz \(or binarized_mnist_train\.amat\) not found"):
        load_dataset("binarized-mnist", tmp_path, download=False)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.data  # reads the shared data through shared()
def test_fashion_mnist_shapes():
    s = load_dataset("fashion-mnist", shared("fashion_mnist").parent, download=False)
    assert (s.name, s.dynamic) == ("fashion-mnist", True)
    assert s.train.shape == (59600, 784) and s.valid.shape == (400, 784) and s.test.shape == (10000, 784)
    assert torch.cat([s.train_labels, s.valid_labels]).bincount().tolist() == [6000] * 10
    assert s.test_labels.bincount().tolist() == [1000] * 10
    assert ((s.train > 0) & (s.train < 1)).any()
    assert set(torch.unique(s.test).tolist()) == {0.0, 1.0}
    assert abs(s.train.mean().item() - 72.9 / 255) < 0.01


# --------------------------------------------------------------------------- lookup order


@pytest.mark.data  # reads the shared data through shared()
def test_env_data_dir_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAE_DATA_DIR", str(shared("mnist").parent))
    assert load_dataset("mnist", download=False).test.shape == (10000, 784)
    bad = garbage_files(tmp_path / "bad" / "mnist")
    monkeypatch.setenv("IWAE_DATA_DIR", str(bad.parent))
    with pytest.raises(DataError, match=f"{bad}/train-images-idx3-ubyte.gz fails its checksum"):
        load_dataset("mnist", download=False)


@pytest.mark.data  # reads the shared data through shared()
def test_explicit_data_dir_wins_over_env_and_cache(tmp_path, monkeypatch, isolated):
    bad = garbage_files(tmp_path / "bad" / "mnist")
    garbage_files(isolated / "mnist")
    monkeypatch.setenv("IWAE_DATA_DIR", str(bad.parent))
    s = load_dataset("mnist", shared("mnist").parent, download=False)
    assert s.train.shape == (59600, 784)


@pytest.mark.data  # reads the shared data through shared()
def test_files_directly_inside_data_dir(tmp_path):
    flat = link_files(shared("mnist"), tmp_path / "flat")
    assert load_dataset("mnist", flat, download=False).valid.shape == (400, 784)


@pytest.mark.data  # reads the shared data through shared()
def test_cache_dir_is_used(tmp_path, isolated):
    link_files(shared("mnist"), isolated / "mnist")
    assert load_dataset("mnist", download=False).test.shape == (10000, 784)
    # explicit dir without the files: the cache is still searched
    (tmp_path / "empty").mkdir()
    assert load_dataset("mnist", tmp_path / "empty", download=False).test.shape == (10000, 784)


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("IWAE_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("IWAE_CACHE_DIR")
    assert data.default_cache_dir() == tmp_path / "xdg" / "iwae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "iwae"


@pytest.mark.data  # reads the shared data through shared()
def test_download_from_file_url_into_cache(tmp_path, monkeypatch, isolated):
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setattr(registry, "MNIST_URLS", (dead, shared("mnist").as_uri() + "/"))
    s = load_dataset("mnist")
    assert s.train.shape == (59600, 784)
    cached = sorted(p.name for p in (isolated / "mnist").iterdir())
    assert cached == sorted(MNIST_FILES)  # no temporary files left
    for n in MNIST_FILES:
        assert sha256(isolated / "mnist" / n) == registry.MNIST_SHA256[n]
    monkeypatch.setattr(registry, "MNIST_URLS", ())
    assert torch.equal(load_dataset("mnist", download=False).test, s.test)


@pytest.mark.data  # reads the shared data through shared()
def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch, isolated):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for n in MNIST_FILES:  # truncated copies
        (mirror / n).write_bytes((shared("mnist") / n).read_bytes()[:1000])
    monkeypatch.setattr(registry, "MNIST_URLS", (mirror.as_uri() + "/",))
    with pytest.raises(
        DataError,
        match=r"downloaded MNIST file train-images-idx3-ubyte\.gz fails its checksum "
        r".*expected 440fcabf.*nothing was saved",
    ):
        load_dataset("mnist")
    assert list((isolated / "mnist").iterdir()) == []


def test_missing_file_without_download(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path / "empty", download=False)
    msg = str(e.value)
    assert "MNIST file train-images-idx3-ubyte.gz not found in" in msg
    assert str(tmp_path / "empty" / "mnist") in msg and "cache" in msg
    assert "download is disabled" in msg
    assert "pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it" in msg
    assert "\n" not in msg


def test_missing_file_download_failed(tmp_path, monkeypatch, isolated):
    monkeypatch.setattr(registry, "MNIST_URLS", ((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(
        DataError,
        match=r"not found in .* and download failed \(file://.*nowhere/train-images"
        r".*\); pass --data-dir DIR or set IWAE_DATA_DIR",
    ):
        load_dataset("mnist")
    assert list((isolated / "mnist").iterdir()) == []
    monkeypatch.setattr(registry, "MNIST_URLS", ())
    with pytest.raises(DataError, match=r"download failed \(no download URL configured\)"):
        load_dataset("mnist")


@pytest.mark.data  # reads the shared data through shared()
def test_local_checksum_mismatch_names_file_and_hashes(tmp_path):
    d = link_files(shared("mnist"), tmp_path / "mnist")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(
        DataError,
        match=r"MNIST file .*t10k-labels-idx1-ubyte\.gz fails its checksum: expected "
        r"sha256 f7ae60f9\w+, got [0-9a-f]{64} \(4 bytes\).*delete it",
    ):
        load_dataset("mnist", tmp_path, download=False)


def test_data_dir_must_exist(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data directory .*nope \(from data_dir\) does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "nope2"))
    with pytest.raises(DataError, match=r"nope2 \(from IWAE_DATA_DIR\) does not exist"):
        load_dataset("mnist")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(
        DataError,
        match=r"unknown dataset 'cifar'; choose one of mnist, binarized-mnist, "
        r"fashion-mnist, omniglot, mnist-vamp, caltech101, frey, or npz:PATH",
    ):
        load_dataset("cifar")
    assert data.DATASETS == (
        "mnist",
        "binarized-mnist",
        "fashion-mnist",
        "omniglot",
        "mnist-vamp",
        "caltech101",
        "frey",
    )


# --------------------------------------------------------------------------- IDX parsing (synthetic files)


def fake_mnist(d: Path, monkeypatch, n_train=30, n_test=10, n_valid=5, **override) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    for n, arr in arrays.items():
        if n in override:
            override[n](d / n, arr)
        else:
            write_idx_gz(d / n, arr)
        monkeypatch.setitem(registry.MNIST_SHA256, n, sha256(d / n))
    monkeypatch.setattr(registry, "MNIST_N_VALID", n_valid)
    return arrays


def test_synthetic_idx_split_rule(tmp_path, monkeypatch):
    arrays = fake_mnist(tmp_path / "mnist", monkeypatch)
    s = load_dataset("mnist", tmp_path, download=False)
    x = arrays["train-images-idx3-ubyte.gz"].reshape(30, 784).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(s.train.numpy(), x[:25])
    np.testing.assert_array_equal(s.valid.numpy(), data.fixed_binarization(x[25:], data.VALID_BINARIZATION_SEED))
    np.testing.assert_array_equal(s.valid_labels.numpy(), arrays["train-labels-idx1-ubyte.gz"][25:])


@pytest.mark.parametrize(
    "writer, message",
    [
        (lambda p, a: write_idx_gz(p, a, magic=0x801), r"magic number 0x801, expected 0x803"),
        (
            lambda p, a: p.write_bytes(
                gzip.compress(struct.pack(">IIII", 0x803, 31, 28, 28) + a.astype(np.uint8).tobytes())
            ),
            r"corrupt or truncated: header says shape \(31, 28, 28\)",
        ),
        (
            lambda p, a: p.write_bytes(
                gzip.compress(struct.pack(">IIII", 0x803, 30, 28, 28) + a.astype(np.uint8).tobytes())[:-50]
            ),
            r"train-images-idx3-ubyte\.gz is corrupt or truncated \(EOFError",
        ),
        (lambda p, a: p.write_bytes(b"\x1f\x8b" + b"\x00" * 100), r"is corrupt or truncated \(BadGzipFile"),
        (lambda p, a: write_idx_gz(p, a.reshape(30, 16, 49)), r"images have shape \(16, 49\), expected \(28, 28\)"),
        (lambda p, a: write_idx_gz(p, a[:29]), r"train files disagree: 29 images but 30 labels"),
    ],
)
def test_idx_errors(tmp_path, monkeypatch, writer, message):
    fake_mnist(tmp_path / "mnist", monkeypatch, **{"train-images-idx3-ubyte.gz": writer})
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", tmp_path, download=False)


# --------------------------------------------------------------------------- OMNIGLOT (tiny .mat)


def git_blob_sha1(path: Path) -> str:
    content = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def write_omniglot(path: Path, n_train=12, n_test=4, monkeypatch=None, **extra) -> tuple[np.ndarray, np.ndarray]:
    """Row-major 28x28 images, stored as Burda's chardata.mat does: (784, N) columns in Fortran order."""
    rng = np.random.default_rng(3)
    train = rng.random((n_train, 28, 28))
    test = rng.random((n_test, 28, 28))
    train[0] = 0
    train[0, 0, :] = 1  # first image: top row white
    to_mat = lambda imgs: np.stack([im.ravel(order="F") for im in imgs], axis=1)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"data": to_mat(train), "testdata": to_mat(test), **extra})
    if monkeypatch is not None:
        monkeypatch.setattr(registry, "OMNIGLOT_GIT_BLOB_SHA1", git_blob_sha1(path))
        monkeypatch.setattr(registry, "OMNIGLOT_N_VALID", 3)
    return train.reshape(n_train, 784), test.reshape(n_test, 784)


@pytest.mark.parametrize("filename", ["chardata.mat", "omniglot.mat"])
def test_omniglot_conversion_and_split(tmp_path, monkeypatch, filename):
    train, test = write_omniglot(tmp_path / "omniglot" / filename, monkeypatch=monkeypatch)
    s = load_dataset("omniglot", tmp_path, download=False)
    assert (s.name, s.dynamic, s.image_shape, s.train_labels) == ("omniglot", True, (28, 28), None)
    perm = np.random.RandomState(123).permutation(12)
    shuffled = train[perm].astype(np.float32)
    np.testing.assert_array_equal(s.train.numpy(), shuffled[:9])
    np.testing.assert_array_equal(s.valid.numpy(), data.fixed_binarization(shuffled[9:], data.VALID_BINARIZATION_SEED))
    np.testing.assert_array_equal(
        s.test.numpy(), data.fixed_binarization(test.astype(np.float32), data.TEST_BINARIZATION_SEED)
    )
    # the known image (top row white, rest black; binarization keeps 0/1) comes back in row-major order
    where = int(np.flatnonzero(perm == 0)[0])
    img = (s.train[where] if where < 9 else s.valid[where - 9]).reshape(28, 28)
    assert img[0].eq(1).all() and img[1:].eq(0).all()


def test_omniglot_blob_hash_matches_git(tmp_path):
    p = tmp_path / "x.mat"
    write_omniglot(p)
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    out = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True, check=True).stdout.strip()
    assert data_files._file_digest(p, "git-blob") == out == git_blob_sha1(p)


def test_omniglot_errors(tmp_path, monkeypatch):
    p = tmp_path / "omniglot" / "chardata.mat"
    write_omniglot(p)
    with pytest.raises(
        DataError,
        match=r"OMNIGLOT file .*chardata\.mat fails its checksum: expected git blob sha1 "
        r"016a3536ffe5e1d38e42563a18d7a78bfaf643ec, got",
    ):
        load_dataset("omniglot", tmp_path, download=False)
    # missing variable
    p.unlink()
    scipy.io.savemat(p, {"data": np.zeros((784, 5))})
    monkeypatch.setattr(registry, "OMNIGLOT_GIT_BLOB_SHA1", git_blob_sha1(p))
    with pytest.raises(DataError, match=r"has no variable 'testdata'"):
        load_dataset("omniglot", tmp_path, download=False)
    # truncated file
    write_omniglot(p)
    p.write_bytes(p.read_bytes()[:300])
    monkeypatch.setattr(registry, "OMNIGLOT_GIT_BLOB_SHA1", git_blob_sha1(p))
    with pytest.raises(DataError, match=r"chardata\.mat is corrupt or truncated"):
        load_dataset("omniglot", tmp_path, download=False)


def test_omniglot_download_checks_blob(tmp_path, monkeypatch, isolated):
    mirror = tmp_path / "mirror"
    write_omniglot(mirror / "chardata.mat", monkeypatch=monkeypatch)
    monkeypatch.setattr(registry, "OMNIGLOT_URLS", (mirror.as_uri() + "/",))
    assert load_dataset("omniglot").train.shape == (9, 784)
    assert [p.name for p in (isolated / "omniglot").iterdir()] == ["chardata.mat"]
    (isolated / "omniglot" / "chardata.mat").unlink()
    monkeypatch.setattr(registry, "OMNIGLOT_GIT_BLOB_SHA1", "0" * 40)
    with pytest.raises(DataError, match=r"fails its checksum .*expected 0{40}"):
        load_dataset("omniglot")
    assert list((isolated / "omniglot").iterdir()) == []


# --------------------------------------------------------------------------- user arrays (npz:PATH)


def test_npz_static_and_holdout(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 2, (25, 7, 7)).astype(np.uint8)
    test = rng.integers(0, 2, (4, 7, 7)).astype(bool)
    np.savez(tmp_path / "a.npz", train=train, test=test)
    s = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert s.dynamic is False and s.image_shape == (7, 7)
    assert s.train.shape == (23, 49) and s.valid.shape == (2, 49) and s.test.shape == (4, 49)
    np.testing.assert_array_equal(s.valid.numpy(), train.reshape(25, 49)[23:])
    assert s.train.dtype == torch.float32 and s.train_labels is None


def test_npz_grey_levels_are_dynamic(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: rng.random((n, 10)) for k, n in (("train", 20), ("valid", 6), ("test", 8))}
    np.savez(tmp_path / "g.npz", **arrays)
    s = load_dataset(f"npz:{tmp_path / 'g.npz'}")
    assert s.dynamic is True and s.image_shape is None
    np.testing.assert_array_equal(s.train.numpy(), arrays["train"].astype(np.float32))
    np.testing.assert_array_equal(
        s.test.numpy(), data.fixed_binarization(arrays["test"].astype(np.float32), data.TEST_BINARIZATION_SEED)
    )
    np.testing.assert_array_equal(
        s.valid.numpy(), data.fixed_binarization(arrays["valid"].astype(np.float32), data.VALID_BINARIZATION_SEED)
    )


def test_npy_split_80_10_10(tmp_path):
    x = np.linspace(0, 1, 30 * 16).reshape(30, 16)
    np.save(tmp_path / "x.npy", x)
    s = load_dataset(f"npz:{tmp_path / 'x.npy'}")
    assert (s.train.shape[0], s.valid.shape[0], s.test.shape[0]) == (24, 3, 3)
    assert s.image_shape == (4, 4) and s.dynamic
    np.testing.assert_array_equal(s.train.numpy(), x[:24].astype(np.float32))


def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


GOOD = np.zeros((5, 4))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            _npz(train=np.zeros(5), test=GOOD),
            r"array 'train' has shape \(5,\); expected \(N, D\), \(N, H, W\) or \(N, C, H, W\)",
        ),
        (_npz(train=np.zeros((2, 2, 2, 2, 2)), test=GOOD), r"has shape \(2, 2, 2, 2, 2\); expected \(N, D\)"),
        (_npz(train=GOOD, test=np.zeros((5, 3))), r"array 'test' has images of shape \(3,\) but train has \(4,\)"),
        (_npz(train=np.zeros((0, 4)), test=GOOD), r"array 'train' is empty \(shape \(0, 4\)\)"),
        (
            _npz(train=GOOD, test=np.zeros((5, 4)).astype(str)),
            r"array 'test' has dtype <U32; expected uint8 grey levels \(0-255\), or bool, integer or",
        ),
        (_npz(train=GOOD.astype(complex), test=GOOD), r"has dtype complex128; expected uint8 grey levels"),
        (_npz(train=np.array([[None, 1]], dtype=object), test=GOOD), r"holds object arrays \(pickled\)"),
        (_npz(train=np.full((5, 4), 255, np.int64), test=GOOD), r"values in \[255, 255\], outside \[0, 1\]; .*uint8"),
        (_npz(train=np.full((5, 4), 256, np.uint16), test=GOOD), r"values in \[256, 256\], outside \[0, 1\]; rescale"),
        (_npz(train=np.linspace(0, 200, 20).reshape(5, 4), test=GOOD), r"values in \[0, 200\].*divide by 255"),
        (_npz(train=GOOD - 1, test=GOOD), r"values in \[-1, -1\], outside \[0, 1\]; rescale"),
        (_npz(train=np.array([[0.5, np.nan]]), test=GOOD), r"contains NaN or infinite values"),
        (_npz(train=GOOD, test=np.array([[np.inf, 0, 0, 0]])), r"array 'test' contains NaN or infinite"),
        (_npz(train=GOOD, valid=GOOD), r"has no array 'test' \(it has \['train', 'valid'\]\)"),
        (
            lambda p: (np.savez(p, train=GOOD, test=GOOD), p.write_bytes(p.read_bytes()[:-40])),
            r"is corrupt or truncated, or not a \.npz file",
        ),
        (lambda p: p.write_bytes(b"hello world"), r"is neither a \.npz nor a \.npy file"),
        (
            lambda p: (np.save(p.with_suffix(".npy"), GOOD), p.write_bytes(p.with_suffix(".npy").read_bytes()[:-10])),
            r"corrupt or truncated",
        ),
        (
            lambda p: (
                np.save(p.with_suffix(".npy"), np.zeros((2, 4))) or p.write_bytes(p.with_suffix(".npy").read_bytes())
            ),
            r"has only 2 images; a \.npy file needs at least 3",
        ),
    ],
)
def test_user_array_validation_errors(tmp_path, make, message):
    p = tmp_path / "user.npz"
    make(p)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(f"npz:{p}")
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "shape, fix",
    [((6, 28, 28, 1), r"x\[\.\.\., 0\]"), ((6, 8, 6, 3), r"np\.moveaxis\(x, -1, 1\)"), ((6, 5, 5, 4), "np.moveaxis")],
)
def test_channels_last_arrays_are_refused_at_load_time(tmp_path, shape, fix):
    """(N, H, W, C) arrays would be read as (N, C, H, W): H channels of W x C images. Refused in one
    line that says how to save them; (N, C, H, W) and (N, H, W) of the same pixels load."""
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "last.npz", train=x, test=x)
    with pytest.raises(
        DataError, match=rf"looks channels-last \(N, H, W, C\) = {re.escape(str(shape))}.*save {fix}"
    ) as e:
        load_dataset(f"npz:{tmp_path / 'last.npz'}")
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "first.npz", train=np.moveaxis(x, -1, 1), test=np.moveaxis(x, -1, 1))
    first = load_dataset(f"npz:{tmp_path / 'first.npz'}")
    assert first.image_shape == (shape[3], shape[1], shape[2])
    # as a single .npy too
    np.save(tmp_path / "last.npy", x)
    with pytest.raises(DataError, match="channels-last"):
        load_dataset(f"npz:{tmp_path / 'last.npy'}")


def test_channels_last_is_refused_by_train_before_anything_is_written(tmp_path):
    from cli_helpers import assert_one_line_error, invoke

    x = np.random.default_rng(0).integers(0, 256, (30, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "last.npz", train=x, test=x[:5])
    result = invoke(
        "train",
        "--dataset",
        f"npz:{tmp_path / 'last.npz'}",
        "--network",
        "conv",
        "--epochs",
        1,
        "--out",
        tmp_path / "run",
    )
    assert_one_line_error(result, "looks channels-last")
    assert not (tmp_path / "run").exists()


def test_user_file_missing(tmp_path):
    with pytest.raises(DataError, match=r"user data file .*nothere\.npz not found"):
        load_dataset(f"npz:{tmp_path / 'nothere.npz'}")
    with pytest.raises(DataError, match=r"needs a path"):
        load_dataset("npz:")


# --------------------------------------------------------------------------- subsets and presence (no loading)
def test_first_refuses_more_images_than_the_split_holds():
    from iwae.errors import ConfigError

    x = torch.arange(12.0).reshape(6, 2)
    splits = Splits("toy", x, x[:2], x[:3], False)
    assert torch.equal(splits.first("train", 4), x[:4])
    assert splits.first("train", None) is x and torch.equal(splits.first("train", 6), x)
    with pytest.raises(ConfigError, match="train_subset 7 is more than the 6 training images of toy") as e:
        splits.first("train", 7, "train_subset")
    assert e.value.fields == ("train_subset",)
    with pytest.raises(ConfigError, match="test_subset 4 is more than the 3 test images"):
        splits.first("test", 4, "test_subset")
    with pytest.raises(ConfigError, match="must be >= 1"):
        splits.first("test", 0, "test_subset")


def test_missing_files_looks_without_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("missing_files must not load"))
    assert data.missing_files("mnist", tmp_path) == list(MNIST_FILES)
    assert data.missing_files("omniglot", tmp_path) == ["chardata.mat"]
    assert data.missing_files("binarized-mnist", tmp_path) == [
        "binarized_mnist_train.amat",
        "binarized_mnist_valid.amat",
        "binarized_mnist_test.amat",
    ]
    (tmp_path / "mnist").mkdir()
    for name in MNIST_FILES[:3]:
        (tmp_path / "mnist" / name).write_bytes(b"")  # present by name; its checksum is load_dataset's business
    assert data.missing_files("mnist", tmp_path) == [MNIST_FILES[3]]
    (tmp_path / "omniglot.mat").write_bytes(b"")  # either Omniglot file name, at the top level
    assert data.missing_files("omniglot", tmp_path) == []
    (tmp_path / "binarized_mnist.npz").write_bytes(b"")
    assert data.missing_files("binarized-mnist", tmp_path) == []
    assert data.missing_files(f"npz:{tmp_path / 'none.npz'}") == [str(tmp_path / "none.npz")]
    with pytest.raises(DataError, match="unknown dataset"):
        data.missing_files("no-such-data")
    with pytest.raises(DataError, match="does not exist"):
        data.missing_files("mnist", tmp_path / "nowhere")


@pytest.mark.data  # reads the shared data through shared()
def test_missing_files_of_the_shared_data():
    root = shared("mnist").parent
    assert data.missing_files("mnist", root) == []
    assert data.missing_files("fashion_mnist", root) == ([] if (root / "fashion_mnist").is_dir() else list(MNIST_FILES))
