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
from .estimators import ESTIMATORS
from .objectives import OBJECTIVES

# user errors: reported in one line with exit status 2, never as a traceback
USER_ERRORS = (ValueError, DataError, CheckpointError, FileExistsError, FileNotFoundError, FloatingPointError)


class UserError(click.ClickException):
    """Bad input that is not about the command's syntax: one line, exit status 2."""

    exit_code = 2


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as e:
            raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        except KeyboardInterrupt:
            click.echo("interrupted; resume with --resume RUN_DIR", err=True)
            sys.exit(130)

    return wrapper


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
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--threads", type=int, help="CPU threads for torch.")
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
    from .train import TrainConfig, train as run_training

    given = {name for name in options if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    options["latent_dims"] = _int_list(options["latent_dims"], "--latent-dims")
    options["hidden_dims"] = _hidden_dims(options["hidden_dims"])
    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise CheckpointError(f"run directory {run_dir} not found")
        values = TrainConfig.from_yaml(run_dir / "config.yaml").to_dict()
        changeable = {"epochs", "device", "threads"}
        fixed = given - changeable - {"out"}
        if fixed:
            raise ValueError(f"cannot change {', '.join('--' + f.replace('_', '-') for f in sorted(fixed))} "
                             f"when resuming; only --epochs, --device and --threads")
        values.update({name: options[name] for name in given & changeable})
        values["out"] = str(run_dir)
        config = TrainConfig.from_dict(values)
        with atomic_write(run_dir / "config.yaml") as f:
            import yaml

            yaml.safe_dump(config.to_dict(), f, sort_keys=False)
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
    run_dir = run_training(config, resume=bool(resume), overwrite=overwrite, progress=not quiet)
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
    """Test NLL = -mean L_k (with standard error) and active units of a trained run.

    The result is also written to RUN_DIR/eval_k{K}.json (eval_k{K}_n{N}.json for a subset).
    """
    import torch

    from .evaluate import evaluate as run_evaluation

    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    if threads:
        torch.set_num_threads(threads)
    result = run_evaluation(run_dir, k=k, test_subset=test_subset, data_dir=data_dir,
                            memory_budget=int(memory_budget * (1 << 30)), seed=seed, device=device,
                            progress=not quiet and not as_json)
    name = f"eval_k{k}" + (f"_n{test_subset}" if test_subset else "") + ".json"
    with atomic_write(Path(run_dir) / name) as f:
        json.dump(result, f, indent=1)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    rows = [
        ("test NLL (nats)", f"{result['nll']:.2f} ± {result['nll_stderr']:.2f}  (-mean L_{k} ± s.e.)"),
        ("test images", str(result["n_test"])),
        ("active units", " + ".join(map(str, result["active_units_per_layer"]))
         + (f" = {result['active_units']}" if len(result["active_units_per_layer"]) > 1 else "")),
        ("time", f"{result['seconds']:.1f} s ({result['images_per_s']:.1f} images/s)"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
