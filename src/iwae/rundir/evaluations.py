"""The measurements written into a run directory: evaluations (a JSON and the per-image bounds beside
it), ELBO surgery, and the record beside a figure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .layout import _write_json, atomic_write

__all__ = [
    "eval_name",
    "evaluation_files",
    "list_evaluations",
    "write_evaluation",
    "read_evaluation",
    "read_bounds",
    "write_surgery",
    "write_figure_record",
]


def eval_name(k: int, seed: int, test_subset: int | None = None) -> str:
    """File stem of an evaluation in a run directory: ``eval_k{k}_seed{seed}`` on all test images,
    ``eval_k{k}_n{N}_seed{seed}`` on the first N (the JSON and the per-image ``.npy`` share it)."""
    return f"eval_k{k}" + (f"_n{test_subset}" if test_subset is not None else "") + f"_seed{seed}"


def evaluation_files(name: str) -> dict:
    """The files of evaluation ``name``, relative to its run directory: ``{"json", "bounds"}``."""
    return {"json": f"{name}.json", "bounds": f"{name}.npy"}


def list_evaluations(run_dir: str | os.PathLike) -> list[str]:
    """The stems of the evaluations in ``run_dir`` (L_k's ``eval_...`` and AIS's ``ais_...``) whose JSON
    and per-image ``.npy`` are both there, sorted by name; what each measured is in its JSON."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(
        p.stem
        for p in run_dir.glob("*.json")
        if p.stem.startswith(("eval_", "ais_")) and not p.name.startswith(".") and p.with_suffix(".npy").is_file()
    )


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
