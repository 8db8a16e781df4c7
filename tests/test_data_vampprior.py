"""The VampPrior paper's data sets (iwae.data.vampprior) on small synthetic files of the real formats: MNIST
IDX files split 50,000 / 10,000 as the paper's code does (mnist-vamp), Marlin's Caltech 101 Silhouettes MAT v5
file (column-major, flipped), Roweis's frey_rawface.mat (variable ff, 560 x N uint8, 28 x 20 faces). Upright
images, splits, the code's binarization, checksums refused when wrong (the expected digests are substituted
through the registry, as for a file of another size), offline refusals that name the file, downloads that keep
nothing wrong. The real files are not used: no test touches the network."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from test_data import fake_mnist

from iwae import data
from iwae.data import DataError, load_dataset, missing_files, registry
from iwae.data.vampprior import _frey_digest


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, no user cache, no IWAE_DATA_DIR from the environment, no download source."""
    monkeypatch.setenv("IWAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("IWAE_DATA_DIR", raising=False)
    for name in ("MNIST_URLS", "CALTECH101_URLS", "FREY_URLS"):
        monkeypatch.setattr(registry, name, ())

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path / "cache"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- mnist-vamp
def test_mnist_vamp_split_and_the_code_s_binarization(tmp_path, monkeypatch):
    """The first N - 10,000 training images train (grey, dynamic), the rest validate; validation then test
    are binarized by one RandomState(777).binomial stream, as the VampPrior code does; labels follow."""
    arrays = fake_mnist(tmp_path / "mnist", monkeypatch, n_train=30, n_test=10)
    monkeypatch.setattr(registry, "MNIST_VAMP_N_VALID", 8)
    s = load_dataset("mnist-vamp", tmp_path, download=False)
    x = arrays["train-images-idx3-ubyte.gz"].reshape(30, 784).astype(np.float32) / np.float32(255)
    t = arrays["t10k-images-idx3-ubyte.gz"].reshape(10, 784).astype(np.float32) / np.float32(255)
    assert (s.name, s.dynamic, s.image_shape, s.binarization) == ("mnist-vamp", True, (28, 28), "dynamic")
    np.testing.assert_array_equal(s.train.numpy(), x[:22])
    rng = np.random.RandomState(777)  # the code: np.random.seed(777); binomial(1, x_val); binomial(1, x_test)
    np.testing.assert_array_equal(s.valid.numpy(), rng.binomial(1, x[22:]))
    np.testing.assert_array_equal(s.test.numpy(), rng.binomial(1, t))
    np.testing.assert_array_equal(s.valid_labels.numpy(), arrays["train-labels-idx1-ubyte.gz"][22:])
    # negative controls: another seed, or the test binarized first, gives other images
    assert not np.array_equal(s.valid.numpy(), np.random.RandomState(778).binomial(1, x[22:]))
    assert not np.array_equal(s.test.numpy(), np.random.RandomState(777).binomial(1, t))
    # grey levels without binarization; burda's mnist split of the same files differs
    grey = load_dataset("mnist-vamp", tmp_path, download=False, binarize="none")
    np.testing.assert_array_equal(grey.valid.numpy(), x[22:])
    assert load_dataset("mnist", tmp_path, download=False).train.shape[0] == 25


def test_mnist_vamp_reads_the_mnist_folder_and_says_what_is_missing(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "mnist", monkeypatch)
    assert missing_files("mnist-vamp", tmp_path) == []
    assert missing_files("mnist-vamp", tmp_path / "mnist" / "..") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert missing_files("mnist-vamp", empty) == list(registry.MNIST_FILES)
    with pytest.raises(DataError, match=r"MNIST file train-images-idx3-ubyte\.gz not found in .*download is disabled"):
        load_dataset("mnist-vamp", empty, download=False)


# ----------------------------------------------------------------------------- Caltech 101 Silhouettes
def write_caltech(path: Path, sizes=(6, 4, 5), monkeypatch=None, **extra) -> dict[str, np.ndarray]:
    """Upright 28 x 28 binary images stored as Marlin's file stores them: each row one image in column-major
    (Fortran) order, uint8; the first training image has its top row set, nothing else."""
    rng = np.random.default_rng(5)
    images = {}
    for key, n in zip(("train_data", "val_data", "test_data"), sizes):
        imgs = (rng.random((n, 28, 28)) < 0.3).astype(np.uint8)
        images[key] = imgs
    images["train_data"][0] = 0
    images["train_data"][0, 0, :] = 1
    stored = {k: np.stack([im.ravel(order="F") for im in v]) for k, v in images.items()}
    labels = {k.replace("data", "labels"): np.ones((len(v), 1)) for k, v in images.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {**stored, **labels, **extra})
    if monkeypatch is not None:
        monkeypatch.setattr(registry, "CALTECH101_SHA256", sha256(path))
    return {k: v.reshape(len(v), 784) for k, v in images.items()}


def test_caltech101_upright_flipped_and_split(tmp_path, monkeypatch):
    images = write_caltech(tmp_path / "caltech101" / registry.CALTECH101_FILE, monkeypatch=monkeypatch)
    s = load_dataset("caltech101", tmp_path, download=False)
    assert (s.name, s.dynamic, s.image_shape, s.train_labels) == ("caltech101", False, (28, 28), None)
    assert [len(x) for x in (s.train, s.valid, s.test)] == [6, 4, 5]
    # the paper's code flips the silhouettes: x = 1 - stored
    for got, key in ((s.train, "train_data"), (s.valid, "val_data"), (s.test, "test_data")):
        np.testing.assert_array_equal(got.numpy(), 1 - images[key].astype(np.float32))
    # upright: the top row (flipped to 0) comes back on top
    first = s.train[0].reshape(28, 28)
    assert first[0].eq(0).all() and first[1:].eq(1).all()
    # negative control: the stored row read in C order lies on its side (the top row becomes the left column)
    stored = images["train_data"][0].reshape(28, 28).ravel(order="F").reshape(28, 28)
    assert (stored[:, 0] == 1).all() and not (stored[0] == 1).all()
    # binary data: every binarize mode gives the same images
    np.testing.assert_array_equal(load_dataset("caltech101", tmp_path, download=False, binarize="dynamic").test, s.test)


def test_caltech101_refusals(tmp_path, monkeypatch):
    path = tmp_path / "caltech101" / registry.CALTECH101_FILE
    write_caltech(path)  # the registry keeps the real file's digest: this file is not it
    with pytest.raises(
        DataError,
        match=rf"Caltech 101 Silhouettes file .*split1\.mat fails its checksum: expected sha256 "
        rf"{registry.CALTECH101_SHA256}, got {sha256(path)}",
    ):
        load_dataset("caltech101", tmp_path, download=False)
    path.unlink()
    write_caltech(path, monkeypatch=monkeypatch, extra_var=np.zeros(1))
    assert load_dataset("caltech101", tmp_path, download=False).train.shape == (6, 784)
    scipy.io.savemat(path, {"train_data": np.zeros((3, 784), np.uint8), "val_data": np.zeros((3, 784), np.uint8)})
    monkeypatch.setattr(registry, "CALTECH101_SHA256", sha256(path))
    with pytest.raises(DataError, match=r"has no variable 'test_data'"):
        load_dataset("caltech101", tmp_path, download=False)
    grey = np.full((3, 784), 7, np.uint8)
    scipy.io.savemat(path, {"train_data": grey, "val_data": grey, "test_data": grey})
    monkeypatch.setattr(registry, "CALTECH101_SHA256", sha256(path))
    with pytest.raises(DataError, match=r"variable 'train_data' has values other than 0 and 1"):
        load_dataset("caltech101", tmp_path, download=False)
    with pytest.raises(DataError, match=r"caltech101 is binary: dequantize applies to 8-bit grey levels"):
        load_dataset("caltech101", tmp_path, download=False, binarize="none", dequantize=True)
    path.unlink()
    assert missing_files("caltech101", tmp_path) == [registry.CALTECH101_FILE]
    with pytest.raises(
        DataError,
        match=r"Caltech 101 Silhouettes file caltech101_silhouettes_28_split1\.mat not found in .* download is "
        r"disabled; pass --data-dir DIR or set IWAE_DATA_DIR",
    ):
        load_dataset("caltech101", tmp_path, download=False)
    with pytest.raises(DataError, match=r"split1\.mat not found in .* download failed \(no download URL"):
        load_dataset("caltech101", tmp_path)


def test_caltech101_download_keeps_only_a_verified_file(tmp_path, monkeypatch, isolated):
    mirror = tmp_path / "mirror"
    write_caltech(mirror / registry.CALTECH101_FILE, monkeypatch=monkeypatch)
    monkeypatch.setattr(registry, "CALTECH101_URLS", (mirror.as_uri() + "/",))
    assert load_dataset("caltech101").valid.shape == (4, 784)  # from the cache, downloaded and verified
    assert [p.name for p in (isolated / "caltech101").iterdir()] == [registry.CALTECH101_FILE]
    (isolated / "caltech101" / registry.CALTECH101_FILE).unlink()
    monkeypatch.setattr(registry, "CALTECH101_SHA256", "0" * 64)
    with pytest.raises(DataError, match=r"downloaded Caltech 101 Silhouettes file .* fails its checksum .*nothing"):
        load_dataset("caltech101")
    assert list((isolated / "caltech101").iterdir()) == []


# ----------------------------------------------------------------------------- Frey faces
def write_frey(path: Path, n: int = 20, monkeypatch=None) -> np.ndarray:
    """Faces of 28 rows x 20 columns stored as Roweis's file: ff (560, N) uint8, one face per column, each
    column the face's rows one after another; face 0 has its top row white (255) and the rest black (0)."""
    rng = np.random.default_rng(7)
    faces = rng.integers(8, 239, (n, 28, 20), dtype=np.uint8)
    faces[0] = 0
    faces[0, 0, :] = 255
    ff = faces.reshape(n, 560).T
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"ff": ff})
    if monkeypatch is not None:
        monkeypatch.setattr(
            registry, "FREY_CONTENT_SHA256", hashlib.sha256(faces.reshape(n, 560).tobytes()).hexdigest()
        )
        monkeypatch.setattr(registry, "FREY_SPLIT", (12, 4, 4))
    return faces


