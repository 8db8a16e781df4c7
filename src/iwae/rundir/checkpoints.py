"""checkpoint.safetensors: everything a run needs to resume (weights, Adam's state, the random streams,
the epoch and step, the metrics so far, the place in an interrupted epoch, early stopping's state and best
weights), whether it has anything left to train, and whether a folder holds anything trained at all."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_tensors, read_metadata, save_tensors
from ..errors import CheckpointError
from ..models import VAE
from .folder import visible
from .group import STAGED, committed_stage, header
from .integrity import check_belongs, check_finite, identity_record
from .layout import CHECKPOINT, METRICS, MODEL, START_FILES
from .weights import model_digest, model_epoch

__all__ = [
    "EpochState",
    "save_checkpoint",
    "read_checkpoint",
    "has_checkpoint",
    "checkpoint_metrics",
    "generator_device",
    "check_same_device_type",
    "restore",
    "trained_epochs",
    "checkpoint_path",
    "trained_as",
    "only_start_files",
    "finished_training",
    "read_early_stopping",
]


@dataclass
class EpochState:
    """Where a checkpoint written in the middle of an epoch stands: the epoch's shuffled order, the
    next batch's first index in it, the bound summed so far and the epoch's seconds so far."""

    order: torch.Tensor
    position: int
    bound_sum: torch.Tensor
    seconds: float


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    step: int,
    metrics: list[dict],
    partial: EpochState | None = None,
    wall_time: float = 0.0,
    early_stopping: tuple[dict, dict[str, torch.Tensor]] | None = None,
    *,
    batched_with: Sequence[str] = (),
    commit: dict | None = None,
    data: dict | None = None,
) -> None:
    """Writes checkpoint.safetensors: weights, Adam state, both RNG states, the generator's device type,
    ``epoch`` (completed epochs), ``step``, the metrics so far, in the middle of an epoch ``partial``, with
    early stopping its ``(state, best weights)`` (:class:`iwae.train.early_stopping.EarlyStopping`); how
    the run was trained, ``trained_as``: one ``{"from_step", "batched_with"}`` per stretch trained alone
    (``batched_with`` empty) or as a member of one batched model with the runs ``batched_with`` (their
    folder names); the identity of the run in config.yaml and ``data``, the record of its data files
    (:func:`iwae.rundir.integrity.data_record`), that resuming checks. With ``commit`` (a member of a group
    commit, see :mod:`.group`: ``{"id", "record"}``) it goes to checkpoint.staged.safetensors instead."""
    opt_state = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict] = {}
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "epoch": epoch,
        "step": step,
        "metrics": metrics,
        "param_groups": opt_state["param_groups"],
        "optim_scalars": scalars,
        "model_digest": model_digest(model.config),
        "rng_device": generator.device.type,
        "wall_time_s": wall_time,
        "trained_as": _trained_as(Path(run_dir), sorted(batched_with)),
    }
    if early_stopping is not None:
        state, best = early_stopping
        meta["early_stopping"] = state
        tensors.update({f"best.{k}": v for k, v in best.items()})
    if commit is not None:
        meta["group_commit"] = commit
    identity = identity_record(run_dir)
    if identity is not None:
        meta["run_identity"] = identity
    if data is not None:
        meta["data"] = data
    if partial is not None:
        tensors["epoch.order"] = partial.order
        tensors["epoch.bound_sum"] = partial.bound_sum
        meta.update(epoch_position=partial.position, epoch_seconds=partial.seconds)
    save_tensors(Path(run_dir) / (STAGED if commit is not None else CHECKPOINT), tensors, meta)


def _trained_as(run_dir: Path, batched_with: list[str]) -> list[dict]:
    """The checkpoint's ``trained_as`` (:func:`save_checkpoint`): the previous checkpoint's, with a new
    stretch from its step when this one was trained otherwise (alone, or with other members)."""
    previous = checkpoint_path(run_dir)
    meta = header(previous) if previous.is_file() else {}
    stretches = [s for s in meta.get("trained_as", []) if isinstance(s, dict)]
    if not stretches or stretches[-1].get("batched_with") != batched_with:
        stretches.append({"from_step": int(meta.get("step", 0)), "batched_with": batched_with})
    return stretches


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """The file that holds ``run_dir``'s checkpoint: checkpoint.safetensors, or the staged checkpoint of
    a group commit whose record commits it (a kill came before it was renamed, see :mod:`.group`)."""
    return committed_stage(run_dir) or Path(run_dir) / CHECKPOINT


def trained_as(run_dir: str | os.PathLike) -> list[dict]:
    """How the run in ``run_dir`` was trained, from its checkpoint's header: one ``{"from_step",
    "batched_with"}`` per stretch, ``batched_with`` empty for a stretch trained alone, else the folder
    names of the runs it was one batched model with (see :func:`save_checkpoint`); ``[]`` when the run
    has no checkpoint or an older one that does not say."""
    path = checkpoint_path(run_dir)
    stretches = header(path).get("trained_as", []) if path.is_file() else []
    return [s for s in stretches if isinstance(s, dict)] if isinstance(stretches, list) else []


def read_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of the run's checkpoint (:func:`checkpoint_path`): CheckpointError if it is
    missing, unreadable, corrupt (its tensors fail their digest) or of another run than config.yaml's."""
    path = checkpoint_path(run_dir)
    tensors, meta = load_tensors(path)
    check_belongs(run_dir, path, meta)
    return tensors, meta


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return checkpoint_path(run_dir).is_file()


