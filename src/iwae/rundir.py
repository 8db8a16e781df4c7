"""Run directories: the one module that reads and writes the files of a run.

    from iwae.rundir import open_run
    run = open_run("runs/iwae-k5")        # config, model (last completed epoch), weights, splits (lazy)

A run directory holds

    config.yaml               the resolved training config (re-runnable with ``iwae train --config``);
                              the model's architecture is derived from it (TrainConfig.model_config)
                              and stored nowhere else
    model.safetensors         the model's weights; metadata: epoch, input_dim (the data's pixels) and
                              model_digest (SHA-256 of the architecture, to check that the weights and
                              config.yaml belong together)
    checkpoint.safetensors    everything needed to resume: weights, optimizer state, RNG state
                              and the generator's device type, epoch, step and the metrics so
                              far, in one file; in the middle of an epoch (``checkpoint_every``)
                              also the epoch's shuffled order, position and partial bound
    metrics.csv               one row per epoch
    tb/                       TensorBoard event files
    eval_k{K}[_n{N}]_seed{S}.json / .npy   an evaluation (:func:`eval_name`) and its per-image L_k
    surgery_n{N}.json         ELBO surgery (``iwae analyze``)
    result.json               written last by ``iwae reproduce``: the run is finished (:func:`run_status`)
    error.json                the run failed (``iwae reproduce``)
    samples.png, qew.png ...  figures the CLI draws into the run by default (written by the figure code)

Runs written before the model config was stored once (their safetensors metadata holds a
``model_config``) are read as before: that metadata is their architecture.

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``), flushed and
renamed over the old one (:mod:`iwae.checkpoint`), so a killed run never leaves a half-written file
under its real name; a write that fails raises :class:`~iwae.checkpoint.WriteError` and leaves the
old file as it was.

Two rules live here and nowhere else: which settings make two configs the same run
(:func:`run_identity`, :func:`run_key`), and when a run is finished (:func:`run_status`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from .checkpoint import CheckpointError, WriteError, atomic_write, check_writable, load_tensors, remove_temporaries, \
    save_tensors
from .config import ModelConfig, TrainConfig
from .config.train import CONFIG_FILE
from .models import VAE

if TYPE_CHECKING:
    from .data import Splits

__all__ = ["Run", "open_run", "read_config", "write_config", "run_identity", "run_key", "NOT_IDENTITY",
           "save_model", "load_model", "model_config_of", "model_sha256", "trained_epochs", "training_seconds",
           "read_metrics", "write_metrics", "eval_name", "write_evaluation", "read_evaluation", "write_surgery",
           "write_result", "write_error", "read_error", "run_status", "finished_result", "RunStatus",
           "CONFIG", "MODEL", "CHECKPOINT", "METRICS", "RESULT_FILE", "ERROR_FILE"]

CONFIG, MODEL, CHECKPOINT, METRICS, TENSORBOARD = CONFIG_FILE, "model.safetensors", "checkpoint.safetensors", \
    "metrics.csv", "tb"
RESULT_FILE = "result.json"  # written last in a run directory: its presence marks a finished run
ERROR_FILE = "error.json"
# the files train() writes into a run directory when it starts, before its first checkpoint
START_FILES = (CONFIG, MODEL, METRICS, TENSORBOARD)
RUN_FILES = (CONFIG, MODEL, CHECKPOINT, METRICS)
# settings that may differ between two invocations on the same run directory. None of them changes
# the result except the device: CPU and CUDA draw other random numbers and round differently, so a
# run is bit-reproducible on one device type only. ``device`` says where to run next, not where the
# run ran: the checkpoint records its generator's device type and resuming refuses another one.
# ``compile`` is how the step runs, not what it computes (compiled and eager agree to float rounding, as with threads).
NOT_IDENTITY = ("threads", "data_dir", "out", "device", "epochs", "init_from", "checkpoint_every", "compile")


# ----------------------------------------------------------------------------- identity: is it the same run?
# settings added after runs were recorded, with the value every older run had: a config at that value
# has the identity it had before the setting existed, so older runs and results stay valid
ADDED_DEFAULTS = {"likelihood": "bernoulli", "sigma": None, "network": "mlp", "binarize": "auto", "dequantize": False,
                  "precision": "32"}


def _identity(config: Mapping, *, length: bool) -> dict:
    return {k: v for k, v in config.items() if (k not in NOT_IDENTITY or (length and k == "epochs"))
            and not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])}


def run_identity(config: TrainConfig | Mapping) -> dict:
    """The settings that decide a run's result: its config without where it runs or how long (``NOT_IDENTITY``).

    Two configs with the same identity describe the same run, so one may resume the other, on the
    device type its checkpoint was written on: the device type decides the result too (CPU and
    CUDA draw other random numbers), but a config's ``device`` says where to run next, so
    :func:`iwae.train.train` checks it against the checkpoint rather than here.
    """
    return _identity(config if isinstance(config, Mapping) else config.to_dict(), length=False)


def run_key(spec: Mapping) -> dict:
    """What a result must match to be the result of run ``spec`` (a RunSpec dict): the run's identity
    (:func:`run_identity`) and its length, its evaluation and the run it continues. A result.json
    whose ``spec`` has another key is stale."""
    spec = spec if isinstance(spec, Mapping) else {}
    config = spec.get("config")
    return {"config": _identity(config, length=True) if isinstance(config, Mapping) else config,
            "eval": spec.get("eval"), "after": spec.get("after")}


def changed_settings(recorded: TrainConfig | Mapping, wanted: TrainConfig | Mapping) -> list[str]:
    """The settings of ``wanted``'s identity that ``recorded`` has another value for, sorted."""
    old, new = run_identity(recorded), run_identity(wanted)
    # both sides' keys: a setting at its ADDED_DEFAULTS value is absent from one identity only
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ----------------------------------------------------------------------------- config.yaml
def read_config(path: str | os.PathLike) -> TrainConfig:
    """The TrainConfig of a run directory's config.yaml, or of a config file ``path``
    (:meth:`iwae.config.TrainConfig.from_yaml`).

    Raises:
        CheckpointError: the file is missing, not YAML, not a mapping, or not a valid config.
    """
    return TrainConfig.from_yaml(path)


