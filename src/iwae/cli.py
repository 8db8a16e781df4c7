"""The ``iwae`` command line: the only reader of argv and config files.

    iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5
    iwae evaluate runs/iwae-k5 --k 5000

Each command builds the same configs as the Python API (:class:`iwae.train.TrainConfig`,
:func:`iwae.evaluate.evaluate`) and exits with status 2 and one line on bad input.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .checkpoint import CheckpointError, atomic_write
from .data import DataError
from .errors import ConfigError
from .estimators import ESTIMATORS
from .objectives import OBJECTIVES

# user errors: reported in one line with exit status 2, never as a traceback
USER_ERRORS = (ValueError, DataError, CheckpointError, FileExistsError, FileNotFoundError, FloatingPointError)


class UserError(click.ClickException):
    """Bad input that is not about the command's syntax: one line, exit status 2."""

    exit_code = 2


def _flags(ctx: click.Context) -> dict[str, str]:
    """Setting name -> the flag it was given as, for the command's options: a ConfigError about
    ``train_subset`` then reads ``--train-subset``. Settings read from a config file (``--config``,
    ``--resume``) keep their names, which are that file's keys."""
    from_file = bool(ctx.params.get("config_file") or ctx.params.get("resume"))
    flags = {}
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        if from_file and ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        long = [o for o in param.opts if o.startswith("--")]
        flags[param.name] = long[0] if long else param.opts[0]
    return flags


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as e:
            message = e.renamed(_flags(click.get_current_context())) if isinstance(e, ConfigError) else str(e)
            raise UserError(message.splitlines()[0] if message else type(e).__name__) from None
        except KeyboardInterrupt:
            click.echo("interrupted; resume with --resume RUN_DIR", err=True)
            sys.exit(130)

    return wrapper


