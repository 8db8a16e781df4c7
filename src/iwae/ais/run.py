"""AIS and BDMC on a run directory: the test NLL of its trained model by AIS, saved beside evaluate's
files, and the BDMC sandwich on data simulated from it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import rundir
from ..errors import ConfigError
from ..figures import plot_bdmc
from ..rundir import open_run, write_evaluation, write_figure_record
from ..runtime import check_device, describe
from ..tables import column_table, label_table
from .annealing import DEFAULT_CHAINS, DEFAULT_LEAPFROG, DEFAULT_STEPS, schedule_betas
from .bdmc import bdmc
from .likelihood import ais_cost, ais_log_likelihood

__all__ = ["ais_eval_name", "ais_evaluate", "bdmc_run", "ais_summary_text", "bdmc_text"]


def ais_eval_name(
    steps: int,
    chains: int,
    leapfrog: int,
    seed: int,
    test_subset: int | None = None,
    schedule: str = "sigmoid",
    initial: str = "encoder",
) -> str:
    """File stem of an AIS evaluation in a run directory, beside evaluate's ``eval_k...`` files:
    ``ais_T{T}_C{C}_L{L}_{schedule}_{initial}[_n{N}]_seed{S}`` (the JSON and the per-image ``.npy`` share
    it): every setting that changes the estimate's expected value (:data:`iwae.rundir.AIS_SETTINGS`) is
    in the name, so an evaluation with other settings never overwrites another's files."""
    return (
        f"ais_T{steps}_C{chains}_L{leapfrog}_{schedule}_{initial}"
        + (f"_n{test_subset}" if test_subset is not None else "")
        + f"_seed{seed}"
    )


@rundir.locks("iwae evaluate", lambda a: a["run_dir"] if a["save"] else None)
def ais_evaluate(
    run_dir,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    schedule: str = "sigmoid",
    initial: str = "encoder",
    test_subset: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    memory_budget: int | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
    progress: bool = False,
    save: bool = True,
    announce=None,
    accept_changed_data: bool = False,
) -> dict:
    """Test NLL of a run by AIS, as :func:`iwae.evaluate.evaluate` by L_k (the same keys where they apply).

    Measures the weights of the run's last completed epoch on the first ``test_subset`` test images
    (of the data files the run was trained on: changed files are refused unless ``accept_changed_data``)
    and, with ``save``, writes ``RUN_DIR/{ais_eval_name(...)}.json`` and the per-image log p-hat to
    the ``.npy`` beside it (float64, test-set order; the ``.npy`` first, both atomically), so that
    :func:`iwae.compare.compare_runs` can pair them (``evaluation=`` that stem). The record holds every
    setting, ``method`` ``"ais"``, the test images' SHA-256 and binarization and the data check, as
    evaluate's does. ``announce``, if given, is called with :func:`iwae.ais.ais_cost`'s estimate before
    the run starts (the CLI prints it).
    ``dataset``: the run's data file when it has moved (``npz:PATH``, see :func:`iwae.rundir.open_run`).
    """
    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", [name])
    if test_subset is not None and test_subset < 1:
        raise ConfigError(f"test_subset must be >= 1, got {test_subset}", ["test_subset"])
    schedule_betas(steps, schedule)
    if initial not in ("encoder", "prior"):
        raise ConfigError(f"unknown initial distribution {initial!r}; choose encoder or prior", ["initial"])
    check_device(device)
    # never the initial weights of an untrained run, nor data files that changed since it was trained
    run = open_run(run_dir, device, data_dir=data_dir, dataset=dataset, accept_changed_data=accept_changed_data)
    model, splits = run.model, run.splits
    dev = next(model.parameters()).device
    x = splits.first("test", test_subset, "test_subset").to(dev)
    likelihood = getattr(model, "likelihood", None)
    if likelihood is not None:  # e.g. bernoulli's probabilities are of binary pixels only
        try:
            likelihood.check_data(x, f"the test data of {splits.name}")
        except ValueError as e:
            raise ConfigError(str(e), ["dataset", "likelihood", "binarize"]) from None
    if announce is not None:
        announce(ais_cost(model, x, steps=steps, chains=chains, leapfrog=leapfrog, memory_budget=memory_budget))
    generator = torch.Generator(device=dev).manual_seed(seed)
    result = ais_log_likelihood(
        model,
        x,
        steps=steps,
        chains=chains,
        leapfrog=leapfrog,
        schedule=schedule,
        initial=initial,
        memory_budget=memory_budget,
        generator=generator,
        progress=progress,
    )
    name = ais_eval_name(steps, chains, leapfrog, seed, test_subset, schedule, initial)
    summary = result.summary()
    if not math.isfinite(summary["nll"]):
        raise ValueError(f"AIS gave a log-likelihood that is not finite on {len(x)} test images; nothing was written")
    out = {
        **summary,
        "method": "ais",
        "likelihood": getattr(likelihood, "name", "bernoulli"),
        "code_length": likelihood is None or bool(likelihood.discrete),
        "seed": seed,
        "test_images": rundir.images_record(splits, x, splits.test.shape[0]),
        "data": run.data,
        "model": {**run.weights, "run_dir": str(run_dir), "epochs_planned": run.config.total_epochs},
        "runtime": describe(dev),
        "files": rundir.evaluation_files(name) if save else None,
    }
    if save:
        write_evaluation(run_dir, name, out, result.log_likelihood.numpy())
    return out


