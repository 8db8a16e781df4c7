"""The points of Rainforth et al.'s (M, K) grid and the distinct training runs they are.

MIWAE(M, K) and PIWAE(M, K) for every (M, K) with M * K = total, CIWAE(beta) at total samples
(:func:`grid_points`); several points are the same training run and are trained once
(:func:`canonical_run`). The sweep that trains and evaluates them is :mod:`iwae.grid`.

References:
    [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh.
        Tighter Variational Bounds are Not Necessarily Better. ICML 2018, arXiv:1802.04537.
"""

from __future__ import annotations

from dataclasses import dataclass

from .train import TrainConfig

__all__ = [
    "GridPoint",
    "Run",
    "canonical_run",
    "divisors",
    "grid_points",
    "distinct_runs",
    "points_of",
    "section_points",
    "DEFAULT_TOTAL",
    "DEFAULT_BETAS",
    "OBJECTIVES",
]

DEFAULT_TOTAL = 64  # M * K, samples per example for every objective
DEFAULT_BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # CIWAE's ELBO weights
OBJECTIVES = ("miwae", "piwae", "ciwae")  # the objectives of the grid


@dataclass(frozen=True)
class GridPoint:
    """One point of the study: ``objective`` with ``m`` groups of ``k`` samples (the paper's (M, K)),
    and ``beta`` for CIWAE (else None). CIWAE points have m = 1, k = total."""

    objective: str  # miwae, piwae or ciwae
    m: int
    k: int
    beta: float | None = None

    @property
    def total(self) -> int:
        return self.m * self.k

    @property
    def label(self) -> str:
        """``MIWAE(8,8)``, ``CIWAE(beta=0.5)``."""
        if self.objective == "ciwae":
            return f"CIWAE(beta={self.beta:g})"
        return f"{self.objective.upper()}({self.m},{self.k})"


@dataclass(frozen=True)
class Run:
    """A distinct training run, in :class:`~iwae.train.TrainConfig`'s terms: ``k`` is the total
    number of samples and ``m`` the groups (miwae and piwae only); ``beta`` for ciwae only."""

    objective: str  # vae, iwae, miwae, piwae or ciwae
    k: int
    m: int = 1
    beta: float | None = None

    @property
    def name(self) -> str:
        """The run directory's name: ``iwae-k64``, ``vae-k64``, ``miwae-m8-k8``, ``ciwae-beta0.5-k64``."""
        if self.objective in ("miwae", "piwae"):
            return f"{self.objective}-m{self.m}-k{self.k // self.m}"
        if self.objective == "ciwae":
            return f"ciwae-beta{self.beta:g}-k{self.k}"
        return f"{self.objective}-k{self.k}"

    def config(self, **protocol) -> TrainConfig:
        beta = {} if self.beta is None else {"beta": self.beta}
        return TrainConfig(objective=self.objective, k=self.k, m=self.m, **beta, **protocol)

    @classmethod
    def of_config(cls, config: dict) -> Run:
        """The canonical run of a run's settings (a TrainConfig dict): ``miwae`` with m = 1 is
        ``iwae``, with m = k the ``vae``, and so on (:func:`canonical_run`); m and beta count only
        where they mean something."""
        objective, k = config["objective"], int(config["k"])
        if objective in ("miwae", "piwae"):
            m = int(config.get("m", 1))
            return canonical_run(GridPoint(objective, m, k // m))
        if objective == "ciwae":
            return canonical_run(GridPoint("ciwae", 1, k, float(config.get("beta", 0.5))))
        return cls("vae", 1) if k == 1 and objective == "iwae" else cls(objective, k)


def canonical_run(point: GridPoint) -> Run:
    """The training run a grid point is: identical objectives map to one run.

    MIWAE(1, K) = PIWAE(1, K) = CIWAE(0) = IWAE(k=K); MIWAE(M, 1) = CIWAE(1) = VAE with M samples
    (the mean of M one-sample ELBOs); with one sample every objective is the VAE. PIWAE(M, 1) for
    M > 1 stays distinct: its decoder is trained on IWAE(M).
    """
    total = point.total
    if total == 1:
        return Run("vae", 1)
    if point.objective == "ciwae":
        if point.beta == 0:
            return Run("iwae", total)
        if point.beta == 1:
            return Run("vae", total)
        return Run("ciwae", total, beta=float(point.beta))
    if point.m == 1:
        return Run("iwae", total)
    if point.objective == "miwae" and point.k == 1:
        return Run("vae", total)
    return Run(point.objective, total, m=point.m)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def grid_points(
    total: int = DEFAULT_TOTAL, betas=DEFAULT_BETAS, ms: list[int] | None = None, objectives=OBJECTIVES
) -> list[GridPoint]:
    """MIWAE and PIWAE at (M, total / M) for every M in ``ms`` (default: all divisors of ``total``,
    ascending), then CIWAE at every beta in ``betas``.

    Raises:
        ValueError: total < 1, an M that does not divide total, a beta outside [0, 1], an unknown objective.
    """
    if int(total) != total or total < 1:
        raise ValueError(f"total (M * K) must be an integer >= 1, got {total}")
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"unknown grid objective {', '.join(sorted(unknown))}; choose among {', '.join(OBJECTIVES)}")
    ms = divisors(total) if ms is None else list(ms)
    bad = [m for m in ms if int(m) != m or m < 1 or total % m]
    if bad:
        raise ValueError(
            f"M = {bad[0]} does not divide total = {total}; choose among its divisors "
            f"{','.join(map(str, divisors(total)))}"
        )
    betas = list(betas)
    bad = [b for b in betas if not 0.0 <= b <= 1.0]
    if bad:
        raise ValueError(f"beta must lie in [0, 1], got {bad[0]}")
    points = [GridPoint(o, m, total // m) for o in ("miwae", "piwae") if o in objectives for m in ms]
    if "ciwae" in objectives:
        points += [GridPoint("ciwae", 1, total, float(b)) for b in betas]
    if len(set(points)) != len(points):
        raise ValueError("the grid lists a point twice (a repeated M or beta)")
    return points


def distinct_runs(points: list[GridPoint]) -> dict[Run, list[GridPoint]]:
    """Distinct runs, in the order first needed, each with the grid points it serves."""
    runs: dict[Run, list[GridPoint]] = {}
    for p in points:
        runs.setdefault(canonical_run(p), []).append(p)
    return runs


def points_of(config: dict, grid: dict) -> list[dict]:
    """The points of ``grid`` (an experiment's ``grid`` section: total, ms, betas) that the run of
    ``config`` (a TrainConfig dict) serves, in grid order: ``{label, objective, m, k, beta, index}``,
    index being the point's place in :func:`grid_points`."""
    run = Run.of_config(config)
    return [
        {"label": p.label, "objective": p.objective, "m": p.m, "k": p.k, "beta": p.beta, "index": i}
        for i, p in enumerate(section_points(grid))
        if canonical_run(p) == run
    ]


def section_points(grid: dict) -> list[GridPoint]:
    """The points of an experiment's ``grid`` section (``total``, ``betas``, ``ms``; the defaults where absent)."""
    return grid_points(grid.get("total", DEFAULT_TOTAL), grid.get("betas", DEFAULT_BETAS), grid.get("ms"))