def test_frey_faces_upright_28x20_split_as_the_code(tmp_path, monkeypatch):
    faces = write_frey(tmp_path / "frey" / registry.FREY_FILE, monkeypatch=monkeypatch)
    s = load_dataset("frey", tmp_path, download=False, binarize="none")
    assert (s.name, s.dim, s.image_shape, s.dynamic, s.binarization) == ("frey", 560, (28, 20), False, "none")
    perm = np.random.RandomState(registry.FREY_PERMUTATION_SEED).permutation(20)
    grey = faces.reshape(20, 560)[perm].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(s.train.numpy(), grey[:12])
    np.testing.assert_array_equal(s.valid.numpy(), grey[12:16])
    np.testing.assert_array_equal(s.test.numpy(), grey[16:])
    where = int(np.flatnonzero(perm == 0)[0])  # face 0, its top row white: upright as 28 rows of 20
    face = np.concatenate([s.train, s.valid, s.test])[where].reshape(28, 20)
    assert (face[0] == 1).all() and (face[1:] == 0).all()
    assert not (face.T.reshape(28, 20)[0] == 1).all()  # negative control: read transposed it is not
    # grey levels k/255 for the discretized logistic; dynamic binarization for a Bernoulli likelihood
    assert load_dataset("frey", tmp_path, download=False, binarize="dynamic").dynamic
    assert load_dataset("frey", tmp_path, download=False, binarize="none", dequantize=True).dequantize


