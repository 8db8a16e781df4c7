"""A trained run opened as one object: its config, the model of its last completed epoch, and its data."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..models import VAE
from .identity import check_moved_data, check_run_data_present, read_config
from .integrity import check_data
from .weights import load_trained, training_data

if TYPE_CHECKING:
    from ..data import Splits

__all__ = ["Run", "open_run"]


@dataclass
class Run:
    """A trained run: ``config`` (config.yaml), ``model`` (the weights of its last completed epoch, in
    eval mode), ``weights`` (``{"epoch", "sha256"}`` of them) and ``splits``, its dataset, loaded on
    first access from ``data_dir`` (else the config's), or from ``dataset`` (a moved ``npz:`` file,
    :func:`check_moved_data`), and checked against the data files the run was trained on
    (:func:`iwae.rundir.integrity.check_data`: files that changed are refused unless
    ``accept_changed_data``; ``data`` then holds what the check found)."""

    path: Path
    config: TrainConfig
    model: VAE
    weights: dict
    data_dir: str | None = None
    dataset: str | None = None
    accept_changed_data: bool = False
    data: dict | None = None  # the data check's record, once the splits are loaded
    _splits: Splits | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            config = self.config
            if self.dataset is not None and self.dataset != config.dataset:
                check_moved_data(config, self.dataset)
                config = dataclasses.replace(config, dataset=self.dataset)
            else:
                check_run_data_present(config, self.path)
            splits = config.load_data(self.data_dir)  # binarized (or not) as training saw it
            self.check_splits(splits)
            self._splits = splits
        return self._splits

    def check_splits(self, splits: Splits) -> dict:
        """Check that ``splits`` are the data this run was trained on: images of the model's size
        (first, for the clearer message), then the data files' SHA-256 against the training record
        (:func:`iwae.rundir.integrity.check_data`); sets and returns ``data``, what the check found.

        Raises:
            ConfigError: images of another size than the model takes.
            DataError: data files changed since training (without ``accept_changed_data``).
        """
        if splits.dim != self.model.config.input_dim:
            raise ConfigError(
                f"{splits.name} has images of {splits.dim} pixels, the model of {self.path} takes "
                f"{self.model.config.input_dim}: not the data it was trained on",
                ["dataset"],
            )
        self.data = check_data(self.path, training_data(self.path), splits, self.accept_changed_data)
        return self.data

    @property
    def title(self) -> str:
        """The run's objective and K, e.g. ``IWAE(k=5)``."""
        return self.config.spec.label


def open_run(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    accept_changed_data: bool = False,
) -> Run:
    """The run in ``path``: its config, the model of its last completed epoch (a run that completed
    none is refused, see :func:`load_trained`) and its data, loaded when first asked for (from
    ``dataset``, ``npz:PATH``, when the run's data file has moved) and refused if its files changed since
    training (unless ``accept_changed_data``).

    Raises:
        CheckpointError: no such directory, an untrained run, or files that are missing, unreadable,
            corrupt or of another run.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {path} not found")
    model, weights = load_trained(path, device)
    return Run(path, read_config(path), model, weights, data_dir, dataset, accept_changed_data)
