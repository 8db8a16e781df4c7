"""Figures of run directories: what `iwae plot`, `iwae sample` and `iwae qew` draw, one call each.

    from iwae.run_figures import plot_runs, sample_run, qew_run
    plot_runs(["runs/vae-2d", "runs/iwae-2d"], "figures/", what="latent")   # -> [figures/latent.png]
    sample_run("runs/iwae-k5")                                              # -> runs/iwae-k5/samples.png
    qew_run("runs/iwae-2d", ks=(1, 5, 50))                                  # -> {"figure": ..., "rows": [...]}

Each opens trained runs (:func:`iwae.rundir.open_run`, which refuses the initial weights of a
run that has not finished an epoch) and their data, and hands models and arrays to the figure functions of
:mod:`iwae.figures`, which read no run folder. Nothing here trains.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .analysis.latent import ACTIVE_UNITS_IMAGES, ACTIVE_UNITS_SEED
from .choices import PLOT_KINDS
from .data import fixed_binarization
from .errors import CheckpointError, ConfigError
from .figures import (
    plot_activity,
    plot_curves,
    plot_latent,
    plot_pseudo_inputs,
    plot_reconstructions,
    plot_samples,
    qew_figure,
)
from .qew import check_model
from .rundir import locks, open_run, read_config, read_metrics, run_folder, write_figure_record

__all__ = ["read_metrics", "run_title", "plot_runs", "sample_run", "qew_run", "PLOT_KINDS"]


def run_title(run_dir: str | os.PathLike) -> str:
    """The run's objective and K from its config, e.g. ``IWAE(k=5)``."""
    return read_config(run_dir).spec.label


def _destination(out, run_dir) -> Path | None:
    """The run folder a figure is written into (``out``'s folder, else the run's own), or None."""
    return run_folder(Path(out).parent) if out is not None else run_folder(run_dir)


@locks("iwae sample", lambda a: _destination(a["out"], a["run_dir"]))
def sample_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    n: int = 64,
    seed: int = 0,
    probabilities: bool = True,
    pseudo_inputs: bool = False,
) -> Path:
    """Samples of a trained run as an image grid (:func:`iwae.figures.plot_samples`), or with
    ``pseudo_inputs`` its VampPrior's pseudo-inputs; written to ``out`` (default
    ``RUN_DIR/samples.png`` or ``RUN_DIR/pseudo_inputs.png``). Returns the figure's path.

    Raises:
        CheckpointError: no such run, or it has not finished an epoch.
        ConfigError: ``n < 1``.
        ValueError: ``pseudo_inputs`` for a prior without them.
    """
    if not Path(run_dir).is_dir():  # a missing run before a bad argument, as the CLI always said
        raise CheckpointError(f"run directory {run_dir} not found")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}", ["n"])
    run = open_run(run_dir)  # never the initial weights of a run that has not trained
    path, model, title = run.path, run.model, run.title
    if pseudo_inputs:
        return plot_pseudo_inputs(model, out or path / "pseudo_inputs.png", title=title)
    return plot_samples({title: model}, out or path / "samples.png", n=n, seed=seed, probabilities=probabilities)


