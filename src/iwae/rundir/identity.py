"""A run's config.yaml, and the one rule of which settings make two configs the same run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..errors import DataError
from .layout import CONFIG, atomic_write

__all__ = [
    "NOT_IDENTITY",
    "ADDED_DEFAULTS",
    "run_identity",
    "run_key",
    "changed_settings",
    "read_config",
    "read_config_values",
    "write_config",
    "check_same_run",
    "check_moved_data",
    "check_run_data_present",
]

# settings that may differ between two invocations on the same run directory. None of them changes
# the result except the device: CPU and CUDA draw other random numbers and round differently, so a
# run is bit-reproducible on one device type only. ``device`` says where to run next, not where the
# run ran: the checkpoint records its generator's device type and resuming refuses another one.
# ``compile`` is how the step runs, not what it computes (compiled and eager agree to float rounding, as with threads).
NOT_IDENTITY = ("threads", "data_dir", "out", "device", "epochs", "init_from", "checkpoint_every", "compile")


# settings added after runs were recorded, with the value every older run had: a config at that value
# has the identity it had before the setting existed, so older runs and results stay valid
ADDED_DEFAULTS = {
    "likelihood": "bernoulli",
    "sigma": None,
    "network": "mlp",
    "binarize": "auto",
    "dequantize": False,
    "precision": "32",
    "model": "vae",
    "optimizer": "adam",
    "early_stopping": None,
}


def _identity(config: Mapping, *, length: bool) -> dict:
    return {
        k: v
        for k, v in config.items()
        if (k not in NOT_IDENTITY or (length and k == "epochs"))
        and not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])
    }


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
    return {
        "config": _identity(config, length=True) if isinstance(config, Mapping) else config,
        "eval": spec.get("eval"),
        "after": spec.get("after"),
    }


def changed_settings(recorded: TrainConfig | Mapping, wanted: TrainConfig | Mapping) -> list[str]:
    """The settings of ``wanted``'s identity that ``recorded`` has another value for, sorted."""
    old, new = run_identity(recorded), run_identity(wanted)
    # both sides' keys: a setting at its ADDED_DEFAULTS value is absent from one identity only
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


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
        raise ValueError(
            f"cannot resume {run_dir} with other settings ({details}); resume it as it is, or train a new run"
        )


def check_moved_data(config: TrainConfig, dataset: str) -> None:
    """Refuses ``dataset`` in place of the data set a run was trained on (``config.dataset``), unless both
    are user arrays (``npz:PATH``): a moved or copied data file is given by its new path, a benchmark's
    files by ``data_dir``. A run is always measured on the data it was trained on.

    Raises:
        ValueError: ``dataset`` is a benchmark, or the run was not trained on user arrays. Whether the new
            file holds the run's data is checked once it is loaded, against the digests the run recorded
            (:func:`iwae.rundir.integrity.check_data`, a DataError).
    """
    if dataset == config.dataset:
        return
    if not config.dataset.startswith("npz:"):
        raise ValueError(
            f"the run was trained on {config.dataset}; a data path replaces only a moved npz: file "
            f"(for {config.dataset}'s files give their folder as the data dir)"
        )
    if not dataset.startswith("npz:"):
        raise ValueError(f"the run was trained on user arrays ({config.dataset}); give the moved file as npz:PATH")


def check_run_data_present(config: TrainConfig, run_dir: str | os.PathLike) -> None:
    """Refuses, in one line that names the way on, a run trained on user arrays (``npz:PATH``) whose
    data file is no longer at the path its config.yaml holds: the file has moved, and the moved file
    is given as ``--dataset npz:NEW`` (Python: ``dataset="npz:NEW"``).

    Raises:
        DataError: the run's ``npz:`` file is missing.
    """
    if not config.dataset.startswith("npz:"):
        return
    path = Path(config.dataset[len("npz:") :]).expanduser()
    if not path.is_file():
        raise DataError(
            f"the data file {path} that {run_dir} was trained on is not there; if it has moved, give its new "
            f"place: iwae evaluate {run_dir} --dataset npz:NEW_PATH (Python: dataset='npz:NEW_PATH')"
        )
