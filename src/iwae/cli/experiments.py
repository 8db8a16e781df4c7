"""``iwae reproduce``, ``report`` and ``grid``: the commands of the experiment engine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .support import int_list as _int_list
from .support import names as _names
from .support import set_threads as _threads
from .support import user_errors as _user_errors

# Each command imports the library code it calls when it runs, not here: that code loads PyTorch, which
# ``iwae --help`` and ``iwae COMMAND --help`` must not (the group imports this module to show the help;
# tests/test_cli_startup.py checks it).


REPRODUCE_EXAMPLES = """
\b
Examples:
  iwae reproduce --list                                       # the shipped experiments
  iwae reproduce table1 --datasets mnist --dry-run            # its runs and their estimated cost
  iwae reproduce table1 --datasets mnist --only 'mnist-l1-*' --workers 2 --out runs/table1
  iwae reproduce rainforth --protocol paper --ray auto --out runs/rainforth
  iwae reproduce my-experiment.yaml --epochs 1 --test-subset 100   # your own file, shortened further
  iwae report runs/table1                                     # then the report
"""


@click.command(epilog=REPRODUCE_EXAMPLES)
@click.argument("experiment", required=False)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output folder: reproduction.json and runs/.  [default: runs/EXPERIMENT-PROTOCOL]",
)
@click.option(
    "--protocol",
    default="short",
    show_default=True,
    help="paper (Burda et al.'s 3,280 epochs) or short (the CPU-sized truncation each file documents).",
)
@click.option("--datasets", help="Only the runs on these datasets (comma-separated).")
@click.option(
    "--only", multiple=True, help="Only the runs whose names match these shell patterns (comma-separated; repeatable)."
)
@click.option("--dry-run", is_flag=True, help="List the runs, their state and estimated cost; train nothing.")
@click.option("--list", "list_experiments", is_flag=True, help="List the shipped experiments and exit.")
@click.option(
    "--workers",
    type=int,
    help="Local worker processes, each pinned to its share of the CPU cores (or taking the GPUs in turn)."
    "  [default: 1 on CPU, one per GPU with --device cuda]",
)
@click.option(
    "--threads",
    type=int,
    help="torch threads per run.  [default: the free cores (by the load average) divided among the workers]",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    help="Run each run as a task on the Ray cluster at ADDRESS (auto: the running one; local: a new one).",
)
@click.option("--cpus-per-run", type=int, default=1, show_default=True, help="CPUs each Ray task asks for.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override every run's epochs.")
@click.option("--train-subset", type=click.IntRange(min=1), help="Override: train on the first N training images.")
@click.option("--test-subset", type=click.IntRange(min=1), help="Override: evaluate on the first N test images.")
@click.option("--eval-k", type=click.IntRange(min=1), help="Override: samples of the test bound L_k (default 5000).")
@click.option("--quiet", is_flag=True, help="No per-run lines or progress bars.")
@click.option(
    "--batch/--no-batch",
    default=None,
    help="Train the compatible runs (seeds, objectives at one k) together as one batched model, or each "
    "alone. Default: by device, measured (alone on the CPU, where a single run is as fast; batched on CUDA).",
)
@_user_errors
def reproduce(
    experiment,
    out_dir,
    protocol,
    datasets,
    only,
    dry_run,
    list_experiments,
    workers,
    threads,
    ray_address,
    cpus_per_run,
    device,
    data_dir,
    epochs,
    train_subset,
    test_subset,
    eval_k,
    quiet,
    batch,
) -> None:
    """Trains and evaluates every run of EXPERIMENT (a shipped name, or a path to an experiment file),
    skipping finished runs and resuming interrupted ones.

    Writes OUT/reproduction.json and OUT/runs/NAME/ (the run, result.json or error.json). A run
    that fails is reported and the others go on; the exit status is then 1.
    """
    from ..experiments.engine import plan, plan_text, summary_text
    from ..experiments.engine import reproduce as run_reproduction
    from ..experiments.spec import load_experiment, shipped_experiments

    if list_experiments:
        from ..experiments.spec import ExperimentError

        for name in shipped_experiments():
            try:  # one file this installation cannot run (e.g. a setting it lacks) must not hide the others
                exp = load_experiment(name)
                click.echo(f"{name:<12} {len(exp.resolve('short'))} runs  {exp.title}")
            except (ExperimentError, ValueError) as e:
                click.echo(f"{name:<12} cannot be resolved here: {e}")
        return
    if not experiment:
        raise click.UsageError("give an EXPERIMENT (see --list)")
    exp = load_experiment(experiment)
    overrides = {
        k: v
        for k, v in (
            ("epochs", epochs),
            ("train_subset", train_subset),
            ("test_subset", test_subset),
            ("eval_k", eval_k),
        )
        if v is not None
    }
    dataset_list = datasets.split(",") if datasets is not None else None
    only = _names(",".join(only))
    out_dir = Path(out_dir or Path("runs") / f"{exp.name}-{protocol}")
    runs = exp.resolve(protocol, datasets=dataset_list, only=only or None, overrides=overrides)
    if dry_run:
        click.echo(plan_text(f"{exp.name}, protocol {protocol}", plan(runs, out_dir, data_dir), out_dir))
        return
    try:
        summary = run_reproduction(
            exp,
            out_dir,
            protocol=protocol,
            datasets=dataset_list,
            only=only or None,
            overrides=overrides,
            workers=workers,
            threads=threads,
            ray=ray_address,
            cpus_per_run=cpus_per_run,
            device=device,
            data_dir=data_dir,
            progress=not quiet,
            batch=batch,
        )
    except KeyboardInterrupt:
        click.echo(
            "interrupted; run the same command again to go on: finished runs are kept, the others resume "
            "from their last epoch",
            err=True,
        )
        sys.exit(130)
    text, failures = summary_text(exp.name, summary)
    click.echo(text)
    for line in failures:
        click.echo(line, err=True)
    if failures:
        sys.exit(1)


REPORT_EXAMPLES = """
\b
Examples:
  iwae report runs/table1                  # report.md, report.html, report_figures/ in runs/table1
  iwae report runs --no-figures            # every runs/*/reproduction.json, tables only
  iwae report runs/iwae-seeds              # a folder of iwae train --seeds runs: mean ± sd over seeds
