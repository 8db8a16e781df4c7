"""The results of ``iwae reproduce`` in a run directory (result.json, error.json), and the one rule of
when a run is finished (:func:`run_status`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError
from .identity import run_key
from .layout import ERROR_FILE, RESULT_FILE, _read_json, _write_json, ensure
from .weights import model_sha256

__all__ = [
    "write_result",
    "write_error",
    "read_error",
    "clear_error",
    "RunStatus",
    "dependency_digest",
    "run_status",
    "finished_result",
]


def write_result(run_dir: str | os.PathLike, result: dict) -> None:
    """Writes result.json: the run is finished (:func:`run_status`)."""
    _write_json(Path(run_dir) / RESULT_FILE, result)


def write_error(run_dir: str | os.PathLike, error: dict) -> None:
    """Writes error.json (creating the run directory, see :func:`~iwae.rundir.layout.ensure`): the run failed."""
    ensure(run_dir)
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
    outcome = max(
        (p for p in (run_dir / RESULT_FILE, run_dir / ERROR_FILE) if p.is_file()),
        key=lambda p: p.stat().st_mtime,
        default=None,
    )
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