def test_frey_content_digest_is_of_the_faces_not_the_file(tmp_path):
    """The same faces in two MAT files of different bytes have one digest; another face changes it."""
    a, b = tmp_path / "a.mat", tmp_path / "b.mat"
    faces = write_frey(a)
    scipy.io.savemat(b, {"ff": faces.reshape(20, 560).T, "note": np.zeros(3)}, do_compression=True)
    assert sha256(a) != sha256(b)
    expected = hashlib.sha256(np.ascontiguousarray(faces.reshape(20, 560)).tobytes()).hexdigest()
    assert _frey_digest(a) == _frey_digest(b) == expected
    changed = faces.copy()
    changed[3, 5, 5] ^= 1
    scipy.io.savemat(b, {"ff": changed.reshape(20, 560).T})
    assert _frey_digest(b) != expected


def test_frey_refusals(tmp_path, monkeypatch):
    path = tmp_path / "frey" / registry.FREY_FILE
    write_frey(path)  # the registry keeps the real faces' digest
    with pytest.raises(
        DataError,
        match=rf"Frey faces file .*frey_rawface\.mat fails its checksum: expected sha256 of the faces "
        rf"\(ff\.T, uint8, C order\) {registry.FREY_CONTENT_SHA256}, got",
    ):
        load_dataset("frey", tmp_path, download=False, binarize="none")
    write_frey(path, n=10, monkeypatch=monkeypatch)
    monkeypatch.setattr(registry, "FREY_SPLIT", (12, 4, 4))
    with pytest.raises(DataError, match=r"holds 10 faces, fewer than the 20 of the split 12 / 4 / 4"):
        load_dataset("frey", tmp_path, download=False, binarize="none")
    scipy.io.savemat(path, {"ff": np.zeros((560, 5), np.float64)})
    with pytest.raises(DataError, match=r"variable 'ff' has dtype float64 and shape \(560, 5\); expected uint8"):
        load_dataset("frey", tmp_path, download=False, binarize="none")
    scipy.io.savemat(path, {"faces": np.zeros((560, 5), np.uint8)})
    with pytest.raises(DataError, match=r"has no variable 'ff'; it is not Roweis's frey_rawface\.mat"):
        load_dataset("frey", tmp_path, download=False, binarize="none")
    path.write_bytes(b"\x80\x04 a pickle is never read")
    with pytest.raises(DataError, match=r"frey_rawface\.mat is corrupt or truncated, or not a MATLAB file"):
        load_dataset("frey", tmp_path, download=False, binarize="none")
    path.unlink()
    assert missing_files("frey", tmp_path) == [registry.FREY_FILE]
    with pytest.raises(DataError, match=r"Frey faces file frey_rawface\.mat not found in .*download is disabled"):
        load_dataset("frey", tmp_path, download=False)


