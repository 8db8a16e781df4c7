"""The names a setting may take, in one place that loads no PyTorch.

``iwae train --help`` lists these choices, and :mod:`iwae.config` checks settings against them, without
importing the code behind them; each registry (:mod:`iwae.objectives`, :mod:`iwae.estimators`,
:mod:`iwae.models`, ...) re-exports its names from here, and the tests check that every name has its
implementation (``tests/test_choices.py``).
"""

from __future__ import annotations

from .errors import DataError

__all__ = [
    "OBJECTIVES",
    "ESTIMATORS",
    "ESTIMATOR_OBJECTIVES",
    "MODELS",
    "NETWORKS",
    "PRIORS",
    "LIKELIHOODS",
    "PRECISIONS",
    "COMPILE_MODES",
    "SCHEDULES",
    "OPTIMIZERS",
    "DATASETS",
    "BINARIZATIONS",
    "PLOT_KINDS",
    "resolve_binarize",
]

OBJECTIVES = ("vae", "iwae", "miwae", "ciwae", "piwae")  # the bounds of iwae.objectives

# the encoder's gradient estimators of iwae.estimators, in its table's order, with the objectives each
# is defined for (the rest of each entry, its surrogate and cost, lives in estimators.ESTIMATOR_TABLE)
ESTIMATOR_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "reparam": OBJECTIVES,
    "stl": OBJECTIVES,
    "dreg": OBJECTIVES,
    "rws": ("iwae",),
    "rws-dreg": ("iwae",),
}
ESTIMATORS = tuple(ESTIMATOR_OBJECTIVES)  # the CLI's choices

MODELS: tuple[str, ...] = ("vae", "hvae")
"""The model families: ``vae``, a chain of stochastic layers (Burda et al.), and ``hvae``, the two-level model
of Tomczak & Welling with coupled q(z_1 | x, z_2) and p(x | z_1, z_2) (:mod:`iwae.models.hvae`)."""
NETWORKS: tuple[str, ...] = ("mlp", "gated", "conv")
"""The built-in networks: Burda et al.'s tanh MLPs, Tomczak & Welling's GatedDense, a small conv net."""
PRIORS = ("normal", "mog", "vamp")  # p(z_L): N(0, I), a mixture of Gaussians, the VampPrior
LIKELIHOODS = ("bernoulli", "gaussian", "logistic256")  # p(x | z_1)
PRECISIONS = ("32", "bf16-mixed")  # the training step's precision (iwae.precision)
# how the training step runs (iwae.compiled): eager; the whole step one compiled program (a CUDA graph on
# CUDA); or torch.compile of its forward pass only, in torch.compile's default or reduce-overhead mode
COMPILE_MODES = ("none", "step", "default", "reduce-overhead")
SCHEDULES = ("paper", "constant")  # learning-rate schedules (iwae.train.schedule)
# Adam, or Adam on each parameter's gradient divided by its norm (Tomczak & Welling's AdamNormGrad; iwae.train.loop)
OPTIMIZERS = ("adam", "adam-normgrad")

DATASETS: tuple[str, ...] = (
    "mnist",
    "binarized-mnist",
    "fashion-mnist",
    "omniglot",
    "mnist-vamp",
    "caltech101",
    "frey",
)
"""Names accepted by :func:`iwae.data.load_dataset`, besides ``"npz:PATH"``."""
BINARIZATIONS: tuple[str, ...] = ("dynamic", "static", "none")
"""The ``binarize`` modes of :func:`iwae.data.load_dataset` (see :mod:`iwae.data`)."""
PLOT_KINDS = ("samples", "reconstructions", "latent", "activity", "curves")  # what iwae plot draws (iwae.run_figures)


def resolve_binarize(binarize: str, likelihood: str = "bernoulli") -> str:
    """The binarization mode of ``binarize`` (``auto`` or one of :data:`BINARIZATIONS`): ``auto`` is
    ``dynamic`` for the Bernoulli likelihood (the papers' protocol) and ``none`` for the others."""
    if binarize == "auto":
        return "dynamic" if likelihood == "bernoulli" else "none"
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown binarize mode {binarize!r}; choose auto or one of {', '.join(BINARIZATIONS)}")
    return binarize