"""


@click.command(epilog=REPORT_EXAMPLES)
@click.argument("out_dir", type=click.Path())
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Folder with the data files, for the latent and SNR figures.  [default: each run's data_dir]",
)
@click.option("--no-figures", is_flag=True, help="Tables only: draw no figures.")
@click.option("--per-seed", is_flag=True, help="Below each table of seed groups (mean ± sd), a row per seed's run.")
@click.option("--threads", type=int, help="CPU threads for torch (the samples, latent and SNR figures).")
@_user_errors
def report(out_dir, data_dir, no_figures, per_seed, threads) -> None:
    """Report of an `iwae reproduce` folder (or of every one in a parent folder): the protocol, one
    row per run with our numbers beside the published ones and their difference (flagged above
    0.3 nats), and the experiment's figures. OUT_DIR may also be a folder of seeds (iwae train
    --seeds): a row per evaluation every seed has (mean ± sd over seeds), a row per seed, the curves.
    Writes OUT_DIR/report.md and a self-contained
    OUT_DIR/report.html (figures embedded), with the figures as PNGs in OUT_DIR/report_figures/."""
    from ..experiments.report import FIGURE_DIR, write_report

    _threads(threads)
    markdown_path, html_path = write_report(out_dir, data_dir=data_dir, figures=not no_figures, per_seed=per_seed)
    written = [markdown_path, html_path, Path(out_dir) / "report.json"]
    if not no_figures and (Path(out_dir) / FIGURE_DIR).is_dir():
        written.append(Path(out_dir) / FIGURE_DIR)
    for path in written:
        click.echo(f"wrote {path}")


GRID_EXAMPLES = """
\b
Examples:
  iwae grid --out runs/grid --data-dir data                 # short CPU protocol, 16 runs, ~30 min
  iwae grid --out runs/grid --dry-run                       # list the runs and the points they serve
  iwae grid --out runs/grid-long --epochs 40 --train-subset 20000 --test-subset 2000
  iwae grid --out runs/grid16 --total 16 --betas 0,0.5,1 --ms 1,4,16
"""


def _float_list(value: str, name: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers like 0,0.5,1, got {value!r}", param_hint=name
        ) from None
    if not out:
        raise click.BadParameter(f"expected at least one number, got {value!r}", param_hint=name)
    return out


@click.command(epilog=GRID_EXAMPLES)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder of the grid: runs/, grid.csv, grid.md, grid.png.",
)
@click.option("--total", type=int, default=64, show_default=True, help="M * K, samples per example.")
@click.option("--betas", default="0,0.25,0.5,0.75,1", show_default=True, help="CIWAE's ELBO weights, in [0, 1].")
@click.option("--ms", help="M values of MIWAE and PIWAE, each dividing --total.  [default: all divisors]")
@click.option("--epochs", type=int, default=4, show_default=True, help="The first N epochs of the schedule.")
@click.option("--schedule", type=click.Choice(["paper", "constant"]), default="paper", show_default=True)
@click.option(
    "--train-subset", type=int, default=5000, show_default=True, help="Train on the first N training images (0: all)."
)
@click.option(
    "--test-subset",
    type=int,
    default=500,
    show_default=True,
    help="Evaluate on the first N test images (0: all 10,000).",
)
@click.option("--log-p-k", type=int, default=5000, show_default=True, help="Samples of log p-hat = L_k.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--dry-run", is_flag=True, help="List the distinct runs and the grid points they serve; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-run lines.")
@_user_errors
def grid(
    out_dir,
    total,
    betas,
    ms,
    epochs,
    schedule,
    train_subset,
    test_subset,
    log_p_k,
    data_dir,
    seed,
    threads,
    dry_run,
    quiet,
) -> None:
    """Rainforth et al.'s (M, K) study: MIWAE and PIWAE at every (M, K) with M * K = --total, CIWAE
    over --betas; identical runs are trained once, finished runs are reused, killed ones resumed.

    Writes OUT/grid.csv (one row per grid point: IWAE-k, log p-hat = L_5000, -KL = their
    difference, active units, seconds), OUT/grid.md (beside the published numbers) and OUT/grid.png.
    The runs are an experiment of `iwae reproduce` (OUT/reproduction.json): `iwae report OUT` reports them.
    """
    from ..grid import describe, grid_experiment, grid_table, run_grid

    if total < 1:
        raise ValueError(f"--total must be >= 1, got {total}")
    options = dict(
        total=total,
        betas=_float_list(betas, "--betas"),
        ms=_int_list(ms, "--ms"),
        epochs=epochs,
        schedule=schedule,
        train_subset=train_subset or None,
        test_subset=test_subset or None,
        log_p_k=log_p_k,
        seed=seed,
    )
    if dry_run:
        click.echo(describe(grid_experiment(**options), out_dir))
        return
    rows = run_grid(out_dir, **options, data_dir=data_dir, threads=threads, progress=not quiet)
    click.echo(grid_table(rows))
    click.echo(f"wrote {Path(out_dir) / 'grid.csv'}, {Path(out_dir) / 'grid.md'} and {Path(out_dir) / 'grid.png'}")