def test_frey_download_verifies_the_content_before_keeping_it(tmp_path, monkeypatch, isolated):
    mirror = tmp_path / "mirror"
    write_frey(mirror / registry.FREY_FILE, monkeypatch=monkeypatch)
    monkeypatch.setattr(registry, "FREY_URLS", (mirror.as_uri() + "/",))
    assert load_dataset("frey", binarize="none").test.shape == (4, 560)
    assert [p.name for p in (isolated / "frey").iterdir()] == [registry.FREY_FILE]
    (isolated / "frey" / registry.FREY_FILE).unlink()
    monkeypatch.setattr(registry, "FREY_CONTENT_SHA256", "0" * 64)
    with pytest.raises(DataError, match=r"downloaded Frey faces file frey_rawface\.mat fails its checksum"):
        load_dataset("frey", binarize="none")
    (mirror / registry.FREY_FILE).write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"gave a file that cannot be read \(frey_rawface\.mat is corrupt"):
        load_dataset("frey", binarize="none")
    assert list((isolated / "frey").iterdir()) == []  # nothing half-written, nothing wrong kept


def test_names_and_subfolders():
    for name in ("mnist-vamp", "caltech101", "frey"):
        assert name in data.DATASETS
    assert registry._SUBDIRS["mnist-vamp"] == "mnist"  # the same IDX files as mnist
