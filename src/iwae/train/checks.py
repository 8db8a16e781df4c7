"""The checks of a training run before anything is written: the data against the likelihood, the batch
against the data, the memory the model and one step need against the device's, the data files against
those the run was trained on (when resuming), and the cost of the per-epoch validation bound.

:func:`check_run` is called by :func:`iwae.train.train` and :func:`iwae.members.train_members` after the
data are loaded and before the run folder is touched: a setting that cannot work is refused in one line
naming its setting, and the folder stays as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import torch

from .. import data as data_module
from .. import rundir
from ..config.train import TrainConfig
from ..errors import ConfigError
from ..evaluate import check_cost, duration_text, lk_cost
from ..memory import GIB, training_bytes
from ..models import VAE, make_likelihood, make_model
from ..runtime import available_memory

__all__ = ["check_run", "ANNOUNCE_SECONDS"]

# a validation bound estimated to take longer than this per epoch is announced before training starts
ANNOUNCE_SECONDS = 60.0


def _gib(n: float) -> str:
    return f"{n / GIB:.3g} GiB"


def _check_likelihood(config: TrainConfig, splits: data_module.Splits, x_train, x_valid, model: VAE | None) -> None:
    """The data the likelihood will see must be in its support: bernoulli binary, logistic256 on the
    8-bit grid. Training images binarized (or dequantised) afresh at every step are seen only after it."""
    dim = x_train.shape[1]
    likelihood = model.likelihood if model is not None else make_likelihood(config.likelihood, dim, config.sigma)
    try:
        if not (splits.dynamic or splits.dequantize):
            likelihood.check_data(x_train, f"the training data of {config.dataset}")
        likelihood.check_data(x_valid, f"the validation data of {config.dataset}")
    except ValueError as e:
        raise ConfigError(str(e), ["likelihood", "dataset", "binarize"]) from None


def _size_settings(config: TrainConfig) -> list[str]:
    """The settings that size the model which the config sets (the defaults are Burda et al.'s)."""
    named = [name for name in ("latent_dims", "hidden_dims") if getattr(config, name) is not None]
    return named + (["components"] if (config.components or 1) > 1 else [])


def _check_memory(
    config: TrainConfig, splits: data_module.Splits, device: torch.device, model: VAE | None, members: int
) -> None:
    """The weights with Adam's state, and one step's activations and gradients, estimated on the meta device
    (:func:`iwae.memory.training_bytes`), must fit the memory ``device`` has available now."""
    dim = splits.train.shape[1]
    try:
        if model is None:
            with torch.device("meta"):  # shapes without storage: nothing is allocated, however large
                model = make_model(config.model_config(dim, splits.image_shape))
    except RuntimeError as e:  # torch refuses a tensor whose size overflows its int64 arithmetic
        sizes = _size_settings(config) or ["latent_dims", "hidden_dims"]
        raise ConfigError(
            f"the model's tensors would be larger than torch can hold ({str(e).splitlines()[0]}); "
            f"reduce {' or '.join(sizes)}",
            sizes,
        ) from None
    need = {key: members * value for key, value in training_bytes(model, config.batch_size * config.k).items()}
    have = available_memory(device)
    group = f" for {members} members" if members > 1 else ""
    if need["model"] > have:
        sizes = _size_settings(config)
        what = f"reduce {' or '.join(sizes)}" if sizes else f"the data's {dim} pixels need a smaller network"
        raise ConfigError(
            f"the model's weights, gradients and Adam's state{group} need about {_gib(need['model'])}, more "
            f"than the {_gib(have)} of memory available on {device.type}; {what}",
            sizes,
        )
    if need["model"] + need["step"] > have:
        raise ConfigError(
            f"one training step of batch_size {config.batch_size} x k {config.k} samples{group} needs about "
            f"{_gib(need['model'] + need['step'])} (the model {_gib(need['model'])}, the step "
            f"{_gib(need['step'])}), more than the {_gib(have)} of memory available on {device.type}; reduce k "
            f"or batch_size",
            ["k", "batch_size"],
        )


def _check_validation(
    config: TrainConfig, splits: data_module.Splits, x_valid, device: torch.device, model: VAE | None, progress: bool
) -> None:
    """The validation bound L_{valid_k} of every epoch, timed on one chunk: refused when one pass is
    absurd (:data:`iwae.evaluate.ABSURD_SECONDS`), announced when it is long."""
    valid_k = config.valid_k or config.k
    # a model of this config times it: built with the global random state put back after, so the run's
    # own model, built next from the seed, is the one it would be without this check
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        timed = (
            model if model is not None else make_model(config.model_config(splits.train.shape[1], splits.image_shape))
        )
        timed = timed.to(device)
        cost = lk_cost(timed, x_valid, valid_k)
    setting = "valid_k" if config.valid_k else "k"
    check_cost(cost, f"the validation bound L_{valid_k} on {len(x_valid)} images, every epoch,", [setting])
    if progress and cost["seconds"] > ANNOUNCE_SECONDS:
        print(
            f"the validation bound L_{valid_k} on {len(x_valid)} images takes about "
            f"{duration_text(cost['seconds'])} per epoch (set by --{setting.replace('_', '-')})",
            file=sys.stderr,
        )


def check_run(
    config: TrainConfig,
    splits: data_module.Splits,
    x_train: torch.Tensor,
    x_valid: torch.Tensor,
    device: torch.device,
    *,
    model: VAE | None = None,
    members: int = 1,
    saved: tuple | None = None,
    accept_changed_data: bool = False,
    progress: bool = False,
) -> dict:
    """Checks a run before anything is written (module docstring) and returns the record of its data
    files that its weights and checkpoints carry (:func:`iwae.rundir.data_record`).

    Args:
        config: the run's settings (of each member: they share the data, the model's sizes, k and the batch).
        splits, x_train, x_valid: its data, the training images (the first ``train_subset``) and the
            validation images, on ``device``.
        model: a model built in Python (else the config's architecture is estimated).
        members: how many such runs train at once (one batched model).
        saved: the checkpoint ``(tensors, metadata)`` a resume continues from.
        accept_changed_data: resume on data files that changed since the checkpoint, deliberately.
        progress: announce a long validation bound on stderr.

    Raises:
        ConfigError: data the likelihood does not model, a batch larger than the training set, a model or
            step that does not fit the device's memory, a validation bound too long to run.
        DataError: resuming on data files that changed (without ``accept_changed_data``).
    """
    _check_likelihood(config, splits, x_train, x_valid, model)
    n_train = x_train.shape[0]
    if config.batch_size > n_train:
        raise ConfigError(
            f"batch_size {config.batch_size} is more than the {n_train} training images of {config.dataset}: "
            f"every epoch would be one smaller batch; use at most {n_train}",
            ["batch_size"],
        )
    _check_memory(config, splits, device, model, members)
    record = rundir.data_record(splits)
    if saved is not None:
        before = saved[1].get("data")
        found = rundir.check_data(config.out, before, splits, accept_changed_data)
        if found["changed"]:  # accepted: the record keeps when the data changed under the run
            history = list(before.get("changed_during_training", [])) if isinstance(before, Mapping) else []
            record["changed_during_training"] = history + [{"epoch": saved[1].get("epoch"), "files": found["changed"]}]
        elif isinstance(before, Mapping) and before.get("changed_during_training"):
            record["changed_during_training"] = list(before["changed_during_training"])
    _check_validation(config, splits, x_valid, device, model, progress)
    return record
