"""The ``iwae`` command line: the only reader of argv and config files.

    iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5
    iwae evaluate runs/iwae-k5 --k 5000

Each command parses its arguments, makes one library call (the call a Python user makes, which
writes the same result files) and prints what it returns; bad input exits with status 2 and one
line (:mod:`iwae.cli_support`). ``iwae train``'s options are generated from TrainConfig's fields.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .cli_support import setting_options
from .cli_support import int_list as _int_list
from .cli_support import names as _names
from .cli_support import set_threads as _threads
from .cli_support import user_errors as _user_errors
from .estimators import ESTIMATORS
from .objectives import OBJECTIVES
from .train import TrainConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="iwae")
def main() -> None:
    """Importance weighted autoencoders: train VAE / IWAE / MIWAE / CIWAE / PIWAE models and
    measure their test log-likelihood."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


TRAIN_EXAMPLES = """
\b
Examples:
  iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5
  iwae train --objective miwae --k 64 --m 8 --epochs 40 --out runs/miwae-8-8     # MIWAE(8,8)
  iwae train --objective ciwae --k 64 --beta 0.5 --layers 2 --out runs/ciwae
  iwae train --objective iwae --k 50 --estimator dreg --epochs 10 --out runs/iwae-dreg
  iwae train --objective vae --latent-dims 2 --epochs 5 --train-subset 5000 --out runs/vae-2d
  iwae train --resume runs/iwae-k5 --epochs 40                                 # continue, extend
"""


