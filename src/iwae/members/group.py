"""Which runs may train together as one batched model: the settings members may differ in, and the check
of a group."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "MAY_DIFFER",
    "BATCH_BY_DEFAULT",
    "MemberResult",
    "batch_by_default",
    "check_group",
    "group_key",
    "stackable",
]

# the settings in which the members of one group may differ: what a member's own loss, random stream
# and folder depend on; every other TrainConfig setting (also those added later) must be equal
MAY_DIFFER = ("seed", "objective", "estimator", "beta", "m", "kl_warmup", "valid_k", "out", "init_from", "init_sha256")


# Whether runs that may stack train as one batched model by default, by device type: a measured rule
# (issue 24; docs: guide/members.md, "When members are batched"). Batching changes a run's numbers by
# float rounding (the stacked matrix products sum in another order), so it is worth it only where it is
# faster than the runs one after another, measured through the command line (`iwae train --seeds
# 0,1,2,3` against four single runs, k = 1 and 5, B = 20, start-up cancelled by differencing two run
# sizes: benchmarks/train_rate.py --seeds 0,1,2,3 --batch-members / --no-batch-members):
# - cpu: yes. Measured through the command line with nothing else running (2 threads, k = 1, B = 20,
#   15:17 UTC 6 Dec 2026, batched and one after another alternating, 2 rounds): 654 and 892 member-steps/s
#   batched against 270 and 469 one after another, 1.9-2.4x. (An earlier rule said no, from a 0.85x
#   measured before the loop's per-step overhead was cut; a loaded rerun gave 1.16x and 2.73x.)
# - cuda: yes, as before (not measured on a GPU yet: benchmarks/gpu_check.sh times members-4 and -10).
# `--batch` / `--no-batch` (iwae train --seeds, iwae reproduce) and train_members(batch=...) override it.
BATCH_BY_DEFAULT = {"cpu": True, "cuda": True}


def batch_by_default(device: str) -> bool:
    """Whether members train as one batched model on ``device`` (``cpu``, ``cuda``, ``cuda:N``) unless
    told otherwise (:data:`BATCH_BY_DEFAULT`)."""
    return BATCH_BY_DEFAULT.get(str(device).split(":")[0], False)


@dataclass
class MemberResult:
    """What became of one member: ``status`` is ``trained``, ``trained before`` (nothing left to train)
    or ``failed`` (``error`` is the exception a single run would have raised, e.g. FloatingPointError)."""

    config: object  # the member's TrainConfig
    run_dir: Path
    status: str
    error: BaseException | None = None


# ----------------------------------------------------------------------------- which runs may share a model
def check_group(configs: list) -> None:
    """Refuses a group whose members differ in a setting outside :data:`MAY_DIFFER`, or share a folder.

    Raises:
        ConfigError: naming the first differing setting, e.g. ``members differ in batch_size (20 vs 100)``.
    """
    if not configs:
        raise ConfigError("no runs to train", [])
    first = configs[0].to_dict()
    for other in configs[1:]:
        values = other.to_dict()
        for f in fields(configs[0]):
            if f.name not in MAY_DIFFER and values[f.name] != first[f.name]:
                raise ConfigError(
                    f"runs trained as one batched model must share {f.name}, but the members differ in "
                    f"it ({first[f.name]!r} vs {values[f.name]!r}); train them in separate groups",
                    [f.name],
                )
    outs = [str(Path(c.out).resolve()) for c in configs]
    if len(set(outs)) != len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        raise ConfigError(f"two members would write the same run directory {dup}; give each its own out", ["out"])


def group_key(config) -> tuple:
    """Configs with equal keys may train as one batched model: their settings outside :data:`MAY_DIFFER`."""
    values = config.to_dict()
    return tuple((f.name, repr(values[f.name])) for f in fields(config) if f.name not in MAY_DIFFER)


def stackable(config) -> str | None:
    """None if :class:`StackedVAE` can stack models of ``config``; else why not (they then train in turn)."""
    if config.model != "vae":  # the HVAE's coupled networks have no stacked implementation
        return f"the {config.model} model"
    if config.early_stopping is not None:  # each member would stop at its own epoch
        return "early stopping"
    if config.optimizer != "adam":  # the stacked optimiser is Adam
        return f"the {config.optimizer} optimizer"
    if config.prior != "normal":
        return f"the {config.prior} prior"
    # StackedVAE implements the tanh MLPs with the Bernoulli likelihood in float32, eagerly
    for name, plain in (("likelihood", "bernoulli"), ("network", "mlp"), ("precision", "32"), ("compile", "none")):
        if getattr(config, name) != plain:
            return f"{name} {getattr(config, name)}"
    return None