def _echo_table(rows: list[tuple[str, str]]) -> None:
    """Prints (label, value) rows with the values aligned."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")


def _int_list(value: str | None, name: str) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 100,50, got {value!r}", param_hint=name)
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=name)
    return out


def _hidden_dims(value: str | None) -> list[list[int]] | None:
    if value is None:
        return None
    return [_int_list(part, "--hidden-dims") for part in value.split("/")]


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
@click.option("--objective", type=click.Choice(OBJECTIVES), default="iwae", show_default=True,
              help="Training objective.")
@click.option("--k", "k", type=int, default=5, show_default=True,
              help="Total samples per example (for miwae/piwae: M groups of k/M).")
@click.option("--m", "m", type=int, default=1, show_default=True, help="Groups M, for miwae and piwae.")
@click.option("--beta", type=float, default=0.5, show_default=True, help="ELBO weight in [0, 1], for ciwae.")
@click.option("--estimator", type=click.Choice(ESTIMATORS), default="reparam", show_default=True,
              help="The encoder's gradient estimator (the decoder always gets its objective's gradient).")
@click.option("--layers", type=int, default=None, help="Stochastic layers, 1 or 2 for Burda et al.'s nets.  [default: 1]")
@click.option("--latent-dims", help="Units per stochastic layer, bottom-up, e.g. 50, 100,50 or 2.")
@click.option("--hidden-dims", help="Tanh widths per stochastic layer, layers separated by '/', e.g. 200,200/100,100.")
@click.option("--prior", type=click.Choice(["normal", "mog", "vamp"]), default="normal", show_default=True,
              help="p(z) of the top layer: N(0, I), a learnable mixture of Gaussians, or the VampPrior.")
@click.option("--components", type=int,
              help="Mixture components (mog) or pseudo-inputs (vamp); required for them.")
@click.option("--learn-mixture-weights", is_flag=True, help="mog: learn the mixture weights (else uniform).")
@click.option("--kl-warmup", type=int, default=0, show_default=True,
              help="vae only: epochs over which the weight of log p(z) - log q(z|x) rises from 0 to 1.")
@click.option("--dataset", default="mnist", show_default=True,
              help="mnist, binarized-mnist, fashion-mnist, omniglot, or npz:PATH.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files (else $IWAE_DATA_DIR, the cache, download).")
@click.option("--batch-size", type=int, default=20, show_default=True)
@click.option("--epochs", type=int, help="Run the first N epochs of the schedule.  [default: all 3,280 of the paper schedule]")
@click.option("--schedule", type=click.Choice(["paper", "constant"]), default="paper", show_default=True,
              help="paper: 3^i epochs at lr*10^(-i/7), i=0..7; constant: --lr throughout.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Initial or constant learning rate.")
@click.option("--beta1", type=float, default=0.9, show_default=True, help="Adam beta1 (Burda et al.'s code: 0.99).")
@click.option("--valid-k", type=int, help="Samples for the per-epoch validation L_k.  [default: --k]")
@click.option("--train-subset", type=int, help="Train on the first N training examples only.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda or cuda:N. A run resumes on the device type it was trained on (CPU and CUDA "
                   "draw other random numbers).")
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--checkpoint-every", type=int,
              help="Also checkpoint every N optimizer steps, so that a killed run loses at most N steps.  "
                   "[default: at the end of each epoch]")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create.")
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
    from .train import TrainConfig, train as run_training

    given = {name for name in options if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    options["latent_dims"] = _int_list(options["latent_dims"], "--latent-dims")
    options["hidden_dims"] = _hidden_dims(options["hidden_dims"])
    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise CheckpointError(f"run directory {run_dir} not found")
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"cannot resume {run_dir}: it holds no config.yaml (the run was stopped before "
                                  f"it started); train it again with --out {run_dir}")
        values = TrainConfig.from_yaml(run_dir / "config.yaml").to_dict()
        # --device may change within a device type (cuda:0 -> cuda:1); train() refuses another type
        changeable = {"epochs", "device", "threads", "checkpoint_every"}
        fixed = given - changeable - {"out"}
        if fixed:
            raise ValueError(f"cannot change {', '.join('--' + f.replace('_', '-') for f in sorted(fixed))} "
                             f"when resuming; only --epochs, --device, --threads and --checkpoint-every")
        values.update({name: options[name] for name in given & changeable})
        values["out"] = str(run_dir)
        config = TrainConfig.from_dict(values)  # train() writes it to config.yaml once it is checked
    else:
        values = TrainConfig.from_yaml(config_file).to_dict() if config_file else {}
        for name, value in options.items():
            if name in given or not config_file:
                values[name] = value
        if "layers" not in given and ("latent_dims" in given or values.get("layers") is None):
            # --latent-dims 100,50 implies 2 layers, also over a config file's setting
            values["layers"] = len(values["latent_dims"]) if values.get("latent_dims") else 1
        if not values.get("out"):
            raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
        config = TrainConfig.from_dict(values)
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
    import torch

    from .evaluate import evaluate as run_evaluation

    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}", ["k"])
    if not memory_budget > 0:
        raise ConfigError(f"memory_budget must be > 0 GiB, got {memory_budget}", ["memory_budget"])
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}", ["threads"])
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    if threads:
        torch.set_num_threads(threads)
    result = run_evaluation(run_dir, k=k, test_subset=test_subset, data_dir=data_dir,
                            memory_budget=int(memory_budget * (1 << 30)), seed=seed, device=device,
                            progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    measured, images, runtime = result["model"], result["test_images"], result["runtime"]
    rows = [
        ("test NLL (nats)", f"{result['nll']:.2f} ± {result['nll_stderr']:.2f}  (-mean L_{k} ± s.e., seed {seed})"),
        ("test images", f"the first {images['first']} of {images['of']} ({images['dataset']})"),
        ("active units", " + ".join(map(str, result["active_units_per_layer"]))
         + (f" = {result['active_units']}" if len(result["active_units_per_layer"]) > 1 else "")),
        ("model", f"epoch {measured['epoch']} of {measured['epochs_planned']}, "
                  f"model.safetensors sha256 {measured['sha256']}"),
        ("device", f"{runtime['device']}" + (f" ({runtime['gpu']})" if runtime["gpu"] else "")
         + f", torch {runtime['torch']}" + (f", CUDA {runtime['cuda']}" if runtime["cuda"] else "")),
        ("time", f"{result['seconds']:.1f} s ({result['images_per_s']:.1f} images/s)"),
        ("written", ", ".join(str(Path(run_dir) / f) for f in result["files"].values())),
    ]
    _echo_table(rows)


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
@click.option("--m", "ms", default="1,4,16", show_default=True, help="Groups M for miwae and piwae.")
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
@click.pass_context
@_user_errors
def snr(ctx: click.Context, run_dir, fresh, ks, ms, group_k, estimators, objectives, repeats, batch_size, seed,
        data_dir, out, threads, as_json) -> None:
    """Gradient signal-to-noise ratio, |mean| / std per parameter, of each objective and estimator
    over R estimates on one fixed batch, summarised for the encoder and the decoder (Rainforth
    et al. 2018). Writes OUT/snr.csv, OUT/snr_layers.csv and OUT/snr.png (SNR against K for
    IWAE, against M at fixed K per group for MIWAE, with fitted log-log slopes)."""
    import csv
    import io

    import torch

    from . import snr as snr_module
    from .data import load_dataset
    from .estimators import ObjectiveSpec

    # everything about the arguments first: a bad value must not wait for the data
    if bool(run_dir) == fresh:
        raise click.UsageError("give either RUN_DIR or --fresh (a freshly initialised model), not both or neither")
    if repeats < 2:
        raise ValueError(f"--repeats must be >= 2 to estimate a standard deviation, got {repeats}")
    if group_k < 1:
        raise ValueError(f"--group-k must be >= 1, got {group_k}")
    k_values, m_values = _int_list(ks, "--k"), _int_list(ms, "--m")
    chosen = {}
    for flag, value, known in (("--estimators", estimators, ESTIMATORS), ("--objectives", objectives, OBJECTIVES)):
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [v for v in names if v not in known]
        if unknown or not names:
            raise ValueError(f"{flag}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                             f"choose from {', '.join(known)}")
        chosen[flag] = list(dict.fromkeys(names))
    grouped = [o for o in chosen["--objectives"] if o in ("miwae", "piwae")]
    if not grouped and ctx.get_parameter_source("ms") == ParameterSource.COMMANDLINE:
        raise ValueError("--m applies to miwae and piwae only; add one of them to --objectives or drop --m")
    specs = []  # ObjectiveSpec checks each pair, e.g. rws is defined for iwae only
    for objective in chosen["--objectives"]:
        for estimator in chosen["--estimators"]:
            if objective in grouped:
                specs += [ObjectiveSpec(objective, m * group_k, m, estimator=estimator) for m in m_values]
            else:
                specs += [ObjectiveSpec(objective, k, estimator=estimator) for k in k_values]
    if threads:
        torch.set_num_threads(threads)

    if fresh:
        splits = load_dataset("mnist", data_dir)
        torch.manual_seed(seed)
        from .models import VAE, ModelConfig

        model = VAE(ModelConfig.burda(1, splits.dim))
        model.init_output_bias(splits.train.mean(0))  # as training does
        source = f"fresh Burda 1-layer model (seed {seed})"
    else:
        from .rundir import open_run

        run = open_run(run_dir, data_dir=data_dir)  # never the initial weights of a run that has not trained
        model, splits = run.model, run.splits
        source = f"run {run_dir}"
    x = snr_module.fixed_batch(splits, batch_size)

    def report(row: dict) -> None:
        if not as_json:
            click.echo(f"  {row['objective']} m={row['m']} k={row['k']} {row['estimator']}: "
                       f"encoder {row['encoder_median']:.3g}, decoder {row['decoder_median']:.3g} "
                       f"(median SNR), {row['seconds']:.1f} s", err=True)

    if not as_json:
        click.echo(f"{len(specs)} points x {repeats} gradient estimates on {batch_size} {splits.name} "
                   f"training images, {source}", err=True)
    rows = snr_module.snr_sweep(model, x, specs, repeats, seed=seed, per_layer=True, progress=report)
    slopes = snr_module.curve_slopes(rows)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in (("snr.csv", [{k: v for k, v in r.items() if k != "layers"} for r in rows]),
                          ("snr_layers.csv", [{"objective": r["objective"], "m": r["m"], "k": r["k"],
                                               "estimator": r["estimator"], **layer}
                                              for r in rows for layer in r["layers"]])):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        with atomic_write(out_dir / name) as f:
            f.write(buf.getvalue())
    figure = snr_module.plot_snr(rows, out_dir / "snr.png", title=f"Gradient SNR, {source}, R = {repeats}")

    if as_json:
        click.echo(json.dumps({"rows": [{k: v for k, v in r.items() if k != "layers"} for r in rows],
                               "slopes": slopes, "figure": str(figure)}, indent=1))
        return
    header = ("objective", "estimator", "enc mean", "enc median", "dec mean", "dec median", "ESS", "excl enc")
    table = [(ObjectiveSpec(r["objective"], r["k"], r["m"]).label, r["estimator"],
              *(f"{r[c]:.3g}" for c in ("encoder_mean", "encoder_median", "decoder_mean", "decoder_median")),
              f"{r['ess']:.2f}/{r['k_per_group']}", str(r["encoder_excluded"])) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in (header, *table):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    click.echo("SNR = |mean| / std per scalar parameter over R estimates; excluded: components with std 0")
    for s in slopes:
        at = f" at K = {s['k_per_group']}" if s["against"] == "M" else ""
        click.echo(f"slope of log median SNR against log {s['against']}: {s['objective']}{at}, "
                   f"{s['estimator']}, {s['part']}: {s['slope']:+.2f}")
    click.echo(f"wrote {out_dir / 'snr.csv'}, {out_dir / 'snr_layers.csv'} and {figure}")


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


def _format_seconds(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


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
@click.option("--epochs", type=int, help="Override every run's epochs.")
@click.option("--train-subset", type=int, help="Override: train on the first N training images.")
@click.option("--test-subset", type=int, help="Override: evaluate on the first N test images.")
@click.option("--eval-k", type=int, help="Override: samples of the test bound L_k (default 5000).")
@click.option("--quiet", is_flag=True, help="No per-run lines or progress bars.")
@_user_errors
def reproduce(experiment, out_dir, protocol, datasets, only, dry_run, list_experiments, workers, threads, ray_address,
              cpus_per_run, device, data_dir, epochs, train_subset, test_subset, eval_k, quiet) -> None:
    """Trains and evaluates every run of EXPERIMENT (a shipped name, or a path to an experiment file),
    skipping finished runs and resuming interrupted ones.

    Writes OUT/reproduction.json and OUT/runs/NAME/ (the run, result.json or error.json). A run
    that fails is reported and the others go on; the exit status is then 1.
    """
    from .experiments.engine import plan
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
    for key, value in overrides.items():
        if value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    dataset_list = datasets.split(",") if datasets is not None else None
    only = [p.strip() for pattern in only for p in pattern.split(",") if p.strip()]
    out_dir = Path(out_dir or Path("runs") / f"{exp.name}-{protocol}")
    runs = exp.resolve(protocol, datasets=dataset_list, only=only or None, overrides=overrides)
    if dry_run:
        planned = plan(runs, out_dir, data_dir)
        todo = sum(p.seconds for p in planned if p.state != "done")
        click.echo(f"{exp.name}, protocol {protocol}: {len(runs)} runs in {out_dir / 'runs'}")
        width = max(len(p.spec.name) for p in planned)
        for p in planned:
            c = p.spec.config
            after = f", continues {p.spec.after}" if p.spec.after else ""
            # a run whose data is missing cannot start until it is downloaded (or found): say so
            no_data = ", its data is missing" if p.missing_data and p.state != "done" else ""
            click.echo(f"  {p.spec.name:<{width}}  {p.state:<7}  {c['objective']} k={c['k']}, {c['layers']} layer(s), "
                       f"{p.spec.total_epochs} epochs, L_{p.spec.eval['k']} on "
                       f"{p.spec.eval['test_subset'] or 'all'} test images{after}  ~{_format_seconds(p.seconds)}"
                       f"{no_data}")
        missing = sorted({c for p in planned if p.state != "done" for c in p.missing_data})
        click.echo(f"estimated cost of what is left: {_format_seconds(todo)} of one run at a time on a 2-core CPU "
                   f"(rough; divide by --workers on a machine with the cores for them)")
        if missing:
            click.echo(f"data missing for {sum(bool(p.missing_data) and p.state != 'done' for p in planned)} run(s) "
                       f"({', '.join(missing)}): they download it when they start, or fail offline; "
                       f"pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it")
        return
    try:
        summary = run_reproduction(exp, out_dir, protocol=protocol, datasets=dataset_list, only=only or None,
                                   overrides=overrides, workers=workers, threads=threads, ray=ray_address,
                                   cpus_per_run=cpus_per_run, device=device, data_dir=data_dir, progress=not quiet)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to go on: finished runs are kept, the others resume "
                   "from their last epoch", err=True)
        sys.exit(130)
    counts = {s: list(summary.status.values()).count(s) for s in ("done", "skipped", "failed", "blocked")}
    click.echo(f"{exp.name}: {counts['done']} run(s) done, {counts['skipped']} finished before, "
               f"{counts['failed']} failed, {counts['blocked']} blocked; see {out_dir / 'reproduction.json'}; "
               f"report with: iwae report {out_dir}")
    if summary.failed:
        for name in summary.failed:
            error = summary.results.get(name, {}).get("error", "its dependency failed")
            click.echo(f"  {name}: {error}", err=True)
        sys.exit(1)


ANALYZE_EXAMPLES = """
\b
Examples:
  iwae analyze runs/iwae-k5                        # ELBO surgery on the first 5,000 training images
  iwae analyze runs/iwae-k5 --subset 59600 --samples 2 --json
