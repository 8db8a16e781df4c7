"""The data sets iwae knows: their names, files, checksums, download sources, splits and fixed seeds.

The loaders read the constants that tests change (URLs, hashes, split sizes) as ``registry.NAME``, so
that setting one here takes effect.
"""

from __future__ import annotations

from ..choices import BINARIZATIONS, DATASETS, resolve_binarize

__all__ = [
    "DATASETS",
    "BINARIZATIONS",
    "resolve_binarize",
    "TEST_BINARIZATION_SEED",
    "VALID_BINARIZATION_SEED",
    "TRAIN_BINARIZATION_SEED",
    "VALID_DEQUANTIZATION_SEED",
    "TEST_DEQUANTIZATION_SEED",
]

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
#: mnist-vamp (Tomczak & Welling's dynamic MNIST): training images 50,000..59,999 held out for validation.
MNIST_VAMP_N_VALID: int = 10000
#: mnist-vamp: seed of the legacy ``np.random.RandomState`` whose ``binomial`` draws binarize the validation,
#: then the test images, once (the VampPrior code's ``np.random.seed(777)``).
MNIST_VAMP_BINARIZATION_SEED: int = 777
#: Frey faces: train / validation / test images, the VampPrior code's split of the 1,965 faces.
FREY_SPLIT: tuple[int, int, int] = (1565, 200, 200)
#: Frey faces: seed of ``np.random.RandomState`` that shuffles the faces once before the split (the
#: VampPrior code shuffles with numpy's unseeded global generator, so its split changes from run to run).
FREY_PERMUTATION_SEED: int = 14
#: Frey faces: height and width of an image (28 rows of 20 pixels).
FREY_IMAGE_SHAPE: tuple[int, int] = (28, 20)
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
BINARIZED_MNIST_URLS: tuple[str, ...] = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",)
OMNIGLOT_URLS: tuple[str, ...] = ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",)
CALTECH101_URLS: tuple[str, ...] = ("https://people.cs.umass.edu/~marlin/data/",)  # Marlin's data page
FREY_URLS: tuple[str, ...] = ("https://cs.nyu.edu/~roweis/data/",)  # Roweis's data page

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

#: Marlin's Caltech 101 Silhouettes, 28x28, split 1 (MAT v5): 872,124 bytes.
CALTECH101_FILE = "caltech101_silhouettes_28_split1.mat"
CALTECH101_SHA256: str = "eb6735e8d84b1850fabc5590124aab1755e90c9fd28123585324398405e1e42a"
#: Roweis's Frey faces (MAT, variable ``ff``, uint8 560 x 1,965). The file's own hash is not published;
#: this is the SHA-256 of its images, ``ff.T`` as uint8 (1965, 560) in C order (the content, not the container).
FREY_FILE = "frey_rawface.mat"
FREY_CONTENT_SHA256: str = "2438ba4f0d2a6bd8bac43de756141eaa33c8d248dd613d464bdb1210d9b7af78"

_SUBDIRS = {
    "mnist": "mnist",
    "fashion-mnist": "fashion_mnist",
    "binarized-mnist": "binarized_mnist",
    "omniglot": "omniglot",
    "mnist-vamp": "mnist",  # the MNIST files, split as Tomczak & Welling's code
    "caltech101": "caltech101",
    "frey": "frey",
}
_IMAGE_SIDE = 28
_IMAGE_DIM = _IMAGE_SIDE * _IMAGE_SIDE

_AMAT_FILES = {s: f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}
