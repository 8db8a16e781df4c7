"""An objective with its sample layout and estimator: the training step's settings, checked by name."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import ESTIMATOR_OBJECTIVES, OBJECTIVES

__all__ = ["ObjectiveSpec"]


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
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}")
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
        supported = ESTIMATOR_OBJECTIVES.get(self.estimator)
        if supported is None:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATOR_OBJECTIVES)}")
        if self.name not in supported:
            usable = [name for name, objectives in ESTIMATOR_OBJECTIVES.items() if self.name in objectives]
            raise ValueError(
                f"the {self.estimator} estimator is defined for the {' and '.join(supported)} "
                f"objective only, not {self.name}; use the {_or(usable)} estimator"
            )

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``MIWAE(8,8)``, ``IWAE(k=50)``, ``CIWAE(beta=0.5,k=5)``."""
        if self.name in ("miwae", "piwae"):
            return f"{self.name.upper()}({self.m},{self.k // self.m})"
        if self.name == "ciwae":
            return f"CIWAE(beta={self.beta:g},k={self.k})"
        return f"{'VAE' if self.name == 'vae' else 'IWAE'}(k={self.k})"


def _or(names: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