"""


@main.command(epilog=ANALYZE_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--subset", type=int, default=5000, show_default=True, help="The first N training images.")
@click.option("--samples", type=int, default=1, show_default=True, help="Samples z per image.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples (and of a binarization).")
@_user_errors
def analyze(run_dir, subset, samples, as_json, data_dir, seed) -> None:
    """ELBO surgery (Hoffman & Johnson 2016) of a trained 1-layer run on training images: reconstruction,
    average KL(q(z|x) || p(z)) = I[n; z] + KL(q(z) || p(z)), each with its standard error.

    The result is also written to RUN_DIR/surgery_n{N}.json.
    """
    import torch

    from .analysis import elbo_surgery
    from .data import fixed_binarization
    from .rundir import open_run, write_surgery

    if subset < 1:
        raise ValueError(f"--subset must be >= 1, got {subset}")
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    run = open_run(run_dir, data_dir=data_dir)  # never the initial weights of a run that has not trained
    model, weights, splits = run.model, run.weights, run.splits
    x = splits.train[:subset]
    if splits.dynamic:  # grey levels: binarize once, reproducibly
        x = torch.from_numpy(fixed_binarization(x.numpy(), seed))
    result = elbo_surgery(model, x, num_samples=samples, generator=torch.Generator().manual_seed(seed))
    result["seed"] = seed
    result["model"] = weights  # which weights: the epoch and SHA-256 of model.safetensors
    write_surgery(run_dir, result)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    r = result
    analytic = f"  (analytic {r['avg_kl_analytic']:.3f})" if r["avg_kl_analytic"] is not None else ""
    rows = [
        ("reconstruction", f"{r['reconstruction']:.3f} ± {r['reconstruction_stderr']:.3f}  (E_q log p(x|z))"),
        ("average KL", f"{r['avg_kl']:.3f} ± {r['avg_kl_stderr']:.3f}{analytic}"),
        ("I[n;z]", f"{r['mutual_info']:.3f} ± {r['mutual_info_stderr']:.3f}  (log N = {r['log_n']:.2f})"),
        ("marginal KL", f"{r['marginal_kl']:.3f} ± {r['marginal_kl_stderr']:.3f}  (KL(q(z) || p(z)))"),
        ("ELBO", f"{r['elbo']:.3f}"),
        ("residual", f"{r['identity_residual']:.2e}  (average KL - I - marginal KL)"),
        ("images", f"{r['n']} training images x {r['num_samples']} samples"),
    ]
    _echo_table(rows)


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

    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    markdown_path, html_path = write_report(out_dir, data_dir=data_dir, figures=not no_figures, per_seed=per_seed)
    written = [markdown_path, html_path, Path(out_dir) / "report.json"]
    if not no_figures and (Path(out_dir) / FIGURE_DIR).is_dir():
        written.append(Path(out_dir) / FIGURE_DIR)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