@rundir.locks("iwae bdmc", lambda a: rundir.run_folder(Path(a["out"]).parent) if a["out"] else a["run_dir"])
def bdmc_run(
    run_dir,
    *,
    n: int = 32,
    steps: Sequence[int] = (100, DEFAULT_STEPS),
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    initial: str = "encoder",
    seed: int = 0,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """BDMC (:func:`iwae.ais.bdmc`) on ``n`` images simulated from a run's trained model, for each T
    of ``steps``; draws the sandwich (:func:`iwae.figures.plot_bdmc`) to ``out`` (default
    ``RUN_DIR/bdmc_n{N}_C{C}_L{L}_seed{S}.png``) and writes the rows as JSON beside it.

    Returns:
        ``{"rows": [...], "figure", "json", "model", "seed", "n", "chains", "leapfrog", "initial"}``.
    """
    steps = [int(t) for t in steps]
    for name, value in (("n", n), ("chains", chains), ("leapfrog", leapfrog)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", [name])
    if not steps or min(steps) < 1:
        raise ConfigError(f"steps must be positive integers, got {steps}", ["steps"])
    if initial not in ("encoder", "prior"):
        raise ConfigError(f"unknown initial distribution {initial!r}; choose encoder or prior", ["initial"])
    check_device(device)
    run = open_run(run_dir, device)
    dev = next(run.model.parameters()).device
    rows = bdmc(
        run.model,
        n,
        steps_list=steps,
        chains=chains,
        leapfrog=leapfrog,
        initial=initial,
        generator=torch.Generator(device=dev).manual_seed(seed),
        progress=progress,
    )
    figure = Path(out) if out else Path(run_dir) / f"bdmc_n{n}_C{chains}_L{leapfrog}_seed{seed}.png"
    figure = plot_bdmc(rows, figure, title=f"BDMC on {n} images simulated from {run.title}")
    result = {
        "rows": rows,
        "figure": str(figure),
        "json": str(figure.with_suffix(".json")),
        "model": {**run.weights, "run_dir": str(run_dir)},
        "seed": seed,
        "n": n,
        "chains": chains,
        "leapfrog": leapfrog,
        "initial": initial,
        "runtime": describe(dev),
    }
    write_figure_record(figure, result)
    return result


def ais_summary_text(result: dict) -> str:
    """The lines ``iwae evaluate --method ais`` prints for a result of :func:`ais_evaluate`."""
    measured, images = result["model"], result["test_images"]
    written = [str(Path(measured["run_dir"]) / f) for f in result["files"].values()] if result["files"] else []
    return label_table(
        [
            (
                "test NLL (nats)",
                f"{result['nll']:.2f} ± "
                + ("n/a (one image)" if result["nll_stderr"] is None else f"{result['nll_stderr']:.2f}")
                + f"  (-mean AIS log p-hat ± s.e. over images, seed {result['seed']})",
            ),
            (
                "AIS",
                f"T = {result['steps']} {result['schedule']} steps, C = {result['chains']} chains, "
                f"L = {result['leapfrog']} leapfrog steps, from the {result['initial']}",
            ),
            (
                "diagnostics",
                f"acceptance {result['acceptance']:.2f}, mean ESS {result['mean_ess']:.1f} of "
                f"{result['chains']}, mean per-image s.e. {result['mean_chain_stderr']:.3f}",
            ),
            ("test images", rundir.images_text(images)),
            ("data files", rundir.data_text(result.get("data"))),
            (
                "model",
                f"epoch {measured['epoch']} of {measured['epochs_planned']}, "
                f"model.safetensors sha256 {measured['sha256']}",
            ),
            ("time", f"{result['seconds']:.1f} s ({result['images_per_s']:.2f} images/s)"),
            ("written", ", ".join(written) or "nothing"),
        ]
    )


def bdmc_text(result: dict) -> str:
    """The table ``iwae bdmc`` prints: per T the lower and upper bounds, their gap, acceptance, time."""
    header = ("T", "lower (forward)", "upper (reverse)", "gap", "acceptance", "seconds")
    rows = [
        (
            r["steps"],
            f"{r['lower']:.3f} ± {r['lower_stderr']:.3f}",
            f"{r['upper']:.3f} ± {r['upper_stderr']:.3f}",
            f"{r['gap']:.3f} ± {r['gap_stderr']:.3f}",
            "/".join(f"{a:.2f}" for a in r["acceptance"]),
            f"{r['seconds']:.0f}",
        )
        for r in result["rows"]
    ]
    return (
        column_table(header, rows) + f"\nmean log p(x) over {result['n']} images simulated from the model, "
        f"C = {result['chains']}, L = {result['leapfrog']}; wrote {result['figure']} and {result['json']}"
    )
