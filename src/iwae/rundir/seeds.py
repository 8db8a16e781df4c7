"""A folder of seeds: what ``iwae train --seeds 0,1,2 --out D`` writes, one run per seed in ``D/seed0``,
``D/seed1``, ... and nothing else of its own. ``iwae evaluate D``, ``iwae compare D1 D2`` and
``iwae report D`` take such a folder as one thing; this module says which folders are one and what
their members are."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError
from .layout import CONFIG, MODEL

__all__ = ["SEED_FOLDER", "seed_members", "is_seed_group", "member_seed", "check_run_or_seeds"]

SEED_FOLDER = re.compile(r"seed(0|[1-9][0-9]*)")  # seed0, seed1, ..., seed12: the member folders' names


def member_seed(path: str | os.PathLike) -> int | None:
    """The seed in a member folder's name (``seed3`` -> 3), None for any other name."""
    match = SEED_FOLDER.fullmatch(Path(path).name)
    return int(match[1]) if match else None


def seed_members(folder: str | os.PathLike) -> list[Path]:
    """The member runs of a folder of seeds, in seed order: its subfolders ``seed<N>`` that hold a
    config.yaml. Empty when ``folder`` is missing, is a run itself (holds a config.yaml), or has none."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / CONFIG).exists():
        return []
    found = [p for p in folder.iterdir() if member_seed(p) is not None and (p / CONFIG).is_file()]
    return sorted(found, key=member_seed)


def is_seed_group(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a folder of seeds (see :func:`seed_members`) rather than a run."""
    return bool(seed_members(folder))


def check_run_or_seeds(folder: str | os.PathLike) -> None:
    """Refuses an existing folder that is neither a run (config.yaml, model.safetensors) nor a folder of
    seeds, saying both, rather than naming the one file of a run it lacks."""
    folder = Path(folder)
    run_files = (folder / CONFIG).exists() or (folder / MODEL).exists()
    if folder.is_dir() and not run_files and not is_seed_group(folder):
        raise CheckpointError(
            f"{folder} is neither a run (it holds no {CONFIG} or {MODEL}) nor a folder of seeds (no "
            f"seed0/, seed1/, ... with a {CONFIG} each, as iwae train --seeds writes)"
        )
