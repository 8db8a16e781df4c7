"""Gradient estimators: which surrogate each set of parameters differentiates for an objective.

:mod:`iwae.objectives` defines the bounds; this module turns a bound into a gradient. The default,
``reparam``, differentiates the bound itself through reparameterised samples. PIWAE routes two
objectives to two parameter sets. A training step is

    log_w = model.log_weights(x, k)                 # (k, B)
    terms = gradient_terms(model, log_w, spec)      # [(surrogate, params or None), ...]
    for surrogate, params in terms: (-surrogate.sum()).backward(inputs=params, ...)

and the value it reports is ``terms.bound``, the true bound, never a surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import objectives

__all__ = ["ObjectiveSpec", "GradientTerms", "gradient_terms", "ESTIMATORS"]

ESTIMATORS = ("reparam",)


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective with its sample layout.

    ``k`` is always the total number of samples per example; for ``miwae`` and ``piwae`` they
    form ``m`` groups of ``k // m`` (so ``k=64, m=8`` is MIWAE(8, 8)).
    """

    name: str = "iwae"  # one of objectives.OBJECTIVES
    k: int = 5  # total samples per example
    m: int = 1  # groups, for miwae and piwae
    beta: float = 0.5  # ELBO weight, for ciwae
    estimator: str = "reparam"  # one of ESTIMATORS

    def __post_init__(self) -> None:
        if self.name not in objectives.OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; choose one of {', '.join(objectives.OBJECTIVES)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.m != 1 and self.name not in ("miwae", "piwae"):
            raise ValueError(f"m (groups of samples) applies to miwae and piwae only, not {self.name}")
        if self.k % self.m:
            raise ValueError(f"m = {self.m} must divide the total number of samples k = {self.k}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``MIWAE(8,8)``, ``IWAE(k=50)``, ``CIWAE(beta=0.5,k=5)``."""
        if self.name in ("miwae", "piwae"):
            return f"{self.name.upper()}({self.m},{self.k // self.m})"
        if self.name == "ciwae":
            return f"CIWAE(beta={self.beta:g},k={self.k})"
        return f"{'VAE' if self.name == 'vae' else 'IWAE'}(k={self.k})"


@dataclass
class GradientTerms:
    """``bound``: the true bound per example ``(B,)``, for reporting. ``terms``: pairs of a surrogate
    ``(B,)`` to ascend and the parameters it may update (``None`` = all)."""

    bound: torch.Tensor
    terms: list[tuple[torch.Tensor, list[torch.nn.Parameter] | None]]


def gradient_terms(model: torch.nn.Module, log_w: torch.Tensor, spec: ObjectiveSpec) -> GradientTerms:
    """The surrogates whose gradients train ``model`` on ``spec``'s objective.

    Args:
        model: a model with ``encoder_parameters()`` and ``decoder_parameters()`` (for PIWAE).
        log_w: log-weights of shape ``(k, B)`` from ``model.log_weights(x, spec.k)``.
        spec: the objective.
    """
    k, b = log_w.shape
    if k != spec.k:
        raise ValueError(f"log_w has {k} samples per example but the objective expects k = {spec.k}")
    if spec.name == "vae":
        bound = objectives.elbo(log_w)
    elif spec.name == "iwae":
        bound = objectives.iwae(log_w)
    elif spec.name == "ciwae":
        bound = objectives.ciwae(log_w, spec.beta)
    elif spec.name == "miwae":
        bound = objectives.miwae(log_w.view(spec.m, k // spec.m, b))
    else:  # piwae: the decoder ascends IWAE(M*K), the encoder MIWAE(M, K), on the same samples
        decoder_objective, encoder_objective = objectives.piwae(log_w.view(spec.m, k // spec.m, b))
        return GradientTerms(
            decoder_objective.detach(),
            [(decoder_objective, model.decoder_parameters()), (encoder_objective, model.encoder_parameters())],
        )
    return GradientTerms(bound.detach(), [(bound, None)])


def backward(result: GradientTerms) -> None:
    """Accumulates the gradient of the summed surrogates (gradients summed over the minibatch,
    as in Burda et al.'s code) into ``.grad``; the loss is the negated surrogate."""
    for i, (surrogate, params) in enumerate(result.terms):
        last = i == len(result.terms) - 1
        (-surrogate.sum()).backward(inputs=params, retain_graph=not last)
