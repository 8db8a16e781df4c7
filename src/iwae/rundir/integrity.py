"""What identifies a run, its data, its weights and an evaluation, and who checks what, when.

This module is the one place that states the rule; the readers and writers of :mod:`iwae.rundir` call
its checks, so a new command that opens a run through the package gets them all.

**A run** is identified by its settings (:func:`iwae.rundir.run_identity`: config.yaml without where or
how long it runs). Every weights file records the identity of the run it was written for
(``run_identity`` in its metadata); reading it (:func:`iwae.rundir.load_model`, ``open_run``,
``init_from``, resuming) refuses a file whose identity is not config.yaml's: another seed's
model.safetensors copied in is not measured as this run's.

**Its weights** carry the SHA-256 of their tensors (names, dtypes, shapes, bytes), written with them
(:func:`iwae.checkpoint.save_tensors`) and checked by every read (:func:`iwae.checkpoint.load_tensors`):
a flipped bit or a damaged copy is refused. Weights that are not finite are refused too
(:func:`check_finite`): no evaluation, resume or figure of a nan model. Files written before the digest
existed are read with an :class:`~iwae.errors.UncheckedWarning` (they cannot be checked); saving them
again (resuming, :func:`iwae.rundir.save_model`) adds the digest and the identity.

**Its data** are the files it was trained on, each recorded with its SHA-256 (:func:`data_record`, in
the metadata of model.safetensors and checkpoint.safetensors). Resuming, evaluating (L_k and AIS) and
opening the run's data (``Run.splits``: analyze, snr, the figures) compare the files read now with that
record (:func:`check_data`) and refuse, in one line, files that changed, unless the user accepts them
deliberately (``--accept-changed-data``), which the evaluation then records.

**An evaluation** (``eval_*.json``, ``ais_*.json``) records what its numbers depend on: the method and
its settings (k; AIS's T, C, L, schedule and initial distribution, all also in the file's name), the
exact test tensor measured (``test_images.sha256``, after binarization or dequantisation, and how the
images were binarized), the weights (epoch and SHA-256 of model.safetensors), the likelihood (a code
length or a density) and the data files. Two evaluations are paired only when :func:`comparable` finds
nothing that differs; ``iwae compare`` asks it before it reads a number. An evaluation written before
these records existed cannot be checked: it is refused until evaluated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CheckpointError, DataError, UncheckedWarning
from .identity import changed_settings, read_config, run_identity
from .layout import CONFIG

if TYPE_CHECKING:
    from ..data import Splits

__all__ = [
    "images_sha256",
    "images_record",
    "images_text",
    "data_text",
    "data_record",
    "identity_record",
    "check_belongs",
    "check_finite",
    "check_data",
    "changed_files",
    "comparable",
    "AIS_SETTINGS",
]

# the settings of an AIS evaluation that change its expected value (iwae.ais.ais_eval_name writes them all)
AIS_SETTINGS = ("steps", "chains", "leapfrog", "schedule", "initial")


def _plain(value):
    """``value`` as JSON reads it back (tuples as lists): what a record written to a file compares as."""
    return json.loads(json.dumps(value))


# ----------------------------------------------------------------------------- the test tensor
def images_sha256(x: torch.Tensor) -> str:
    """SHA-256 of a tensor of images: its dtype, shape and bytes (float32, C order, on the CPU). Equal
    digests mean the same pixel values in the same order: what two evaluations must share to be paired."""
    t = x.detach().to(torch.float32).contiguous().cpu()
    digest = hashlib.sha256(f"{t.dtype}\0{tuple(t.shape)}\0".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def images_record(splits: Splits, x: torch.Tensor, n_total: int) -> dict:
    """What an evaluation records of the test images ``x`` it measured (the first of ``n_total``):
    dataset, split, the first N of how many, how they were binarized
    (:meth:`iwae.data.Splits.test_binarization`) and the SHA-256 of the exact tensor (:func:`images_sha256`),
    which :func:`comparable` pairs evaluations by."""
    return {
        "dataset": splits.name,
        "split": "test",
        "first": int(x.shape[0]),
        "of": int(n_total),
        "binarization": splits.test_binarization(),
        "sha256": images_sha256(x),
    }


def images_text(images: Mapping) -> str:
    """An evaluation's ``test_images`` record in a line: which images, how they were binarized, the start
    of their SHA-256."""
    how = images.get("binarization") if isinstance(images.get("binarization"), Mapping) else {}
    made = f"; binarization {how.get('mode')}, {how.get('test')}" if how else ""
    digest = f"; sha256 {str(images['sha256'])[:16]}" if images.get("sha256") else ""
    return f"the first {images.get('first')} of {images.get('of')} ({images.get('dataset')}){made}{digest}"


def data_text(data: Mapping | None) -> str:
    """An evaluation's ``data`` record in a line: whether the files measured are those the run was trained on."""
    if not data:
        return "not checked (a model passed in)"
    names = ", ".join(data.get("files") or {}) or "none (data built in Python)"
    if data.get("changed") is None:
        return f"{names}: not checked (the run records none)"
    if data["changed"]:
        return f"{names}: CHANGED since training ({', '.join(data['changed'])}), accepted deliberately"
    return f"{names}: as trained on (SHA-256 checked)"