@main.command(epilog=TRAIN_EXAMPLES)
@setting_options(TrainConfig)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Start from a config.yaml (e.g. a run's); flags given on the command line override it.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
@_user_errors
def train(ctx: click.Context, config_file, resume, overwrite, quiet, **options) -> None:
    """Train a model and write a run directory (config, weights, checkpoint, metrics)."""
    from .rundir import trained_epochs
    from .train import configure, resume_config, train as run_training

    given = {name: v for name, v in options.items() if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if not (resume or given.get("out") or config_file):
        raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
    config = resume_config(resume, given) if resume else configure(given, base=config_file)
    finished = False
    if resume and (Path(resume) / "checkpoint.safetensors").is_file():
        finished = trained_epochs(resume) == config.total_epochs  # train() says there is nothing to do
    run_dir = run_training(config, resume=bool(resume), overwrite=overwrite, progress=not quiet)
    if not finished:
        click.echo(f"trained {config.spec.label} for {config.total_epochs} epochs: {run_dir}")
    click.echo(f"evaluate it with: iwae evaluate {run_dir}")


EVALUATE_EXAMPLES = """
\b
Examples:
  iwae evaluate runs/iwae-k5                       # test NLL by L_5000 and active units
  iwae evaluate runs/iwae-k5 --k 100 --test-subset 1000 --json
"""


@main.command(epilog=EVALUATE_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--k", "k", type=int, default=5000, show_default=True, help="Importance samples per test image.")
@click.option("--test-subset", type=int, help="Evaluate on the first N test images only.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--memory-budget", type=float, default=1.0, show_default=True, help="GiB a decoder call may use.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the importance samples.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def evaluate(run_dir, k, test_subset, as_json, data_dir, memory_budget, seed, device, threads, quiet) -> None:
    """Test NLL = -mean L_k (with standard error) and active units of a trained run, measured with the
    weights of its last completed epoch (a run that has completed none is refused).

    The result, with the epoch and SHA-256 of the model measured, the seed, the test images used and
    the device, is also written to RUN_DIR/eval_k{K}_seed{S}.json (eval_k{K}_n{N}_seed{S}.json for the
    first N test images), and L_k of each test image to the .npy beside it.
    """
    from .evaluate import GIB, evaluate as run_evaluation, summary_text

    _threads(threads)
    result = run_evaluation(run_dir, k=k, test_subset=test_subset, data_dir=data_dir, memory_budget=memory_budget * GIB,
                            seed=seed, device=device, progress=not quiet and not as_json)
    click.echo(json.dumps(result, indent=1) if as_json else summary_text(result))


SNR_EXAMPLES = """
\b
Examples:
  iwae snr --fresh --out results/snr                       # Burda 1-layer net at initialisation
  iwae snr runs/iwae-k50 --repeats 500 --out results/snr-trained
  iwae snr --fresh --objectives iwae --estimators reparam,dreg,stl --k 1,8,64 --out results/snr-k
"""


@main.command(epilog=SNR_EXAMPLES)
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--fresh", is_flag=True, help="Measure a freshly initialised Burda 1-layer MNIST model instead of a run.")
@click.option("--k", "ks", default="1,4,16,64", show_default=True,
              help="Total samples K for the one-group objectives (iwae, vae, ciwae).")
@click.option("--m", "ms", help="Groups M for miwae and piwae.  [default: 1,4,16]")
@click.option("--group-k", type=int, default=4, show_default=True,
              help="Samples per group K of MIWAE(M, K), held fixed while M varies (total M*K).")
@click.option("--estimators", default="reparam,dreg", show_default=True,
              help=f"Comma-separated encoder estimators: {', '.join(ESTIMATORS)}.")
@click.option("--objectives", default="iwae,miwae", show_default=True,
              help=f"Comma-separated objectives: {', '.join(OBJECTIVES)}.")
@click.option("--repeats", type=int, default=200, show_default=True,
              help="Independent gradient estimates R per point (>= 2).")
@click.option("--batch-size", type=int, default=20, show_default=True,
              help="The fixed batch: the first N training images, binarized once.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples (and of a --fresh init).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for snr.csv, snr_layers.csv and snr.png.")
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (rows and slopes).")
@_user_errors
def snr(run_dir, fresh, ks, ms, group_k, estimators, objectives, repeats, batch_size, seed,
        data_dir, out, threads, as_json) -> None:
    """Gradient signal-to-noise ratio, |mean| / std per parameter, of each objective and estimator
    over R estimates on one fixed batch, summarised for the encoder and the decoder (Rainforth
    et al. 2018). Writes OUT/snr.csv, OUT/snr_layers.csv and OUT/snr.png (SNR against K for
    IWAE, against M at fixed K per group for MIWAE, with fitted log-log slopes)."""
    from . import snr as snr_module
    from .data import load_dataset

    # everything about the arguments first: a bad value must not wait for the data
    if bool(run_dir) == fresh:
        raise click.UsageError("give either RUN_DIR or --fresh (a freshly initialised model), not both or neither")
    study = snr_module.plan_study(_names(objectives), _names(estimators), _int_list(ks, "--k"), _int_list(ms, "--m"),
                                  group_k, repeats, batch_size, seed)
    _threads(threads)
    if fresh:
        splits = load_dataset("mnist", data_dir)
        model = snr_module.fresh_model(splits, seed)
        source = f"fresh Burda 1-layer model (seed {seed})"
    else:
        from .rundir import open_run

        run = open_run(run_dir, data_dir=data_dir)  # never the initial weights of a run that has not trained
        model, splits = run.model, run.splits
        source = f"run {run_dir}"
    if not as_json:
        click.echo(f"{len(study.specs)} points x {repeats} gradient estimates on {batch_size} {splits.name} "
                   f"training images, {source}", err=True)
    progress = None if as_json else lambda row: click.echo(snr_module.row_text(row), err=True)
    result = snr_module.run_study(study, model, splits, out, source=source, progress=progress)
    click.echo(json.dumps(result, indent=1) if as_json else snr_module.study_text(result))


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
        raise click.BadParameter(f"expected comma-separated numbers like 0,0.5,1, got {value!r}", param_hint=name)
    if not out:
        raise click.BadParameter(f"expected at least one number, got {value!r}", param_hint=name)
    return out


@main.command(epilog=GRID_EXAMPLES)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder of the grid: runs/, grid.csv, grid.md, grid.png.")
@click.option("--total", type=int, default=64, show_default=True, help="M * K, samples per example.")
@click.option("--betas", default="0,0.25,0.5,0.75,1", show_default=True, help="CIWAE's ELBO weights, in [0, 1].")
@click.option("--ms", help="M values of MIWAE and PIWAE, each dividing --total.  [default: all divisors]")
@click.option("--epochs", type=int, default=4, show_default=True, help="The first N epochs of the schedule.")
@click.option("--schedule", type=click.Choice(["paper", "constant"]), default="paper", show_default=True)
@click.option("--train-subset", type=int, default=5000, show_default=True,
              help="Train on the first N training images (0: all).")
@click.option("--test-subset", type=int, default=500, show_default=True,
              help="Evaluate on the first N test images (0: all 10,000).")
@click.option("--log-p-k", type=int, default=5000, show_default=True, help="Samples of log p-hat = L_k.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--dry-run", is_flag=True, help="List the distinct runs and the grid points they serve; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-run lines.")
@_user_errors
def grid(out_dir, total, betas, ms, epochs, schedule, train_subset, test_subset, log_p_k, data_dir, seed, threads,
         dry_run, quiet) -> None:
    """Rainforth et al.'s (M, K) study: MIWAE and PIWAE at every (M, K) with M * K = --total, CIWAE
    over --betas; identical runs are trained once, finished runs are reused, killed ones resumed.

    Writes OUT/grid.csv (one row per grid point: IWAE-k, log p-hat = L_5000, -KL = their
    difference, active units, seconds), OUT/grid.md (beside the published numbers) and OUT/grid.png.
    The runs are an experiment of `iwae reproduce` (OUT/reproduction.json): `iwae report OUT` reports them.
    """
    from .grid import describe, grid_experiment, grid_table, run_grid

    if total < 1:
        raise ValueError(f"--total must be >= 1, got {total}")
    options = dict(total=total, betas=_float_list(betas, "--betas"), ms=_int_list(ms, "--ms"), epochs=epochs,
                   schedule=schedule, train_subset=train_subset or None, test_subset=test_subset or None,
                   log_p_k=log_p_k, seed=seed)
    if dry_run:
        click.echo(describe(grid_experiment(**options), out_dir))
        return
    rows = run_grid(out_dir, **options, data_dir=data_dir, threads=threads, progress=not quiet)
    click.echo(grid_table(rows))
    click.echo(f"wrote {Path(out_dir) / 'grid.csv'}, {Path(out_dir) / 'grid.md'} and {Path(out_dir) / 'grid.png'}")


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


@main.command(epilog=REPRODUCE_EXAMPLES)
@click.argument("experiment", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder: reproduction.json and runs/.  [default: runs/EXPERIMENT-PROTOCOL]")
@click.option("--protocol", default="short", show_default=True,
              help="paper (Burda et al.'s 3,280 epochs) or short (the CPU-sized truncation each file documents).")
@click.option("--datasets", help="Only the runs on these datasets (comma-separated).")
@click.option("--only", multiple=True,
              help="Only the runs whose names match these shell patterns (comma-separated; repeatable).")
@click.option("--dry-run", is_flag=True, help="List the runs, their state and estimated cost; train nothing.")
@click.option("--list", "list_experiments", is_flag=True, help="List the shipped experiments and exit.")
@click.option("--workers", type=int,
              help="Local worker processes, each pinned to its share of the CPU cores (or taking the GPUs in turn)."
                   "  [default: 1 on CPU, one per GPU with --device cuda]")
@click.option("--threads", type=int, help="torch threads per run.  [default: the cores divided among the workers]")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run each run as a task on the Ray cluster at ADDRESS (auto: the running one; local: a new one).")
@click.option("--cpus-per-run", type=int, default=1, show_default=True, help="CPUs each Ray task asks for.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override every run's epochs.")
@click.option("--train-subset", type=click.IntRange(min=1), help="Override: train on the first N training images.")
@click.option("--test-subset", type=click.IntRange(min=1), help="Override: evaluate on the first N test images.")
@click.option("--eval-k", type=click.IntRange(min=1), help="Override: samples of the test bound L_k (default 5000).")
@click.option("--quiet", is_flag=True, help="No per-run lines or progress bars.")
@_user_errors
def reproduce(experiment, out_dir, protocol, datasets, only, dry_run, list_experiments, workers, threads, ray_address,
              cpus_per_run, device, data_dir, epochs, train_subset, test_subset, eval_k, quiet) -> None:
    """Trains and evaluates every run of EXPERIMENT (a shipped name, or a path to an experiment file),
    skipping finished runs and resuming interrupted ones.

    Writes OUT/reproduction.json and OUT/runs/NAME/ (the run, result.json or error.json). A run
    that fails is reported and the others go on; the exit status is then 1.
    """
    from .experiments.engine import plan, plan_text, summary_text
    from .experiments.engine import reproduce as run_reproduction
    from .experiments.spec import load_experiment, shipped_experiments

    if list_experiments:
        for name in shipped_experiments():
            exp = load_experiment(name)
            click.echo(f"{name:<12} {len(exp.resolve('short'))} runs  {exp.title}")
        return
    if not experiment:
        raise click.UsageError("give an EXPERIMENT (see --list)")
    exp = load_experiment(experiment)
    overrides = {k: v for k, v in (("epochs", epochs), ("train_subset", train_subset),
                                   ("test_subset", test_subset), ("eval_k", eval_k)) if v is not None}
    dataset_list = datasets.split(",") if datasets is not None else None
    only = _names(",".join(only))
    out_dir = Path(out_dir or Path("runs") / f"{exp.name}-{protocol}")
    runs = exp.resolve(protocol, datasets=dataset_list, only=only or None, overrides=overrides)
    if dry_run:
        click.echo(plan_text(f"{exp.name}, protocol {protocol}", plan(runs, out_dir, data_dir), out_dir))
        return
    try:
        summary = run_reproduction(exp, out_dir, protocol=protocol, datasets=dataset_list, only=only or None,
                                   overrides=overrides, workers=workers, threads=threads, ray=ray_address,
                                   cpus_per_run=cpus_per_run, device=device, data_dir=data_dir, progress=not quiet)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to go on: finished runs are kept, the others resume "
                   "from their last epoch", err=True)
        sys.exit(130)
    text, failures = summary_text(exp.name, summary)
    click.echo(text)
    for line in failures:
        click.echo(line, err=True)
    if failures:
        sys.exit(1)


ANALYZE_EXAMPLES = """
\b
Examples:
  iwae analyze runs/iwae-k5                        # ELBO surgery on the first 5,000 training images
  iwae analyze runs/iwae-k5 --subset 59600 --samples 2 --json
"""


@main.command(epilog=ANALYZE_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--subset", type=click.IntRange(min=1), default=5000, show_default=True,
              help="The first N training images.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Samples z per image.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples (and of a binarization).")
@_user_errors
def analyze(run_dir, subset, samples, as_json, data_dir, seed) -> None:
    """ELBO surgery (Hoffman & Johnson 2016) of a trained 1-layer run on training images: reconstruction,
    average KL(q(z|x) || p(z)) = I[n; z] + KL(q(z) || p(z)), each with its standard error.

    The result is also written to RUN_DIR/surgery_n{N}.json.
    """
    from .analysis import run_surgery, surgery_text
    from .rundir import open_run

    run = open_run(run_dir, data_dir=data_dir)  # never the initial weights of a run that has not trained
    result = run_surgery(run.model, run.splits, run_dir, weights=run.weights, subset=subset, num_samples=samples,
                         seed=seed)
    click.echo(json.dumps(result, indent=1) if as_json else surgery_text(result))


QEW_EXAMPLES = """
\b
Examples:
  iwae qew runs/iwae-2d                                  # first 3 test images, k = 1,5,50 -> runs/iwae-2d/qew.png
  iwae qew runs/iwae-2d --images 5 --k 1,10,100 --out results/qew.pdf --json
"""


@main.command(epilog=QEW_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--images", type=int, default=3, show_default=True, help="The first N test images, one row each.")
@click.option("--k", "ks", default="1,5,50", show_default=True, help="Comma-separated k of q_EW.")
@click.option("--samples", type=int, default=20000, show_default=True, help="q_EW draws per image and k.")
@click.option("--grid-size", type=int, default=121, show_default=True, help="Cells per latent dimension.")
@click.option("--extent", default="auto", show_default=True,
              help="auto (a window per image around its posterior) or a half-width E: the grid [-E, E]^2.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Figure file (.png, .svg, .pdf); the JSON goes beside it.  [default: RUN_DIR/qew.png]")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--threads", type=int, help="CPU threads for torch.")
@_user_errors
def qew(run_dir, images, ks, samples, grid_size, extent, seed, out, as_json, data_dir, threads) -> None:
    """The IWAE's implicit posterior q_EW (Cremer et al. 2017) of a 2-D-latent, 1-layer run: for each
    of the first test images, the true posterior p(z|x) normalised on a grid, q(z|x) and q_EW for
    each k, with the total variation distance of each to p. Writes the figure and a JSON beside it."""
    from .figures import qew_run

    k_values = _int_list(ks, "--k")
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = qew_run(run_dir, out, images=images, ks=k_values, samples=samples, grid_size=grid_size,
                     extent=extent, seed=seed, data_dir=data_dir)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    rows, figure = result["rows"], Path(result["figure"])
    header = ("image", "k", "TV(q_EW,p)", "KL(p||q_EW)", "TV(q,p)", "KL(p||q)", "TV floor", "p edge mass")
    table = [(r["image"], r["k"], f"{r['tv_qew']:.3f}", f"{r['kl_qew']:.3f}", f"{r['tv_q']:.3f}", f"{r['kl_q']:.3f}",
              f"{r['tv_floor']:.3f}", f"{r['edge_mass']:.1e}") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in (header, *table):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    click.echo(f"TV floor: TV of a histogram of {samples} draws from p itself; KL(p||q_EW) smooths the histogram "
               f"and is biased upward by its noise")
    click.echo(f"wrote {figure} and {figure.with_suffix('.json')}")


SAMPLE_EXAMPLES = """
\b
Examples:
  iwae sample runs/iwae-k5                         # RUN_DIR/samples.png, 64 Bernoulli means
  iwae sample runs/iwae-k5 --binary --n 100 --out samples.pdf
  iwae sample runs/vamp --pseudo-inputs            # RUN_DIR/pseudo_inputs.png
"""


@main.command(epilog=SAMPLE_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--n", "n", type=int, default=64, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Figure file; .png, .svg or .pdf.  [default: RUN_DIR/samples.png or RUN_DIR/pseudo_inputs.png]")
@click.option("--probabilities/--binary", default=True, show_default=True,
              help="Show the Bernoulli means of p(x | z), or binary samples x ~ p(x | z).")
@click.option("--pseudo-inputs", is_flag=True, help="Draw the VampPrior's pseudo-inputs instead of samples.")
@_user_errors
def sample(run_dir, n, seed, out, probabilities, pseudo_inputs) -> None:
    """Samples of a trained run: z ~ p(z) (top-down through the layers), then p(x | z), as an image grid."""
    from .figures import sample_run

    figure = sample_run(run_dir, out, n=n, seed=seed, probabilities=probabilities, pseudo_inputs=pseudo_inputs)
    click.echo(f"wrote {figure}")


PLOT_EXAMPLES = """
\b
Examples:
  iwae plot runs/iwae-k5 --out figures/                     # all figures of one run
  iwae plot runs/vae-2d runs/iwae-2d --what latent --out figures/   # side by side
  iwae plot runs/vae runs/iwae --what curves --format pdf --out figures/
  iwae plot toy --out toy.png                               # bias of log-mean against k
"""
PLOT_KINDS = ("samples", "reconstructions", "latent", "activity", "curves")


@main.command(epilog=PLOT_EXAMPLES)
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--what", type=click.Choice(PLOT_KINDS + ("all",)), default="all", show_default=True,
              help="Which figure to draw.")
@click.option("--out", type=click.Path(), required=True,
              help="Folder of the figures (for `plot toy`: the figure file).")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True,
              help="File format of the figures.")
@click.option("--points", type=int, default=2000, show_default=True,
              help="Test images in the latent figure (and first N test images reconstructed: 10).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@_user_errors
def plot(runs, what, out, fmt, points, seed, data_dir) -> None:
    """Figures of one run, or of two side by side (e.g. VAE vs IWAE): samples, reconstructions of
    test images, latent spread of test points coloured by label, per-unit activity A_u, and
    training curves; written to OUT/<what>.<format>. `iwae plot toy --out FILE` draws the bias of
    E[log mean of k samples] against k for a two-valued variable instead.

    The latent figure draws the top stochastic layer: a 2-D latent directly, else its two units of
    largest A_u on the first 500 training images (as `iwae evaluate`). Activity uses the same images.
    """
    from .figures import plot_runs, plot_toy

    if runs[0] == "toy":
        if len(runs) > 1:
            raise click.UsageError("`iwae plot toy` takes no run directories")
        click.echo(f"wrote {plot_toy(out)}")
        return
    if len(runs) > 2:
        raise click.UsageError(f"give one or two run directories, got {len(runs)}")
    written = plot_runs(runs, out, what=what, fmt=fmt, points=points, seed=seed, data_dir=data_dir)
    click.echo("wrote " + ", ".join(str(p) for p in written))


REPORT_EXAMPLES = """
\b
Examples:
  iwae report runs/table1                  # report.md, report.html, report_figures/ in runs/table1
  iwae report runs --no-figures            # every runs/*/reproduction.json, tables only
"""


@main.command(epilog=REPORT_EXAMPLES)
@click.argument("out_dir", type=click.Path())
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder with the data files, for the latent and SNR figures.  [default: each run's data_dir]")
@click.option("--no-figures", is_flag=True, help="Tables only: draw no figures.")
@click.option("--per-seed", is_flag=True, help="Below each table of seed groups (mean ± sd), a row per seed's run.")
@click.option("--threads", type=int, help="CPU threads for torch (the samples, latent and SNR figures).")
@_user_errors
def report(out_dir, data_dir, no_figures, per_seed, threads) -> None:
    """Report of an `iwae reproduce` folder (or of every one in a parent folder): the protocol, one
    row per run with our numbers beside the published ones and their difference (flagged above
    0.3 nats), and the experiment's figures. Writes OUT_DIR/report.md and a self-contained
    OUT_DIR/report.html (figures embedded), with the figures as PNGs in OUT_DIR/report_figures/."""
    from .experiments.report import FIGURE_DIR, write_report

    _threads(threads)
    markdown_path, html_path = write_report(out_dir, data_dir=data_dir, figures=not no_figures, per_seed=per_seed)
    written = [markdown_path, html_path, Path(out_dir) / "report.json"]
    if not no_figures and (Path(out_dir) / FIGURE_DIR).is_dir():
        written.append(Path(out_dir) / FIGURE_DIR)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
