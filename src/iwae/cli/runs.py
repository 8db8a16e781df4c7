"""``iwae train``: the command that makes runs, one or a folder of seeds (the commands that measure them
are in :mod:`iwae.cli.measure`)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from click.core import ParameterSource

from ..config import TrainConfig
from .support import UserError as _UserError
from .support import interrupted as _interrupted
from .support import setting_options
from .support import user_errors as _user_errors

# Each command imports the library code it calls when it runs, not here: that code loads PyTorch, which
# ``iwae --help`` and ``iwae COMMAND --help`` must not (the group imports this module to show the help;
# tests/test_cli_startup.py checks it).


TRAIN_EXAMPLES = """
\b
Examples:
  iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5
  iwae train --objective miwae --k 64 --m 8 --epochs 40 --out runs/miwae-8-8     # MIWAE(8,8)
  iwae train --objective ciwae --k 64 --beta 0.5 --layers 2 --epochs 10 --out runs/ciwae
  iwae train --objective iwae --k 50 --estimator dreg --epochs 10 --out runs/iwae-dreg
  iwae train --objective vae --latent-dims 2 --epochs 5 --train-subset 5000 --out runs/vae-2d
  iwae train --resume runs/iwae-k5 --epochs 40                                 # continue, extend
  iwae train --objective iwae --k 5 --seeds 0,1,2 --epochs 10 --out runs/iwae-seeds  # runs/iwae-seeds/seed0 ...
  iwae train --resume runs/iwae-seeds --epochs 20             # all its seed*/ members
  iwae train --objective iwae --k 1 --compile step --epochs 10 --out runs/iwae-k1   # the step as one program

Without --epochs a run trains Burda et al.'s whole schedule, 3,280 epochs (weeks on a CPU); the
first epoch's time and the estimate for the rest are printed when it starts. On a busy machine,
--threads 1 is often many times faster than torch's default.
"""


@click.command(epilog=TRAIN_EXAMPLES)
@setting_options(TrainConfig)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Start from a config.yaml (e.g. a run's); flags given on the command line override it.",
)
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="With --resume: go on although a data file's SHA-256 changed since the checkpoint (the weights record it).",
)
@click.option(
    "--seeds",
    help="Train these seeds (e.g. 0,1,2,3), each a run of its own in OUT/seed0, OUT/seed1, ...; "
    "one seed is --seed (OUT itself).",
)
@click.option(
    "--batch/--no-batch",
    default=None,
    help="With --seeds: train them together as one batched model, or one after another. Default: "
    "by device, measured (batched on the CPU, 1.9-2.4x faster there, and on CUDA).",
)
@click.pass_context
@_user_errors
def train(
    ctx: click.Context, config_file, resume, overwrite, quiet, accept_changed_data, seeds, batch, **options
) -> None:
    """Train a model and write a run directory (config, weights, checkpoint, metrics)."""
    from ..rundir import finished_training, read_checkpoint
    from ..train import configure, resume_config
    from ..train import train as run_training

    given = {name: v for name, v in options.items() if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if not (resume or given.get("out") or config_file):
        raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
    seed_list = None
    if seeds is not None:
        seed_list = _seed_list(seeds)
        if "seed" in given:
            raise click.UsageError("give --seed or --seeds, not both")
        if len(seed_list) == 1:  # one seed: the run of --seed, in OUT itself
            given["seed"] = seed_list[0]
            seed_list = None
    members = _member_dirs(resume) if resume and seed_list is None else None
    if seed_list is not None or members:
        _train_seeds(given, config_file, resume, overwrite, quiet, seed_list, members, batch, accept_changed_data)
        return
    if batch is not None:
        raise click.UsageError("--batch and --no-batch apply to --seeds (or to --resume of a folder of seed runs)")
    config = resume_config(resume, given) if resume else configure(given, base=config_file)
    _interrupted(lambda: _resume_hint(config.out))
    finished = False
    if resume and (Path(resume) / "checkpoint.safetensors").is_file():
        # train() says there is nothing to do
        finished = finished_training(read_checkpoint(resume)[1], config.total_epochs)
    run_dir = run_training(
        config, resume=bool(resume), overwrite=overwrite, progress=not quiet, accept_changed_data=accept_changed_data
    )
    stopped = (read_checkpoint(run_dir)[1].get("early_stopping") or {}) if config.early_stopping is not None else {}
    if not finished and stopped.get("stopped"):
        click.echo(
            f"trained {config.spec.label}: early stopping ended it after epoch "
            f"{read_checkpoint(run_dir)[1]['epoch']} of {config.total_epochs}; model.safetensors holds the best, "
            f"epoch {stopped['best_epoch']}: {run_dir}"
        )
    elif not finished:
        click.echo(f"trained {config.spec.label} for {config.total_epochs} epochs: {run_dir}")
    click.echo(f"evaluate it with: iwae evaluate {run_dir}")


def _seed_list(value: str) -> list[int]:
    """``--seeds 0,1,2,3`` as [0, 1, 2, 3]: distinct integers >= 0."""
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated seeds like 0,1,2,3, got {value!r}", param_hint="--seeds"
        ) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct seeds >= 0, got {value!r}", param_hint="--seeds")
    return seeds


def _member_dirs(folder: str) -> list[Path] | None:
    """The member folders (seed<N>/ with a config.yaml) of a folder of ``--seeds`` runs, which holds none itself."""
    from ..rundir import seed_members

    return seed_members(folder) or None


def _resume_hint(folder: str | Path, members: bool = False) -> str:
    """What a Ctrl-C of ``iwae train`` prints: the command that resumes the run (or the folder of seeds)."""
    path = Path(folder)
    started = any((p / "config.yaml").is_file() for p in ([path] if not members else path.glob("seed*")))
    if not started:
        return "interrupted before the run started; nothing to resume: run the same command again"
    return f"interrupted; resume with: iwae train --resume {shlex.quote(str(path))}"


def _train_seeds(
    given: dict,
    config_file,
    resume,
    overwrite: bool,
    quiet: bool,
    seeds: list[int] | None,
    members: list[Path] | None,
    batch: bool | None,
    accept_changed_data: bool = False,
) -> None:
    """``--seeds``: the seeds' runs (or, resumed, the member folders), as one batched model or one after
    another (``batch``; None: :func:`iwae.members.batch_by_default`)."""
    from ..members import train_members
    from ..train import configure, resume_config

    if resume:
        folders = members or [Path(resume) / f"seed{s}" for s in seeds]
        configs = [resume_config(folder, given) for folder in folders]
        out = resume
    else:
        out = given.get("out") or configure(given, base=config_file).out
        configs = [configure({**given, "seed": s, "out": str(Path(out) / f"seed{s}")}, base=config_file) for s in seeds]
    _interrupted(lambda: _resume_hint(out, members=True))
    results = train_members(
        configs,
        resume=bool(resume),
        overwrite=overwrite,
        progress=not quiet,
        batch=batch,
        accept_changed_data=accept_changed_data,
    )
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.status == "trained":
            click.echo(
                f"trained {r.config.spec.label} (seed {r.config.seed}) for {r.config.total_epochs} epochs: {r.run_dir}"
            )
    if len(failed) < len(results):
        click.echo(f"evaluate them with: iwae evaluate {out}  (each seed, then mean ± sd over seeds)")
    if failed:
        raise _UserError("; ".join(f"{r.run_dir}: {r.error}" for r in failed))