def checkpoint_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch metrics the checkpoint records (from its metadata: its tensors are not read)."""
    return list(read_metadata(Path(run_dir) / CHECKPOINT).get("metrics", []))


def generator_device(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """The device type of the generator whose state a checkpoint holds (older checkpoints do not say:
    a CUDA generator's state is 16 bytes, a CPU one's 5,056)."""
    if "rng_device" in meta:
        return str(meta["rng_device"])
    state = tensors.get("rng.generator")
    return "cuda" if state is not None and state.numel() == 16 else "cpu"


def check_same_device_type(path: Path, tensors: dict[str, torch.Tensor], meta: dict, device: str) -> None:
    saved, wanted = generator_device(tensors, meta), torch.device(device).type
    if saved != wanted:
        raise ValueError(
            f"{path.parent} was trained on {saved}; resuming it on {wanted} would draw other random "
            f"numbers (CPU and CUDA generators differ), so it would not be the same run: resume it "
            f"with --device {saved}, or train a new run on {wanted}"
        )


def restore(
    path: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    n_train: int,
) -> tuple[int, int, list[dict], EpochState | None, float]:
    """Loads a checkpoint into ``model``, ``optimizer`` and ``generator`` after checking that every
    tensor fits them; returns ``(epoch, step, metrics, partial epoch or None, wall time)``."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            f"{path} {why}; it was not written for this run's config.yaml (delete the run or "
            f"restore the files that belong together)"
        )

    if meta.get("model_config") not in (None, model.config.to_dict()):  # a checkpoint of an older run
        raise refuse(
            f"holds another architecture ({meta['model_config']}) than config.yaml's ({model.config.to_dict()})"
        )
    if meta.get("model_digest") not in (None, model_digest(model.config)):
        raise refuse(f"holds another architecture than config.yaml's ({model.config.to_dict()})")
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_finite(path, weights)
    expected = model.state_dict()
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise refuse(f"lacks {', '.join(missing) or 'nothing'} and has unexpected {', '.join(extra) or 'nothing'}")
    for name, value in expected.items():
        if weights[name].shape != value.shape or weights[name].dtype != value.dtype:
            raise refuse(
                f"holds {name} of shape {tuple(weights[name].shape)} ({weights[name].dtype}), the model "
                f"needs {tuple(value.shape)} ({value.dtype})"
            )
    params = list(model.parameters())
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            if not idx.isdigit() or int(idx) >= len(params):
                raise refuse(f"holds optimizer state {key} for a parameter the model does not have")
            if name in ("exp_avg", "exp_avg_sq") and value.shape != params[int(idx)].shape:
                raise refuse(
                    f"holds {key} of shape {tuple(value.shape)}, its parameter has {tuple(params[int(idx)].shape)}"
                )
            state.setdefault(int(idx), {})[name] = value
    try:
        for idx, extra in meta.get("optim_scalars", {}).items():
            state.setdefault(int(idx), {}).update(extra)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        model.load_state_dict(weights)
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        partial = None
        if "epoch_position" in meta:
            order = tensors["epoch.order"]
            if order.shape != (n_train,) or not 0 < int(meta["epoch_position"]) < n_train:
                raise ValueError(f"its epoch order of shape {tuple(order.shape)} does not fit {n_train} images")
            if order.is_floating_point() or not torch.equal(order.sort().values, torch.arange(n_train)):
                raise ValueError(f"its epoch order is not a permutation of the {n_train} training images")
            partial = EpochState(
                order.to(generator.device),
                int(meta["epoch_position"]),
                tensors["epoch.bound_sum"].to(generator.device),
                float(meta["epoch_seconds"]),
            )
        metrics = list(meta["metrics"])
        return int(meta["epoch"]), int(meta["step"]), metrics, partial, float(meta.get("wall_time_s", 0.0))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is incomplete or does not match the config: {e}".splitlines()[0]) from e


