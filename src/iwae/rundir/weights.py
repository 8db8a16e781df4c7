"""model.safetensors: a run's weights, which architecture they are for (config.yaml's, checked by digest),
which run they belong to and which data they were trained on (:mod:`.integrity`), and which trained model
a run holds (its epoch and SHA-256)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..checkpoint import load_tensors, read_metadata, save_tensors
from ..config import ModelConfig
from ..errors import CheckpointError
from ..models import VAE, make_model
from .identity import read_config
from .integrity import check_belongs, check_finite, identity_record
from .layout import CONFIG, MODEL

__all__ = [
    "model_digest",
    "save_model",
    "model_config_of",
    "load_model",
    "model_epoch",
    "model_sha256",
    "training_data",
    "load_trained",
    "init_from",
    "check_weights",
]


def model_digest(model_config: ModelConfig) -> str:
    """SHA-256 of an architecture (its ModelConfig as canonical JSON): what a weights file records to
    say which architecture it was written for, without storing the architecture a second time."""
    text = json.dumps(model_config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_model(
    run_dir: str | os.PathLike,
    model: VAE,
    epoch: int,
    weights: dict[str, torch.Tensor] | None = None,
    *,
    data: dict | None = None,
) -> None:
    """Writes the weights of ``model`` after ``epoch`` completed epochs to ``run_dir/model.safetensors``
    (``weights``, a state dict of ``model``, in their place: an earlier epoch's, kept by early stopping),
    with the identity of the run in config.yaml and ``data``, the record of the data files it is trained
    on (:func:`iwae.rundir.integrity.data_record`), in its metadata."""
    meta = {"epoch": epoch, "input_dim": model.config.input_dim, "model_digest": model_digest(model.config)}
    identity = identity_record(run_dir)
    if identity is not None:
        meta["run_identity"] = identity
    if data is not None:
        meta["data"] = data
    if getattr(model, "user_modules", False):  # no config rebuilds it: load_model says so instead of misreading it
        meta["user_modules"] = True
    if getattr(model.config, "image_shape", None) is not None:  # not square: with config.yaml, the architecture
        meta["image_shape"] = list(model.config.image_shape)
    save_tensors(Path(run_dir) / MODEL, model.state_dict() if weights is None else weights, meta)


def _architecture(run_dir: Path, meta: dict, what: str) -> ModelConfig:
    """The ModelConfig a safetensors file of ``run_dir`` (metadata ``meta``) was written for: config.yaml's
    architecture for ``input_dim`` pixels, checked against the file's digest; an older run's file
    holds it in ``model_config``."""
    path = run_dir / what
    if meta.get("user_modules"):
        raise CheckpointError(
            f"{path} holds the weights of a model built from user modules, which no config "
            f"rebuilds: build the model again and load them with "
            f"model.load_state_dict(iwae.checkpoint.load_tensors(path)[0])"
        )
    if "model_config" in meta:  # written before the model config was stored once
        try:
            return ModelConfig(**meta["model_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path} has an invalid model config ({e}); was it written by another version of iwae?"
            ) from e
    if not isinstance(meta.get("input_dim"), int):
        raise CheckpointError(
            f"{path} has no model config in its metadata, nor the input size that, with "
            f"config.yaml, gives the architecture; was it written by iwae?"
        )
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(
            f"{run_dir} has no config.yaml, which records the architecture of {what}; restore it from a copy of the run"
        )
    try:
        shape = meta.get("image_shape")
        architecture = read_config(run_dir).model_config(meta["input_dim"], tuple(shape) if shape else None)
    except ValueError as e:
        raise CheckpointError(f"{path}: config.yaml gives no architecture for {meta['input_dim']} pixels ({e})") from e
    if meta.get("model_digest") not in (None, model_digest(architecture)):
        raise CheckpointError(
            f"{path} was written for another architecture than config.yaml's "
            f"({architecture.to_dict()}); restore the files that belong together"
        )
    return architecture


def model_config_of(run_dir: str | os.PathLike) -> ModelConfig:
    """The architecture of the model in ``run_dir``."""
    run_dir = Path(run_dir)
    return _architecture(run_dir, read_metadata(run_dir / MODEL), MODEL)


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """The model of a run directory (whatever epoch model.safetensors holds), in eval mode.

    Raises:
        CheckpointError: the file is missing, corrupt (its tensors fail their digest), of another run
            than config.yaml's, of another architecture, or holds weights that are not finite.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    tensors, meta = load_tensors(run_dir / MODEL)
    try:
        model = make_model(_architecture(run_dir, meta, MODEL))
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{run_dir / MODEL} has an invalid model config ({e}); was it written by another version of iwae?"
        ) from e
    check_belongs(run_dir, run_dir / MODEL, meta)  # after the architecture: its message is the more precise
    check_finite(run_dir / MODEL, tensors)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir / MODEL} does not fit its model config: {e}") from e
    return model.to(device).eval()


def model_epoch(run_dir: str | os.PathLike):
    """The epoch model.safetensors records (any JSON value; None if it records none)."""
    return read_metadata(Path(run_dir) / MODEL).get("epoch")


def training_data(run_dir: str | os.PathLike) -> dict | None:
    """The data files the weights in model.safetensors were trained on, as recorded with them
    (:func:`iwae.rundir.integrity.data_record`); None for a file that records none (an older iwae)."""
    data = read_metadata(Path(run_dir) / MODEL).get("data")
    return data if isinstance(data, dict) else None


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
        raise CheckpointError(
            f"{run_dir / MODEL} changed while it was read; is the run still "
            f"training? measure it when it has stopped, or a copy of it"
        )
    if not isinstance(epoch, int):
        raise CheckpointError(f"{run_dir / MODEL} records no epoch; was it written by another version of iwae?")
    if epoch < 1:
        raise CheckpointError(
            f"{run_dir} has not completed an epoch: its model.safetensors holds the initial "
            f"weights; train it first (iwae train --resume {run_dir})"
        )
    return model, {"epoch": epoch, "sha256": sha256}


def check_weights(run_dir: str | os.PathLike) -> None:
    """Checks model.safetensors of ``run_dir`` as :func:`load_model` reads it (its tensors against their
    digest, the run it belongs to, finite values) without building a model: for a source read later,
    checked before anything is written (``init_from``)."""
    path = Path(run_dir) / MODEL
    tensors, meta = load_tensors(path)
    check_belongs(run_dir, path, meta)
    check_finite(path, tensors)


def init_from(model: VAE, source: str | os.PathLike, sha256: str | None) -> None:
    """Copies the trained weights of run directory ``source`` into ``model``; the architectures must
    match, and the file must be the one whose digest is ``sha256`` (when given)."""
    source = Path(source)
    if sha256 is not None and model_sha256(source) != sha256:
        raise ValueError(
            f"init_from {source}: its model.safetensors is not the model this run was planned "
            f"from (SHA-256 differs); was it trained again?"
        )
    tensors, meta = load_tensors(source / MODEL)
    theirs = _architecture(source, meta, MODEL)
    check_belongs(source, source / MODEL, meta)
    check_finite(source / MODEL, tensors)
    if theirs != model.config:
        raise ValueError(
            f"init_from {source}: its model ({theirs.to_dict()}) is not this run's ({model.config.to_dict()})"
        )
    model.load_state_dict(tensors)
