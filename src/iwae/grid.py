"""The (M, K) grid of Rainforth et al. (2018): MIWAE, PIWAE and CIWAE at a fixed budget of M * K samples.

    iwae grid --out runs/grid --data-dir data          # the short CPU protocol below, ~16 runs
    from iwae.grid import grid_experiment, run_grid, plot_grid, grid_table
    rows = run_grid("runs/grid")                       # one dict per grid point; also grid.csv, grid.png

follows Rainforth et al. [1], Sec. 5 and Fig. 6: MIWAE(M, K) and PIWAE(M, K) for every (M, K) with
M * K = 64, i.e. (1,64), (2,32), ..., (64,1), and CIWAE(beta) with 64 samples over a grid of beta;
every run has the same data, seed and protocol. (M, K) means M groups of K samples: MIWAE averages
M IWAE bounds of K samples each; PIWAE trains the decoder on IWAE(M * K) and the encoder on
MIWAE(M, K); CIWAE(beta) = beta * ELBO + (1 - beta) * IWAE on the same 64 samples.

This module is the sweep only: :func:`grid_experiment` turns the (M, K) and beta sweeps into an
experiment (:mod:`iwae.experiments.spec`, a ``grid`` section and one protocol named ``grid``) whose runs
are the distinct training runs; :func:`run_grid` hands it to the engine (:func:`iwae.experiments.engine.reproduce`:
its run folders, ``result.json``, resume rule, executors) and writes the grid's table from the
engine's results (:func:`iwae.experiments.report.grid_rows`). ``iwae report OUT`` reports the same folder.

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
trends along (M, K) with the published numbers (:mod:`iwae.experiments.published`) with care, not the levels.

Resuming is the engine's: the grid's folder holds ``runs/<run name>/`` per distinct run; a run whose
``result.json`` matches its settings is reused, one with a checkpoint is resumed, one without is
restarted; a folder of other settings is refused.

References:
    [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh.
        Tighter Variational Bounds are Not Necessarily Better. ICML 2018, arXiv:1802.04537.
    [2] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from . import figures
from .checkpoint import atomic_write
from .config.grid import (
    DEFAULT_BETAS,
    DEFAULT_TOTAL,
    OBJECTIVES,
    GridPoint,
    Run,
    canonical_run,
    distinct_runs,
    divisors,
    grid_points,
    points_of,
    section_points,
)
from .experiments import engine, published
from .experiments.report import grid_rows, grid_table, read_reproduction
from .experiments.spec import experiment_from_dict

__all__ = [
    "GridPoint",
    "Run",
    "grid_points",
    "canonical_run",
    "distinct_runs",
    "points_of",
    "grid_experiment",
    "describe",
    "run_grid",
    "plot_grid",
    "grid_table",
    "read_grid_csv",
    "DEFAULT_BETAS",
    "DEFAULT_TOTAL",
    "OBJECTIVES",
    "divisors",
    "section_points",
    "PROTOCOL",
]

# ----------------------------------------------------------------------------- defaults (the short protocol)
DEFAULT_EPOCHS = 4  # the first epochs of the paper schedule (1 at lr 1e-3, 3 at 7.2e-4)
DEFAULT_SCHEDULE = "paper"
DEFAULT_TRAIN_SUBSET = 5000  # training images (the first N of the 59,600)
DEFAULT_TEST_SUBSET = 500  # test images for IWAE-64 and log p-hat (the first N of 10,000)
DEFAULT_LOG_P_K = 5000  # samples of log p-hat = L_5000, as both papers
PROTOCOL = "grid"  # the protocol of the experiment grid_experiment builds
FIGURE_SIZE = (15.0, 8.0)  # inches, at FIGURE_DPI: grid.png is 1500 x 800 pixels
FIGURE_DPI = 100
PUBLISHED_LABEL = "Rainforth et al. 2018 (full protocol)"

CSV_FIELDS = [
    "objective",
    "m",
    "k",
    "beta",
    "total",
    "label",
    "run",
    "iwae_bound",
    "iwae_stderr",
    "log_p_hat",
    "log_p_hat_stderr",
    "neg_kl",
    "active_units",
    "iwae_k",
    "log_p_k",
    "n_test",
    "epochs",
    "train_subset",
    "train_seconds",
    "eval_seconds",
    "seconds",
]


# ----------------------------------------------------------------------------- the sweep as an experiment
def grid_experiment(
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
    seed: int = 0,
):
    """The grid as an experiment of the engine: one run per distinct training run of the grid's points
    (named :attr:`Run.name`, each recording the points it serves), one protocol ``grid`` holding the
    training settings, ``evaluate: {k: log_p_k, bound_ks: [iwae_k], seed}``, Rainforth et al.'s table
    as the published numbers. The arguments are :func:`run_grid`'s.

    Raises:
        ValueError: a grid :func:`grid_points` refuses, iwae_k, log_p_k or test_subset < 1, a setting
            TrainConfig refuses (:class:`iwae.experiments.spec.ExperimentError`).
    """
    points = grid_points(total, betas, ms)  # its messages name the bad M or beta
    iwae_k = total if iwae_k is None else iwae_k
    if iwae_k < 1 or log_p_k < 1:
        raise ValueError(f"iwae_k and log_p_k must be >= 1, got {iwae_k} and {log_p_k}")
    if test_subset is not None and test_subset < 1:
        raise ValueError(f"test_subset must be >= 1, got {test_subset}")
    grid = {"total": total, "betas": [float(b) for b in betas], **({} if ms is None else {"ms": [int(m) for m in ms]})}
    n_runs = len(distinct_runs(points))
    spec = {
        "name": "grid",
        "title": f"Rainforth et al. (2018)'s (M, K) grid at M * K = {total}",
        "description": f"MIWAE and PIWAE at every (M, K) with M * K = {total}, CIWAE over beta = "
        f"{', '.join(f'{b:g}' for b in grid['betas'])}: {len(points)} grid points, {n_runs} distinct "
        f"runs (identical objectives are trained once). Generated by `iwae grid`.",
        "labels": ["objective", "m", "k", "beta"],
        "grid": grid,
        "evaluate": {"k": log_p_k, "bound_ks": [iwae_k], "seed": seed},
        "protocols": {
            PROTOCOL: {
                "description": f"the first {epochs} epochs of the {schedule} schedule on "
                f"{train_subset or 'all'} training images, bounds on "
                f"{test_subset or 'all'} test images, seed {seed}.",
                "epochs": epochs,
                "schedule": schedule,
                "train_subset": train_subset,
                "test_subset": test_subset,
                "seed": seed,
            }
        },
        "published": {
            "paper": "rainforth2018",
            "table": "table",
            "values": {f"iwae{iwae_k}": "iwae64", "log_p_hat": "log_p_hat", "neg_kl": "neg_kl"},
        }
        if total == 64 and iwae_k == 64
        else None,
        "figures": ["grid", "curves"],
    }
    return experiment_from_dict(spec, source="iwae grid")


def describe(exp, out_dir: str | os.PathLike) -> str:
    """What ``iwae grid --dry-run`` prints: the number of grid points and distinct runs, then each run
    with the grid points it serves."""
    runs = exp.resolve(PROTOCOL)
    n_points = len(section_points(exp.spec["grid"]))
    width = max(len(r.name) for r in runs)
    lines = [f"{n_points} grid points, {len(runs)} distinct runs under {Path(out_dir) / 'runs'}:"]
    lines += [f"  {r.name:<{width}}  {', '.join(p['label'] for p in r.points)}" for r in runs]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the grid
def run_grid(
    out_dir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    splits=None,
    plot: bool = True,
    workers: int | None = None,
    ray: str | None = None,
    **sweep,
) -> list[dict]:
    """Trains and evaluates every distinct run of the grid with the experiment engine
    (:func:`iwae.experiments.engine.reproduce` of :func:`grid_experiment`), then writes ``grid.csv``,
    ``grid.md`` and ``grid.png`` from its results.

    Args:
        out_dir: the grid's folder: ``reproduction.json``, ``runs/<name>``, the grid files.
        sweep: :func:`grid_experiment`'s settings:
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
        threads: torch CPU threads per run (None: the engine's default, the cores over the workers).
        progress: report each run on stderr, with training progress bars.
        splits: MNIST already loaded (runs in this process only).
        plot: write ``grid.png``.
        workers, ray: the engine's executors (see :func:`iwae.experiments.engine.reproduce`).

    Returns:
        One dict per grid point whose run finished, in grid order, with the keys of ``CSV_FIELDS``.

    Raises:
        ValueError: a bad grid or protocol, a folder holding runs of other settings, or runs that
            failed (after the grid files of the others are written; their errors are in
            ``runs/<name>/error.json``).
    """
    exp = grid_experiment(**sweep)
    summary = engine.reproduce(
        exp,
        out_dir,
        protocol=PROTOCOL,
        data_dir=data_dir,
        threads=threads,
        progress=progress,
        splits=splits,
        workers=workers,
        ray=ray,
    )
    out_dir = Path(out_dir)
    rows = grid_rows(read_reproduction(out_dir)) if len(summary.failed) < len(summary.status) else []
    if rows:
        _write_csv(out_dir / "grid.csv", rows)
        with atomic_write(out_dir / "grid.md") as f:
            f.write(grid_table(rows) + "\n")
        if plot:
            plot_grid(rows, out_dir / "grid.png")
    if summary.failed:
        errors = "; ".join(
            f"{name}: {(summary.results.get(name) or {}).get('error', summary.status[name])}" for name in summary.failed
        )
        raise ValueError(
            f"{len(summary.failed)} of {len(summary.status)} grid runs failed ({errors}); "
            f"see {out_dir / 'runs'}/NAME/error.json"
        )
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


# ----------------------------------------------------------------------------- the figure
def plot_grid(rows: list[dict], path: str | os.PathLike) -> Path:
    """Rainforth et al.'s Fig. 6 of grid rows: drawn by :func:`iwae.figures.plot_grid` (all matplotlib
    lives in :mod:`iwae.figures`); kept here for callers of ``iwae.grid``."""
    return figures.plot_grid(rows, path, published=published.rainforth2018())
