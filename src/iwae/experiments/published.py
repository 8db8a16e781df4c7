"""Published numbers as data: Burda et al. (2016) Tables 1-3 and Rainforth et al. (2018)'s table.

    from iwae.experiments import published
    published.rainforth2018()        # [{'name': 'IWAE', 'objective': 'iwae', 'm': 1, 'k': 64, ...}, ...]
    published.burda2016_table1()     # [{'dataset': 'mnist', 'layers': 1, 'k': 1, 'vae_nll': 86.76, ...}, ...]
    published.citation("rainforth2018")

The numbers live in ``iwae/references/published.yaml`` (package data), copied from the project's
``references/papers.md``. Signs differ between the papers and are kept as published: Burda et al.
report NLL = -log p(x) in nats (positive, lower is better); Rainforth et al. report
log-likelihoods and bounds (negative, higher is better). Active units are lists of counts per
stochastic layer, bottom-up. Rainforth et al.'s rows use their (M, K) notation: ``m`` groups of
``k`` samples; their numbers are as quoted by a public reproduction of the paper's table.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016,
        arXiv:1509.00519.
    [2] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh.
        Tighter Variational Bounds are Not Necessarily Better. ICML 2018, arXiv:1802.04537.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources

import yaml

from ..config.grid import GridPoint, Run, canonical_run

__all__ = [
    "load",
    "citation",
    "burda2016_table1",
    "burda2016_table2",
    "burda2016_table3",
    "rainforth2018",
    "rainforth_by_run",
]

RESOURCE = "references/published.yaml"


@functools.lru_cache(maxsize=1)
def _cached() -> dict:
    text = resources.files("iwae").joinpath(RESOURCE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load() -> dict:
    """The whole file as a dict (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_cached())


def _paper(key: str) -> dict:
    papers = _cached()["papers"]
    if key not in papers:
        raise ValueError(f"unknown paper {key!r}; choose one of {', '.join(papers)}")
    return papers[key]


def citation(key: str) -> str:
    """``"Authors. Title. Venue, arXiv:id."`` for ``key`` in ``burda2016``, ``rainforth2018``."""
    c = _paper(key)["citation"]
    return f"{', '.join(c['authors'])}. {c['title']}. {c['venue']}, arXiv:{c['arxiv']}."


def _rows(key: str, table: str) -> list[dict]:
    return copy.deepcopy(_paper(key)[table]["rows"])


def burda2016_table1() -> list[dict]:
    """Burda et al. Table 1 (dynamic MNIST, Omniglot): dataset, layers, k, vae_nll, vae_active,
    iwae_nll, iwae_active; NLL in nats (positive), active units per layer."""
    return _rows("burda2016", "table1")


def burda2016_table2() -> list[dict]:
    """Burda et al. Table 2: a 1-layer MNIST model trained as one objective, continued as the other."""
    return _rows("burda2016", "table2")


def burda2016_table3() -> list[dict]:
    """Burda et al. Table 3 (static binarized MNIST): layers, k, vae_nll, iwae_nll (positive nats)."""
    return _rows("burda2016", "table3")


def rainforth2018() -> list[dict]:
    """Rainforth et al.'s MNIST table (M * K = 64, mean of 4 runs): name, objective, m (groups), k
    (samples per group), beta (CIWAE only, else None), iwae64, log_p_hat (L_5000) and
    neg_kl = -KL(Q||P) = iwae64 - log_p_hat; log-likelihoods in nats (negative).

    As quoted by a public reproduction of the paper's table.
    """
    return _rows("rainforth2018", "table")


def rainforth_by_run(total: int) -> dict[Run, dict]:
    """Rainforth et al.'s rows keyed by the run they correspond to (only for their M * K = 64)."""
    out = {}
    for row in rainforth2018():
        if row["m"] * row["k"] != total:
            continue
        if row["objective"] in ("iwae", "vae"):
            out[Run(row["objective"], total)] = row
        else:
            out[canonical_run(GridPoint(row["objective"], row["m"], row["k"], row["beta"]))] = row
    return out