# ----------------------------------------------------------------------------- records written with the weights
def data_record(splits: Splits) -> dict:
    """What a run records of the data it is trained on: ``{"dataset", "files": {name: SHA-256}}``, the
    files :func:`iwae.data.load_dataset` read (none for data built in Python)."""
    return {"dataset": splits.name, "files": dict(sorted(getattr(splits, "files", {}).items()))}


def identity_record(run_dir: str | os.PathLike) -> dict | None:
    """The identity of the run whose config.yaml is in ``run_dir`` (None without one), as a weights file
    records it."""
    path = Path(run_dir) / CONFIG
    return _plain(run_identity(read_config(path))) if path.is_file() else None


def check_belongs(run_dir: str | os.PathLike, path: Path, meta: Mapping) -> None:
    """Refuses a weights file ``path`` whose recorded run identity is not that of ``run_dir``'s
    config.yaml (a file of another run copied in); nothing to check for a file that records none
    (an older iwae) or a folder without config.yaml."""
    recorded = meta.get("run_identity")
    config_path = Path(run_dir) / CONFIG
    if recorded is None or not config_path.is_file():
        return
    if not isinstance(recorded, Mapping):
        raise CheckpointError(f"{path} has a run identity that is not a mapping; was it written by iwae?")
    config = read_config(config_path)
    changed = changed_settings(_plain(dict(recorded)), _plain(config.to_dict()))
    if changed:
        current = run_identity(_plain(config.to_dict()))
        details = ", ".join(f"{k} {recorded.get(k)!r} there, {current.get(k)!r} in config.yaml" for k in changed)
        raise CheckpointError(
            f"{path} belongs to another run than {config_path} describes ({details}): a file copied from "
            f"another run? restore the files that belong together"
        )


