"""The (M, K) grid of Rainforth et al. (2018): MIWAE, PIWAE and CIWAE at a fixed budget of M * K samples.

    iwae grid --out runs/grid --data-dir data          # the short CPU protocol below, ~16 runs
    from iwae.grid import run_grid, plot_grid, grid_table
    rows = run_grid("runs/grid")                       # one dict per grid point; also grid.csv, grid.png

follows Rainforth et al. [1], Sec. 5 and Fig. 6: MIWAE(M, K) and PIWAE(M, K) for every (M, K) with
M * K = 64, i.e. (1,64), (2,32), ..., (64,1), and CIWAE(beta) with 64 samples over a grid of beta;
every run has the same data, seed and protocol. (M, K) means M groups of K samples: MIWAE averages
M IWAE bounds of K samples each; PIWAE trains the decoder on IWAE(M * K) and the encoder on
MIWAE(M, K); CIWAE(beta) = beta * ELBO + (1 - beta) * IWAE on the same 64 samples.

Several grid points are the same training run and are trained once (:func:`canonical_run`):
MIWAE(1,64) = PIWAE(1,64) = CIWAE(0) = IWAE(k=64) and MIWAE(64,1) = CIWAE(1) = the VAE with 64
samples. PIWAE(64,1) is *not* the VAE: its encoder gets the ELBO but its decoder IWAE(64).

Per run the grid reports, on the test set (or its first ``test_subset`` images):

- IWAE-64 = -NLL by L_64 (``iwae_k`` samples, default M * K),
- log p-hat = L_5000 (``log_p_k`` samples), the estimate of log p(x),
- -KL(Q||P) = IWAE-64 - log p-hat, how far the bound is from log p-hat,
- active units, and wall time (training + evaluation).

The short protocol. Rainforth et al. train each model with Burda et al.'s 3,280-epoch schedule on
all 60,000 images and average 4 runs; that is weeks of CPU time for the grid. The defaults here
take the paper schedule's first ``DEFAULT_EPOCHS`` = 4 epochs (1 at lr 1e-3, 3 at 7.2e-4) on the
first ``DEFAULT_TRAIN_SUBSET`` = 5,000 training images, batch 20 (1,000 steps), and evaluate on the
first ``DEFAULT_TEST_SUBSET`` = 500 test images, one seed. Measured with one torch thread on a busy
2-core machine: about 3 ms per training image at 64 samples and 60 ms per test image for L_5000,
so 50-120 s a run (about 80 s on average) and 20-30 minutes for the 16 distinct runs of the default
grid. The models are far from converged (log p-hat near -120 to -127 rather than -85), and after
1,000 steps IWAE(64) still trails the VAE, unlike at the end of the paper's schedule: compare the
trends along (M, K) with the published numbers (:mod:`iwae.published`) with care, not the levels.

Resuming: the grid's folder holds ``runs/<run name>/`` per distinct run. A run whose
``grid_eval.json`` matches the protocol is reused as it is; a run directory with a checkpoint is
resumed (``train(..., resume=True)``) and evaluated; one without a checkpoint is restarted.

References:
    [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh.
        Tighter Variational Bounds are Not Necessarily Better. ICML 2018, arXiv:1802.04537.
    [2] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from . import data as data_module
from . import published
from .checkpoint import atomic_write
from .evaluate import evaluate
from .train import TrainConfig, run_identity, train_or_resume, training_seconds

__all__ = ["GridPoint", "Run", "grid_points", "canonical_run", "plan", "run_grid", "plot_grid", "grid_table",
           "read_grid_csv", "DEFAULT_BETAS"]

# ----------------------------------------------------------------------------- defaults (the short protocol)
DEFAULT_TOTAL = 64  # M * K, samples per example for every objective
DEFAULT_BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # CIWAE's ELBO weights
DEFAULT_EPOCHS = 4  # the first epochs of the paper schedule (1 at lr 1e-3, 3 at 7.2e-4)
DEFAULT_SCHEDULE = "paper"
DEFAULT_TRAIN_SUBSET = 5000  # training images (the first N of the 59,600)
DEFAULT_TEST_SUBSET = 500  # test images for IWAE-64 and log p-hat (the first N of 10,000)
DEFAULT_LOG_P_K = 5000  # samples of log p-hat = L_5000, as both papers
OBJECTIVES = ("miwae", "piwae", "ciwae")
EVAL_FILE = "grid_eval.json"  # written last in a run directory: its presence marks a finished run
FIGURE_SIZE = (15.0, 8.0)  # inches, at FIGURE_DPI: grid.png is 1500 x 800 pixels
FIGURE_DPI = 100
PUBLISHED_LABEL = "Rainforth et al. 2018 (full protocol)"

CSV_FIELDS = ["objective", "m", "k", "beta", "total", "label", "run", "iwae_bound", "iwae_stderr", "log_p_hat",
              "log_p_hat_stderr", "neg_kl", "active_units", "iwae_k", "log_p_k", "n_test", "epochs",
              "train_subset", "train_seconds", "eval_seconds", "seconds"]


# ----------------------------------------------------------------------------- grid points and runs
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


def grid_points(total: int = DEFAULT_TOTAL, betas=DEFAULT_BETAS, ms: list[int] | None = None,
                objectives=OBJECTIVES) -> list[GridPoint]:
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
        raise ValueError(f"M = {bad[0]} does not divide total = {total}; choose among its divisors "
                         f"{','.join(map(str, divisors(total)))}")
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


def plan(points: list[GridPoint]) -> dict[Run, list[GridPoint]]:
    """Distinct runs, in the order first needed, each with the grid points it serves."""
    runs: dict[Run, list[GridPoint]] = {}
    for p in points:
        runs.setdefault(canonical_run(p), []).append(p)
    return runs


# ----------------------------------------------------------------------------- one run
def _evaluate_run(run_dir: Path, splits, protocol: dict) -> dict:
    t0 = time.perf_counter()
    bound = evaluate(run_dir, splits=splits, k=protocol["iwae_k"], test_subset=protocol["test_subset"],
                     seed=protocol["seed"])
    log_p = evaluate(run_dir, splits=splits, k=protocol["log_p_k"], test_subset=protocol["test_subset"],
                     seed=protocol["seed"])
    eval_seconds = time.perf_counter() - t0
    train_seconds = training_seconds(run_dir)
    return {
        "protocol": protocol,
        "iwae_bound": -bound["nll"], "iwae_stderr": bound["nll_stderr"],
        "log_p_hat": -log_p["nll"], "log_p_hat_stderr": log_p["nll_stderr"],
        "neg_kl": log_p["nll"] - bound["nll"],  # IWAE-64 - log p-hat
        "active_units": log_p["active_units"], "n_test": log_p["n_test"],
        "train_seconds": train_seconds, "eval_seconds": eval_seconds, "seconds": train_seconds + eval_seconds,
    }


def _read_eval(run_dir: Path, protocol: dict) -> dict | None:
    """The finished run's evaluation if it matches ``protocol``, else None."""
    path = run_dir / EVAL_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("protocol") == protocol else None