def read_config_values(run_dir: str | os.PathLike) -> dict:
    """config.yaml of ``run_dir`` as a plain mapping, unchecked ({} when missing or unreadable): for
    reports that must show what they can of any run."""
    try:
        values = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def write_config(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    """Writes ``config`` to ``run_dir/config.yaml`` atomically, unless the file already says exactly that."""
    path = Path(run_dir) / CONFIG
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        with atomic_write(path) as f:
            f.write(text)


# ----------------------------------------------------------------------------- model.safetensors
def model_digest(model_config: ModelConfig) -> str:
    """SHA-256 of an architecture (its ModelConfig as canonical JSON): what a weights file records to
    say which architecture it was written for, without storing the architecture a second time."""
    text = json.dumps(model_config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_model(run_dir: str | os.PathLike, model: VAE, epoch: int) -> None:
    """Writes the weights of ``model`` after ``epoch`` completed epochs to ``run_dir/model.safetensors``."""
    meta = {"epoch": epoch, "input_dim": model.config.input_dim, "model_digest": model_digest(model.config)}
    if getattr(model, "user_modules", False):  # no config rebuilds it: load_model says so instead of misreading it
        meta["user_modules"] = True
    if getattr(model.config, "image_shape", None) is not None:  # not square: with config.yaml, the architecture
        meta["image_shape"] = list(model.config.image_shape)
    save_tensors(Path(run_dir) / MODEL, model.state_dict(), meta)


def _architecture(run_dir: Path, meta: dict, what: str) -> ModelConfig:
    """The ModelConfig a safetensors file of ``run_dir`` (metadata ``meta``) was written for: config.yaml's
    architecture for ``input_dim`` pixels, checked against the file's digest; an older run's file
    holds it in ``model_config``."""
    path = run_dir / what
    if meta.get("user_modules"):
        raise CheckpointError(f"{path} holds the weights of a model built from user modules, which no config "
                              f"rebuilds: build the model again and load them with "
                              f"model.load_state_dict(iwae.checkpoint.load_tensors(path)[0])")
    if "model_config" in meta:  # written before the model config was stored once
        try:
            return ModelConfig(**meta["model_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path} has an invalid model config ({e}); was it written by another "
                                  f"version of iwae?") from e
    if not isinstance(meta.get("input_dim"), int):
        raise CheckpointError(f"{path} has no model config in its metadata, nor the input size that, with "
                              f"config.yaml, gives the architecture; was it written by iwae?")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} has no config.yaml, which records the architecture of {what}; "
                              f"restore it from a copy of the run")
    try:
        shape = meta.get("image_shape")
        architecture = read_config(run_dir).model_config(meta["input_dim"], tuple(shape) if shape else None)
    except ValueError as e:
        raise CheckpointError(f"{path}: config.yaml gives no architecture for {meta['input_dim']} pixels ({e})") \
            from e
    if meta.get("model_digest") not in (None, model_digest(architecture)):
        raise CheckpointError(f"{path} was written for another architecture than config.yaml's "
                              f"({architecture.to_dict()}); restore the files that belong together")
    return architecture


def model_config_of(run_dir: str | os.PathLike) -> ModelConfig:
    """The architecture of the model in ``run_dir``."""
    run_dir = Path(run_dir)
    _, meta = load_tensors(run_dir / MODEL)
    return _architecture(run_dir, meta, MODEL)


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """The model of a run directory (whatever epoch model.safetensors holds), in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    tensors, meta = load_tensors(run_dir / MODEL)
    try:
        model = VAE(_architecture(run_dir, meta, MODEL))
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{run_dir / MODEL} has an invalid model config ({e}); "
                              f"was it written by another version of iwae?") from e
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir / MODEL} does not fit its model config: {e}") from e
    return model.to(device).eval()


def model_epoch(run_dir: str | os.PathLike):
    """The epoch model.safetensors records (any JSON value; None if it records none)."""
    return load_tensors(Path(run_dir) / MODEL)[1].get("epoch")


def model_sha256(run_dir: str | os.PathLike) -> str:
    """SHA-256 of a run directory's model.safetensors: which trained model a continued run starts from."""
    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_trained(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """The trained model of a run directory and which weights they are: ``{"epoch", "sha256"}``.

    Raises:
        CheckpointError: the run has not completed an epoch (its model.safetensors holds the initial
            weights, written when training starts), its model file has no epoch, or the file changed
            while it was read (a run still training writes it after every epoch).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    sha256 = model_sha256(run_dir)
    model = load_model(run_dir, device)
    epoch = model_epoch(run_dir)
    if model_sha256(run_dir) != sha256:  # both reads above must have seen the file whose digest we report
        raise CheckpointError(f"{run_dir / MODEL} changed while it was read; is the run still "
                              f"training? measure it when it has stopped, or a copy of it")
    if not isinstance(epoch, int):
        raise CheckpointError(f"{run_dir / MODEL} records no epoch; was it written by another version of iwae?")
    if epoch < 1:
        raise CheckpointError(f"{run_dir} has not completed an epoch: its model.safetensors holds the initial "
                              f"weights; train it first (iwae train --resume {run_dir})")
    return model, {"epoch": epoch, "sha256": sha256}


def init_from(model: VAE, source: str | os.PathLike, sha256: str | None) -> None:
    """Copies the trained weights of run directory ``source`` into ``model``; the architectures must
    match, and the file must be the one whose digest is ``sha256`` (when given)."""
    source = Path(source)
    if sha256 is not None and model_sha256(source) != sha256:
        raise ValueError(f"init_from {source}: its model.safetensors is not the model this run was planned "
                         f"from (SHA-256 differs); was it trained again?")
    tensors, meta = load_tensors(source / MODEL)
    theirs = _architecture(source, meta, MODEL)
    if theirs != model.config:
        raise ValueError(f"init_from {source}: its model ({theirs.to_dict()}) is not this run's "
                         f"({model.config.to_dict()})")
    model.load_state_dict(tensors)


# ----------------------------------------------------------------------------- checkpoint.safetensors
@dataclass
class EpochState:
    """Where a checkpoint written in the middle of an epoch stands: the epoch's shuffled order, the
    next batch's first index in it, the bound summed so far and the epoch's seconds so far."""

    order: torch.Tensor
    position: int
    bound_sum: torch.Tensor
    seconds: float


def save_checkpoint(run_dir: str | os.PathLike, model: VAE, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, epoch: int, step: int, metrics: list[dict],
                    partial: EpochState | None = None, wall_time: float = 0.0) -> None:
    """Writes checkpoint.safetensors: weights, Adam state, both RNG states, the generator's device type,
    ``epoch`` (completed epochs), ``step``, the metrics so far and, in the middle of an epoch, ``partial``."""
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
    meta = {"epoch": epoch, "step": step, "metrics": metrics, "param_groups": opt_state["param_groups"],
            "optim_scalars": scalars, "model_digest": model_digest(model.config),
            "rng_device": generator.device.type, "wall_time_s": wall_time}
    if partial is not None:
        tensors["epoch.order"] = partial.order
        tensors["epoch.bound_sum"] = partial.bound_sum
        meta.update(epoch_position=partial.position, epoch_seconds=partial.seconds)
    save_tensors(Path(run_dir) / CHECKPOINT, tensors, meta)


def read_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of checkpoint.safetensors (CheckpointError if missing or unreadable)."""
    return load_tensors(Path(run_dir) / CHECKPOINT)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / CHECKPOINT).is_file()


def checkpoint_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch metrics the checkpoint records."""
    return list(read_checkpoint(run_dir)[1].get("metrics", []))


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
        raise ValueError(f"{path.parent} was trained on {saved}; resuming it on {wanted} would draw other random "
                         f"numbers (CPU and CUDA generators differ), so it would not be the same run: resume it "
                         f"with --device {saved}, or train a new run on {wanted}")


def restore(path: Path, tensors: dict[str, torch.Tensor], meta: dict, model: VAE,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, n_train: int,
            ) -> tuple[int, int, list[dict], EpochState | None, float]:
    """Loads a checkpoint into ``model``, ``optimizer`` and ``generator`` after checking that every
    tensor fits them; returns ``(epoch, step, metrics, partial epoch or None, wall time)``."""
    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path} {why}; it was not written for this run's config.yaml (delete the run or "
                               f"restore the files that belong together)")

    if meta.get("model_config") not in (None, model.config.to_dict()):  # a checkpoint of an older run
        raise refuse(f"holds another architecture ({meta['model_config']}) than config.yaml's "
                     f"({model.config.to_dict()})")
    if meta.get("model_digest") not in (None, model_digest(model.config)):
        raise refuse(f"holds another architecture than config.yaml's ({model.config.to_dict()})")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise refuse(f"lacks {', '.join(missing) or 'nothing'} and has unexpected {', '.join(extra) or 'nothing'}")
    for name, value in expected.items():
        if weights[name].shape != value.shape or weights[name].dtype != value.dtype:
            raise refuse(f"holds {name} of shape {tuple(weights[name].shape)} ({weights[name].dtype}), the model "
                         f"needs {tuple(value.shape)} ({value.dtype})")
    params = list(model.parameters())
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            if not idx.isdigit() or int(idx) >= len(params):
                raise refuse(f"holds optimizer state {key} for a parameter the model does not have")
            if name in ("exp_avg", "exp_avg_sq") and value.shape != params[int(idx)].shape:
                raise refuse(f"holds {key} of shape {tuple(value.shape)}, its parameter has "
                             f"{tuple(params[int(idx)].shape)}")
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
            partial = EpochState(order.to(generator.device), int(meta["epoch_position"]),
                                 tensors["epoch.bound_sum"].to(generator.device), float(meta["epoch_seconds"]))
        metrics = list(meta["metrics"])
        return int(meta["epoch"]), int(meta["step"]), metrics, partial, float(meta.get("wall_time_s", 0.0))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is incomplete or does not match the config: {e}".splitlines()[0]) from e


def trained_epochs(run_dir: str | os.PathLike) -> int:
    """Epochs the checkpoint of ``run_dir`` has trained (CheckpointError if it has none or it is unreadable)."""
    _, meta = read_checkpoint(run_dir)
    return int(meta.get("epoch", 0))


# ----------------------------------------------------------------------------- metrics.csv, tb/
def metrics_text(metrics: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(metrics[0]))
    writer.writeheader()
    writer.writerows(metrics)
    return buf.getvalue()


def write_metrics(run_dir: str | os.PathLike, metrics: list[dict]) -> None:
    """Writes the per-epoch rows ``metrics`` to metrics.csv (nothing for no rows)."""
    if not metrics:
        return
    text = metrics_text(metrics)
    with atomic_write(Path(run_dir) / METRICS) as f:
        f.write(text)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of ``RUN_DIR/metrics.csv`` as floats.

    Raises:
        FileNotFoundError: when the run has no metrics.csv (it has not finished an epoch).
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished an epoch")
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def has_metrics(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / METRICS).is_file()


def training_seconds(run_dir: str | os.PathLike) -> float:
    """Wall time of all the run's epochs, across resumptions, from its metrics.csv (0 without one)."""
    try:
        with open(Path(run_dir) / METRICS, newline="") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["wall_time_s"]) if rows else 0.0
    except (OSError, KeyError, ValueError):
        return 0.0