def check_finite(path: Path, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Refuses weights (the tensors of ``tensors`` whose names start with ``prefix``) holding nan or inf."""
    for name, value in tensors.items():
        if name.startswith(prefix) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{path} holds weights that are not finite (nan or inf in {name[len(prefix) :]}); a model "
                f"with them measures nothing: restore a copy of the run, or train it again"
            )


# ----------------------------------------------------------------------------- the data against the record
def changed_files(recorded: Mapping | None, splits: Splits) -> list[str] | None:
    """The names of the data files whose SHA-256 differs between ``recorded`` (a :func:`data_record`)
    and the files ``splits`` were read from (a file read now and not then, or then and not now, counts);
    None when there is no record to check against."""
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("files"), Mapping):
        return None
    then, now = dict(recorded["files"]), dict(getattr(splits, "files", {}))
    if not then or not now:  # data built in Python, at training or now: no files to compare
        return []
    if sorted(then.values()) == sorted(now.values()):  # the same contents, moved or renamed (npz:NEW)
        return []
    return sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))


def check_data(run_dir: str | os.PathLike, recorded: Mapping | None, splits: Splits, accept_changed: bool) -> dict:
    """Compares the data files ``splits`` were read from with those run ``run_dir`` recorded when it was
    trained (``recorded``, a :func:`data_record`); returns what an evaluation records of it:
    ``{"files": {name: SHA-256 now}, "changed": [names]}`` (``changed`` None: nothing recorded to check).

    Raises:
        DataError: a file changed since training and ``accept_changed`` is false.
    """
    changed = changed_files(recorded, splits)
    if changed is None:
        warnings.warn(
            f"{run_dir} records no SHA-256 of the data files it was trained on (trained by an older iwae): "
            f"the data it is measured on now cannot be checked against them",
            UncheckedWarning,
            stacklevel=2,
        )
    elif changed and not accept_changed:
        then, now = dict(recorded["files"]), dict(getattr(splits, "files", {}))
        name = changed[0]
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise DataError(
            f"the data of {run_dir} changed since it was trained: {name}{more} had SHA-256 "
            f"{(then.get(name) or 'none')[:12]}... then, {(now.get(name) or 'none')[:12]}... now; restore the "
            f"files it was trained on, or pass --accept-changed-data to use the new ones deliberately"
        )
    return {"files": dict(sorted(getattr(splits, "files", {}).items())), "changed": changed}


# ----------------------------------------------------------------------------- two evaluations
def _where(record: Mapping) -> str:
    model = record.get("model") if isinstance(record.get("model"), Mapping) else {}
    return str(model.get("run_dir") or "an evaluation of a model passed in")


def _method(record: Mapping) -> str:
    return str(record.get("method") or ("ais" if "steps" in record else "lk"))


def _settings(record: Mapping) -> dict:
    keys = AIS_SETTINGS if _method(record) == "ais" else ("k",)
    return {key: record.get(key) for key in keys}


def _code_length(record: Mapping) -> bool:
    """Whether an evaluation's NLL is a code length (a discrete likelihood) rather than a density."""
    if "code_length" in record:
        return bool(record["code_length"])
    return record.get("likelihood", "bernoulli") != "gaussian"


def comparable(a: Mapping, b: Mapping, *, accept_changed_data: bool = False) -> str | None:
    """Whether two evaluation records (as ``iwae evaluate`` and ``iwae.ais.ais_evaluate`` write them) may
    be paired image by image: None if so, else a one-line reason.

    They must measure the same test tensor (``test_images.sha256``: the same images, binarized or
    dequantised the same way, in the same order), by the same method with the same settings (L_k's k;
    AIS's T, C, L, schedule and initial distribution), a code length against a code length or a density
    against a density; and neither may be of data files that changed since its run was trained unless
    ``accept_changed_data``. A record without a test-image digest (an older iwae) cannot be checked.
    """
    for record in (a, b):
        images = record.get("test_images") if isinstance(record.get("test_images"), Mapping) else {}
        if not images.get("sha256"):
            return (
                f"the evaluation of {_where(record)} records no digest of its test images (written by an "
                f"older iwae), so it cannot be checked to be on the same images: evaluate it again"
            )
    if a["test_images"]["sha256"] != b["test_images"]["sha256"] or a.get("n_test") != b.get("n_test"):
        return (
            f"they measured different test images: {_where(a)} {images_text(a['test_images'])}, "
            f"{_where(b)} {images_text(b['test_images'])}"
        )
    if _method(a) != _method(b):
        names = {"lk": "L_k", "ais": "AIS"}
        method_a, method_b = names.get(_method(a)), names.get(_method(b))
        return f"they are of different methods: {method_a} for {_where(a)}, {method_b} for {_where(b)}"
    settings_a, settings_b = _settings(a), _settings(b)
    if settings_a != settings_b:
        details = ", ".join(f"{k} {v} vs {settings_b[k]}" for k, v in settings_a.items() if v != settings_b[k])
        return f"they were made with different settings ({details}), which change the expected value"
    if _code_length(a) != _code_length(b):
        kind = lambda r: "a code length" if _code_length(r) else "a density"  # noqa: E731
        return (
            f"one NLL is {kind(a)} ({a.get('likelihood')} likelihood, {_where(a)}), the other {kind(b)} "
            f"({b.get('likelihood')} likelihood, {_where(b)}): they are not in the same units"
        )
    for record in (a, b):
        data = record.get("data") if isinstance(record.get("data"), Mapping) else {}
        if data.get("changed") and not accept_changed_data:
            return (
                f"the evaluation of {_where(record)} measured data files that changed since the run was trained "
                f"({', '.join(data['changed'])}); pass --accept-changed-data to compare it deliberately"
            )
    return None