# ----------------------------------------------------------------------------- the grid
def run_grid(
    out_dir: str | os.PathLike,
    *,
    total: int = DEFAULT_TOTAL,
    betas=DEFAULT_BETAS,
    ms: list[int] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    schedule: str = DEFAULT_SCHEDULE,
    train_subset: int | None = DEFAULT_TRAIN_SUBSET,
    test_subset: int | None = DEFAULT_TEST_SUBSET,
    iwae_k: int | None = None,
    log_p_k: int = DEFAULT_LOG_P_K,
    data_dir: str | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    splits: data_module.Splits | None = None,
    plot: bool = True,
) -> list[dict]:
    """Trains and evaluates every distinct run of the grid and writes ``grid.csv``, ``grid.md`` and ``grid.png``.

    Args:
        out_dir: the grid's folder; runs go to ``out_dir/runs/<name>``.
        total: M * K, samples per example. Default 64.
        betas: CIWAE's ELBO weights, each in [0, 1]. Default 0, 0.25, 0.5, 0.75, 1.
        ms: the M values of MIWAE and PIWAE, each dividing ``total``. Default: all divisors.
        epochs: the first N epochs of ``schedule``. Default 4.
        schedule: ``paper`` (Burda et al.'s) or ``constant`` (lr 1e-3). Default ``paper``.
        train_subset: train on the first N training images (None: all). Default 5,000.
        test_subset: evaluate on the first N test images (None: all 10,000). Default 500.
        iwae_k: samples of the reported IWAE bound (the paper's IWAE-64). Default ``total``.
        log_p_k: samples of log p-hat = L_k. Default 5,000.
        data_dir: folder of the MNIST files (ignored when ``splits`` is given).
        seed: the seed of every run and of the evaluations. Default 0.
        threads: torch CPU threads (None: torch's default).
        progress: report each run on stderr, with training progress bars.
        splits: MNIST already loaded.
        plot: write ``grid.png``.

    Returns:
        One dict per grid point, in grid order, with the keys of ``CSV_FIELDS``.
    """
    points = grid_points(total, betas, ms)
    iwae_k = total if iwae_k is None else iwae_k
    if iwae_k < 1 or log_p_k < 1:
        raise ValueError(f"iwae_k and log_p_k must be >= 1, got {iwae_k} and {log_p_k}")
    if test_subset is not None and test_subset < 1:
        raise ValueError(f"test_subset must be >= 1, got {test_subset}")
    runs = plan(points)
    protocol_train = dict(epochs=epochs, schedule=schedule, train_subset=train_subset, seed=seed,
                          threads=threads, data_dir=data_dir)
    for run in runs:  # every config is valid before the first run starts
        run.config(out="unused", **protocol_train)
    protocol_eval = {"iwae_k": iwae_k, "log_p_k": log_p_k, "test_subset": test_subset, "seed": seed,
                     "epochs": epochs}

    out_dir = Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    splits = splits or data_module.load_dataset("mnist", data_dir)
    results: dict[Run, dict] = {}
    for i, (run, served) in enumerate(runs.items(), 1):
        run_dir = out_dir / "runs" / run.name
        config = run.config(out=str(run_dir), **protocol_train)
        protocol = {"train": run_identity(config), **protocol_eval}  # what a reusable result must match
        result = _read_eval(run_dir, protocol)
        done = "reused"
        if result is None:
            t0 = time.perf_counter()
            done = train_or_resume(config, splits=splits, progress=progress)
            result = _evaluate_run(run_dir, splits, protocol)
            with atomic_write(run_dir / EVAL_FILE) as f:
                json.dump(result, f, indent=1)
            done += f" in {time.perf_counter() - t0:.0f} s"
        results[run] = result
        if progress:
            print(f"[{i}/{len(runs)}] {run.name} ({', '.join(p.label for p in served)}): {done}; "
                  f"IWAE-{iwae_k} {result['iwae_bound']:.2f}  log p-hat {result['log_p_hat']:.2f}  "
                  f"-KL {result['neg_kl']:.2f}", file=sys.stderr)

    rows = []
    for p in points:
        run = canonical_run(p)
        r = results[run]
        rows.append({
            "objective": p.objective, "m": p.m, "k": p.k, "beta": p.beta, "total": p.total, "label": p.label,
            "run": run.name, **{f: r[f] for f in CSV_FIELDS if f in r},
            "iwae_k": iwae_k, "log_p_k": log_p_k, "epochs": epochs, "train_subset": train_subset,
        })
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "grid.csv", rows)
    with atomic_write(out_dir / "grid.md") as f:
        f.write(grid_table(rows) + "\n")
    if plot:
        plot_grid(rows, out_dir / "grid.png")
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({f: ("" if row.get(f) is None else row.get(f)) for f in CSV_FIELDS})
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def read_grid_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``grid.csv``, with numbers parsed (an empty beta is None)."""
    ints = {"m", "k", "total", "active_units", "iwae_k", "log_p_k", "n_test", "epochs"}
    text = {"objective", "label", "run"}
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                if key in text:
                    row[key] = value
                elif value == "":
                    row[key] = None
                else:
                    row[key] = int(value) if key in ints else float(value)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- published numbers beside the grid
def _published_by_run(total: int) -> dict[Run, dict]:
    """Rainforth et al.'s rows keyed by the run they correspond to (only for their M * K = 64)."""
    out = {}
    for row in published.rainforth2018():
        if row["m"] * row["k"] != total:
            continue
        if row["objective"] in ("iwae", "vae"):
            out[Run(row["objective"], total)] = row
        else:
            out[canonical_run(GridPoint(row["objective"], row["m"], row["k"], row["beta"]))] = row
    return out