def finished_training(meta: dict, total_epochs: int) -> bool:
    """Whether the checkpoint whose metadata is ``meta`` has nothing left to train: it has trained all
    ``total_epochs``, or early stopping stopped it."""
    return meta.get("epoch") == total_epochs or bool((meta.get("early_stopping") or {}).get("stopped"))


def read_early_stopping(
    path: Path, tensors: dict[str, torch.Tensor], meta: dict, model: VAE
) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Early stopping's ``(state, best weights)`` in a checkpoint (``path``, its tensors and metadata), the
    weights checked against ``model``; None when the checkpoint has none (a run without early stopping).

    Raises:
        CheckpointError: a state without the best weights, or weights that do not fit ``model``.
    """
    state = meta.get("early_stopping")
    if state is None:
        return None
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    expected = model.state_dict()
    keys = {"patience", "best", "best_epoch", "bad_epochs", "stopped"}
    if not (isinstance(state, dict) and keys <= set(state)):
        fits = False
    elif state["best"] is None:  # no finite validation bound yet: no weights kept
        fits = not best
    else:
        fits = set(best) == set(expected) and all(
            best[k].shape == v.shape and best[k].dtype == v.dtype for k, v in expected.items()
        )
    if not fits:
        raise CheckpointError(
            f"{path} holds an early-stopping state without the best weights that fit this model; delete the run "
            f"or restore the files that belong together"
        )
    return state, best


def trained_epochs(run_dir: str | os.PathLike) -> int:
    """Epochs the checkpoint of ``run_dir`` has trained (CheckpointError if it has none or it is unreadable);
    from its metadata: its tensors are read, and checked, when it is resumed."""
    return int(read_metadata(checkpoint_path(run_dir)).get("epoch", 0))


def only_start_files(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds only what a run writes before its first checkpoint: nothing trained.

    The names alone do not tell: a run whose checkpoint was deleted (to save space) still holds a
    trained model, so model.safetensors must record epoch 0 and metrics.csv hold no epoch."""
    run_dir = Path(run_dir)
    names = set(visible(run_dir))  # not the lock and the mark: every folder iwae writes holds them
    leftovers = {n for n in names if n.startswith(".") and n.endswith(".tmp")}
    if CHECKPOINT in names or STAGED in names or not names - leftovers <= set(START_FILES):
        return False
    if MODEL in names:
        try:
            if model_epoch(run_dir) != 0:
                return False
        except CheckpointError:  # half-written by a kill: nothing trained in it
            pass
    metrics = run_dir / METRICS
    return not metrics.is_file() or len(metrics.read_text().strip().splitlines()) <= 1
