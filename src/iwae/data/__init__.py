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
``mnist-vamp``, ``caltech101``, ``frey``
    the data sets of Tomczak & Welling's VampPrior paper (AISTATS 2018), read as its code reads them:
    MNIST split 50,000 / 10,000 / 10,000 with the validation and test images binarized once by the
    code's generator; Marlin's Caltech 101 Silhouettes (28x28, split 1, binary); Roweis's Frey faces
    (28x20 grey levels, split 1,565 / 200 / 200). See :mod:`.vampprior`.
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
   ``fashion_mnist/``, ``binarized_mnist/``, ``omniglot/``, ``caltech101/``,
   ``frey/``; ``mnist-vamp`` reads ``mnist/``), or the files
   directly inside it;
2. the user cache ``default_cache_dir()/<subfolder>/``;
3. if ``download`` is true, a download from the official source into the cache
   (written to a temporary file in the same folder, checked, then renamed).

Every file is checked against a known hash (SHA-256; per-array SHA-256 for
``binarized_mnist.npz``; the git blob id for ``chardata.mat``; the SHA-256 of
the images for ``frey_rawface.mat``, whose file hash is not published) before
it is used; any problem raises :class:`DataError` with a one-line message that says
what to do.

The package: :mod:`.registry` (the data sets' names, files, checksums, sources, seeds), :mod:`.files`
(finding, checking and downloading files), :mod:`.benchmarks` (reading MNIST, binarized MNIST,
OMNIGLOT), :mod:`.vampprior` (the VampPrior paper's MNIST split, Caltech 101, Frey faces),
:mod:`.arrays` (user arrays), :mod:`.transforms` (binarize, dequantize), :mod:`.splits` (:class:`Splits`)
and :mod:`.load` (:func:`load_dataset`, :func:`missing_files`).
"""

from ..errors import DataError
from .files import default_cache_dir
from .load import load_dataset, missing_files
from .registry import (
    BINARIZATIONS,
    DATASETS,
    TEST_BINARIZATION_SEED,
    TEST_DEQUANTIZATION_SEED,
    TRAIN_BINARIZATION_SEED,
    VALID_BINARIZATION_SEED,
    VALID_DEQUANTIZATION_SEED,
    resolve_binarize,
)
from .splits import Splits
from .transforms import binarize, dequantize, fixed_binarization, fixed_dequantization

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