def _published_for(row: dict) -> dict | None:
    point = GridPoint(row["objective"], row["m"], row["k"], row["beta"])
    return _published_by_run(point.total).get(canonical_run(point))


def grid_table(rows: list[dict]) -> str:
    """The grid as a Markdown table, one line per grid point, beside Rainforth et al.'s numbers where
    they exist (full protocol, M * K = 64, mean of 4 runs; as quoted by a public reproduction)."""

    def num(v, digits=2):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    iwae_k = rows[0]["iwae_k"] if rows else 64
    log_p_k = rows[0]["log_p_k"] if rows else 5000
    lines = [
        f"| point | run | IWAE-{iwae_k} | log p-hat (L_{log_p_k}) | -KL(Q‖P) | active units | time (s) "
        f"| published IWAE-64 | published log p-hat | published -KL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pub = _published_for(r) or {}
        lines.append(
            f"| {r['label']} | {r['run']} | {num(r['iwae_bound'])} | {num(r['log_p_hat'])} | {num(r['neg_kl'])} "
            f"| {r['active_units']} | {num(r['seconds'], 0)} | {num(pub.get('iwae64'))} "
            f"| {num(pub.get('log_p_hat'))} | {num(pub.get('neg_kl'))} |")
    lines.append("")
    lines.append(f"Published: {published.citation('rainforth2018')} Full protocol (3,280 epochs, all of MNIST, "
                 f"mean of 4 runs); numbers as quoted by a public reproduction of the paper's table.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the figure
def plot_grid(rows: list[dict], path: str | os.PathLike) -> Path:
    """Rainforth et al.'s Fig. 6 of grid rows: drawn by :func:`iwae.figures.plot_grid` (all matplotlib
    lives in :mod:`iwae.figures`); kept here for callers of ``iwae.grid``."""
    from .figures import plot_grid as draw  # lazy: iwae.figures.curves imports this module's Run

    return draw(rows, path)