@locks("iwae plot", lambda a: run_folder(a["out_dir"]))  # a run's folder, if the figures go there
def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    what: str = "all",
    fmt: str = "png",
    points: int = 2000,
    seed: int = 0,
    data_dir=None,
    accept_changed_data: bool = False,
) -> list[Path]:
    """The figures of one run, or of two side by side (e.g. VAE vs IWAE), as ``OUT_DIR/<kind>.<fmt>``.

    ``what`` is one of :data:`PLOT_KINDS` or ``"all"``: samples (``seed``), reconstructions of the
    first 10 test images, posterior means of the first ``points`` test images coloured by label,
    per-unit activity A_u on the first 500 training images (binarized once, as evaluation does), and
    training curves. The latent figure draws the top stochastic layer: a 2-D latent directly, else
    its two units of largest A_u on those training images. The data files must be those each run was
    trained on (their SHA-256), unless ``accept_changed_data``. Returns the paths written.

    Raises:
        CheckpointError: a run is missing or has not finished an epoch.
        ConfigError: ``points < 1`` or an unknown ``what``.
        ValueError: not one or two runs, or runs of different input sizes.
    """
    if not 1 <= len(run_dirs) <= 2:
        raise ValueError(f"give one or two run directories, got {len(run_dirs)}")
    if what != "all" and what not in PLOT_KINDS:
        raise ConfigError(f"unknown figure what={what!r}; use one of {', '.join(PLOT_KINDS)} or all", ["what"])
    if points < 1:
        raise ConfigError(f"points must be >= 1, got {points}", ["points"])
    opened = [
        open_run(r, data_dir=data_dir, accept_changed_data=accept_changed_data) for r in run_dirs
    ]  # never the initial weights of an untrained run
    paths = [r.path for r in opened]
    titles = [r.title for r in opened]
    if len(set(titles)) < len(titles):  # same objective and K: tell the panels apart by folder
        titles = [f"{t} ({p.name})" for t, p in zip(titles, paths)]
    kinds = PLOT_KINDS if what == "all" else (what,)
    out_dir = Path(out_dir)
    written = []
    if "curves" in kinds:
        metrics = {t: read_metrics(p) for t, p in zip(titles, paths)}
        written.append(plot_curves(metrics, out_dir / f"curves.{fmt}"))
    if set(kinds) - {"curves"}:
        models = {t: r.model for t, r in zip(titles, opened)}
        if len({m.config.input_dim for m in models.values()}) > 1:
            raise ValueError("the two runs model inputs of different sizes; plot them separately")
        if "samples" in kinds:
            written.append(plot_samples(models, out_dir / f"samples.{fmt}", seed=seed))
    if set(kinds) & {"reconstructions", "latent", "activity"}:
        splits = opened[0].splits
        x_units = splits.train[:ACTIVE_UNITS_IMAGES]
        if splits.dynamic:  # grey levels: binarize once, as evaluation does
            x_units = torch.from_numpy(fixed_binarization(x_units.numpy(), ACTIVE_UNITS_SEED))
        shape = splits.image_shape
        if "reconstructions" in kinds:
            written.append(
                plot_reconstructions(models, splits.test, out_dir / f"reconstructions.{fmt}", image_shape=shape)
            )
        if "latent" in kinds:
            labels = None if splits.test_labels is None else splits.test_labels[:points]
            written.append(
                plot_latent(models, splits.test[:points], out_dir / f"latent.{fmt}", labels=labels, x_units=x_units)
            )
        if "activity" in kinds:
            written.append(plot_activity(models, x_units, out_dir / f"activity.{fmt}"))
    return written


def _extent(extent) -> str | float:
    """``"auto"``, or a positive half-width given as a number or its text."""
    if extent == "auto":
        return extent
    try:
        value = float(extent)
    except (TypeError, ValueError):
        raise ConfigError(f"extent must be auto or a positive number, got {extent!r}", ["extent"]) from None
    if not value > 0:
        raise ConfigError(f"extent must be auto or a positive number, got {value}", ["extent"])
    return value


@locks("iwae qew", lambda a: _destination(a["out"], a["run_dir"]))
def qew_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    images: int = 3,
    ks: Sequence[int] = (1, 5, 50),
    samples: int = 20_000,
    grid_size: int = 121,
    extent="auto",
    seed: int = 0,
    data_dir=None,
    accept_changed_data: bool = False,
) -> dict:
    """The q_EW figure (:func:`iwae.figures.qew_figure`) of a 2-D-latent, 1-layer run on its first
    ``images`` test images, written to ``out`` (default ``RUN_DIR/qew.png``) with the result as JSON
    beside it (same name, ``.json``; written atomically). The data files must be those the run was
    trained on (their SHA-256), unless ``accept_changed_data``.

    Returns:
        The JSON's content: ``run_dir``, ``figure``, ``images``, ``ks``, ``samples``, ``grid_size``,
        ``extent``, ``seed`` and ``rows`` (:func:`iwae.qew.qew_report`'s).

    Raises:
        CheckpointError: no such run, or it has not finished an epoch.
        ConfigError: ``images``, ``samples``, ``grid_size``, ``extent`` (``"auto"`` or a positive
            number, also as text) or ``ks`` out of range, checked before anything is loaded.
        ValueError: a model without a 2-D one-layer latent (checked before the data is loaded).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {ks}", ["ks"])
    if images < 1:
        raise ConfigError(f"images must be >= 1, got {images}", ["images"])
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}", ["samples"])
    if grid_size < 2:
        raise ConfigError(f"grid_size must be >= 2, got {grid_size}", ["grid_size"])
    extent = _extent(extent)
    # never the initial weights of a run that has not trained
    run = open_run(run_dir, data_dir=data_dir, accept_changed_data=accept_changed_data)
    path, model = run.path, run.model
    check_model(model)  # before the data (run.splits loads it): a 50-D or 2-layer run fails at once
    splits = run.splits
    x = splits.test[:images]  # in {0, 1}
    figure = Path(out) if out else path / "qew.png"
    rows = qew_figure(
        model,
        x,
        ks,
        figure,
        samples=samples,
        generator=torch.Generator().manual_seed(seed),
        grid_size=grid_size,
        extent=extent,
        image_shape=splits.image_shape,
    )
    result = {
        "run_dir": str(run_dir),
        "figure": str(figure),
        "images": int(x.shape[0]),
        "ks": ks,
        "samples": samples,
        "grid_size": grid_size,
        "extent": extent,
        "seed": seed,
        "rows": rows,
    }
    write_figure_record(figure, result)
    return result