def tensorboard_writer(run_dir: str | os.PathLike, purge_step: int | None = None):
    """A SummaryWriter on ``run_dir/tb`` (imported here: slow, and only needed while training)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(run_dir) / TENSORBOARD), purge_step=purge_step)


# ----------------------------------------------------------------------------- training's bookkeeping
def check_same_run(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    """Refuses to resume ``run_dir`` with settings that would make it another run (``run_identity``
    differs from its config.yaml's): its record would then describe a run that never happened."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return  # killed before config.yaml was written: nothing to compare, nothing trained
    recorded, wanted = run_identity(read_config(path)), run_identity(config)
    changed = changed_settings(recorded, wanted)
    if changed:
        details = ", ".join(f"{k} {recorded.get(k)!r} -> {wanted[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {run_dir} with other settings ({details}); resume it as it is, "
                         f"or train a new run")


def sync_outputs(run_dir: str | os.PathLike, config: TrainConfig, metrics: list[dict]) -> None:
    """On resume: a run killed between its checkpoint and metrics.csv gets the checkpoint's metrics,
    and config.yaml records the settings of this invocation (epochs, device, ...); both only if changed."""
    path = Path(run_dir) / METRICS
    if metrics and (not path.is_file() or path.read_text() != metrics_text(metrics)):
        write_metrics(run_dir, metrics)
    write_config(run_dir, config)


def only_start_files(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds only what a run writes before its first checkpoint: nothing trained.

    The names alone do not tell: a run whose checkpoint was deleted (to save space) still holds a
    trained model, so model.safetensors must record epoch 0 and metrics.csv hold no epoch."""
    run_dir = Path(run_dir)
    names = {p.name for p in run_dir.iterdir()}
    leftovers = {n for n in names if n.startswith(".") and n.endswith(".tmp")}
    if CHECKPOINT in names or not names - leftovers <= set(START_FILES):
        return False
    if MODEL in names:
        try:
            if model_epoch(run_dir) != 0:
                return False
        except CheckpointError:  # half-written by a kill: nothing trained in it
            pass
    metrics = run_dir / METRICS
    return not metrics.is_file() or len(metrics.read_text().strip().splitlines()) <= 1


def is_empty(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is missing or holds nothing."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or not any(run_dir.iterdir())


def clear_start_files(run_dir: str | os.PathLike) -> None:
    for name in START_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare(run_dir: str | os.PathLike, *, replace: bool = False, clear_start: bool = False) -> None:
    """Makes ``run_dir`` ready to write into: deleted first (``replace``) or cleared of a run stopped
    before its first checkpoint (``clear_start``), created, checked writable (a read-only folder
    fails now, not after the first epoch), and rid of the temporary files a kill -9 left."""
    run_dir = Path(run_dir)
    if run_dir.exists() and replace:
        shutil.rmtree(run_dir)
    elif run_dir.exists() and clear_start:
        clear_start_files(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"could not create run directory {run_dir}: {e.strerror or e}") from e
    check_writable(run_dir, CHECKPOINT)
    remove_temporaries(run_dir, RUN_FILES)


def delete(run_dir: str | os.PathLike) -> None:
    """Deletes the run directory and everything in it."""
    shutil.rmtree(run_dir)


def remove_run_temporaries(run_dir: str | os.PathLike) -> None:
    remove_temporaries(run_dir, RUN_FILES)


# ----------------------------------------------------------------------------- evaluations
def eval_name(k: int, seed: int, test_subset: int | None = None) -> str:
    """File stem of an evaluation in a run directory: ``eval_k{k}_seed{seed}`` on all test images,
    ``eval_k{k}_n{N}_seed{seed}`` on the first N (the JSON and the per-image ``.npy`` share it)."""
    return f"eval_k{k}" + (f"_n{test_subset}" if test_subset is not None else "") + f"_seed{seed}"


def evaluation_files(name: str) -> dict:
    """The files of evaluation ``name``, relative to its run directory: ``{"json", "bounds"}``."""
    return {"json": f"{name}.json", "bounds": f"{name}.npy"}


def write_evaluation(run_dir: str | os.PathLike, name: str, result: dict, bounds: np.ndarray) -> None:
    """Writes an evaluation: the per-image bounds to ``NAME.npy``, then ``result`` to ``NAME.json``,
    both atomically (the JSON last: it describes files that are all there)."""
    with atomic_write(Path(run_dir) / f"{name}.npy", "wb") as f:
        np.save(f, bounds)
    _write_json(Path(run_dir) / f"{name}.json", result)


def read_evaluation(run_dir: str | os.PathLike, name: str) -> tuple[dict, np.ndarray]:
    """``(result, per-image bounds)`` of evaluation ``name`` of ``run_dir``."""
    run_dir = Path(run_dir)
    try:
        result = json.loads((run_dir / f"{name}.json").read_text())
        bounds = read_bounds(run_dir / f"{name}.npy")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"evaluation {name} of {run_dir} is missing or unreadable ({e})") from e
    return result, bounds


def read_bounds(path: str | os.PathLike) -> np.ndarray:
    """The per-image bounds in an evaluation's ``.npy`` file (no pickles)."""
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def write_surgery(run_dir: str | os.PathLike, result: dict) -> Path:
    """Writes an ELBO surgery result to ``run_dir/surgery_n{N}.json``; returns the path."""
    path = Path(run_dir) / f"surgery_n{result['n']}.json"
    _write_json(path, result)
    return path


def write_figure_record(figure: str | os.PathLike, result: dict) -> Path:
    """Writes what a figure shows (its numbers and settings) as JSON beside it: ``FIGURE.json``
    (``iwae qew`` draws into the run folder by default); returns the path."""
    path = Path(figure).with_suffix(".json")
    _write_json(path, result)
    return path


def _write_json(path: Path, value) -> None:
    with atomic_write(path) as f:
        json.dump(value, f, indent=1)


def _read_json(path: Path):
    """The JSON value in ``path``; None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- results of reproduce
def write_result(run_dir: str | os.PathLike, result: dict) -> None:
    """Writes result.json: the run is finished (:func:`run_status`)."""
    _write_json(Path(run_dir) / RESULT_FILE, result)


def write_error(run_dir: str | os.PathLike, error: dict) -> None:
    """Writes error.json (creating the run directory): the run failed."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _write_json(Path(run_dir) / ERROR_FILE, error)


def read_error(run_dir: str | os.PathLike) -> dict | None:
    error = _read_json(Path(run_dir) / ERROR_FILE)
    return error if isinstance(error, dict) else None


def clear_error(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / ERROR_FILE).unlink(missing_ok=True)


@dataclass
class RunStatus:
    """What the files of a run say about it: ``status`` is ``done`` (``result`` is its result.json),
    ``failed`` (``message``: the error), ``stale`` (a result of other settings or of another
    starting model), ``unreadable`` (``message``: why) or None (neither result.json nor error.json)."""

    status: str | None
    result: dict = field(default_factory=dict)
    message: str | None = None
    file: str | None = None  # result.json or error.json, whichever decided
    raw: dict = field(default_factory=dict)  # that file's JSON object, whatever the status


def dependency_digest(run_dir: Path, after: str | None) -> str | None:
    """SHA-256 of the model a continued run starts from (None: not a continued run, or no model yet)."""
    if not after:
        return None
    try:
        return model_sha256(run_dir.parent / after)
    except CheckpointError:
        return None


def run_status(run_dir: str | os.PathLike, spec: Mapping) -> RunStatus:
    """The one rule of whether run ``spec`` (a RunSpec dict) is finished in ``run_dir``.

    The newer of result.json and error.json decides: error.json means failed; result.json is done
    when it is a JSON object with status ``done``, its spec has this spec's :func:`run_key`, and
    (for a continued run) it started from the model its dependency holds now; else it is stale.
    """
    run_dir = Path(run_dir)
    outcome = max((p for p in (run_dir / RESULT_FILE, run_dir / ERROR_FILE) if p.is_file()),
                  key=lambda p: p.stat().st_mtime, default=None)
    if outcome is None:
        return RunStatus(None)
    value = _read_json(outcome)
    if not isinstance(value, dict):
        try:  # say why: the report shows it
            json.loads(outcome.read_text(encoding="utf-8"))
            why = "does not hold a JSON object"  # e.g. a list
        except (OSError, ValueError) as e:
            why = f"is not readable JSON ({str(e).splitlines()[0]})"
        return RunStatus("unreadable", message=why, file=outcome.name)
    found = {"file": outcome.name, "raw": value}
    if outcome.name == ERROR_FILE:
        return RunStatus("failed", message=str(value.get("error") or "no message"), **found)
    if value.get("status") != "done":
        return RunStatus("unreadable", message=f"has status {value.get('status')!r}, not done", **found)
    recorded = value.get("spec") if isinstance(value.get("spec"), Mapping) else {}
    ours, wanted = run_key({"config": None, "eval": None, **recorded}), run_key(spec)
    changed = [key for key in wanted if ours.get(key) != wanted[key]]
    if changed:  # e.g. evaluated with another --eval-k: not this run's result (any more)
        return RunStatus("stale", message=f"result of other settings ({', '.join(changed)})", **found)
    if value.get("init_sha256") != dependency_digest(run_dir, spec.get("after")):
        return RunStatus("stale", message=f"started from another model than {spec.get('after')} holds now", **found)
    return RunStatus("done", value, **found)


def finished_result(run_dir: str | os.PathLike, spec: Mapping) -> dict | None:
    """The run's result.json if it is finished under ``spec`` (:func:`run_status`), else None."""
    status = run_status(run_dir, spec)
    return status.result if status.status == "done" else None


def read_files(run_dir: str | os.PathLike, *, without_results: bool = False) -> dict[str, bytes]:
    """Every file of ``run_dir`` by relative path (e.g. to send a run to another machine)."""
    folder = Path(run_dir)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    if without_results:
        files = {k: v for k, v in files.items() if k not in (RESULT_FILE, ERROR_FILE)}
    return files


def write_files(run_dir: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Writes files as :func:`read_files` returns them, each atomically, result.json last: it marks the
    run finished, so everything it describes must be there before it."""
    for rel, data in sorted(files.items(), key=lambda item: item[0] == RESULT_FILE):
        path = Path(run_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            f.write(data)


def model_bytes(run_dir: str | os.PathLike) -> dict[str, bytes]:
    """The model file of ``run_dir`` as :func:`write_files` takes it (what a continued run needs of its
    dependency). A new-layout model needs its config.yaml too: it records the architecture."""
    run_dir = Path(run_dir)
    return {name: (run_dir / name).read_bytes() for name in (MODEL, CONFIG) if (run_dir / name).is_file()}


# ----------------------------------------------------------------------------- open a run
@dataclass
class Run:
    """A trained run: ``config`` (config.yaml), ``model`` (the weights of its last completed epoch, in
    eval mode), ``weights`` (``{"epoch", "sha256"}`` of them) and ``splits``, its dataset, loaded on
    first access from ``data_dir`` (else the config's)."""

    path: Path
    config: TrainConfig
    model: VAE
    weights: dict
    data_dir: str | None = None
    _splits: Splits | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = self.config.load_data(self.data_dir)  # binarized (or not) as training saw it
        return self._splits

    @property
    def title(self) -> str:
        """The run's objective and K, e.g. ``IWAE(k=5)``."""
        return self.config.spec.label


def open_run(path: str | os.PathLike, device: str | torch.device = "cpu", *, data_dir: str | None = None) -> Run:
    """The run in ``path``: its config, the model of its last completed epoch (a run that completed
    none is refused, see :func:`load_trained`) and its data, loaded when first asked for.

    Raises:
        CheckpointError: no such directory, an untrained run, or files that are missing or unreadable.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {path} not found")
    model, weights = load_trained(path, device)
    return Run(path, read_config(path), model, weights, data_dir)
