"""metrics.csv (one row per epoch) and the TensorBoard events of a run."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..config import TrainConfig
from .identity import write_config
from .layout import METRICS, TENSORBOARD, atomic_write

__all__ = [
    "metrics_text",
    "write_metrics",
    "read_metrics",
    "has_metrics",
    "training_seconds",
    "tensorboard_writer",
    "sync_outputs",
]


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
    """A SummaryWriter on ``run_dir/tb``."""
    # deferred: tensorboard is slow to import and only needed while training
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(run_dir) / TENSORBOARD), purge_step=purge_step)


def sync_outputs(run_dir: str | os.PathLike, config: TrainConfig, metrics: list[dict]) -> None:
    """On resume: a run killed between its checkpoint and metrics.csv gets the checkpoint's metrics,
    and config.yaml records the settings of this invocation (epochs, device, ...); both only if changed."""
    path = Path(run_dir) / METRICS
    if metrics and (not path.is_file() or path.read_text() != metrics_text(metrics)):
        write_metrics(run_dir, metrics)
    write_config(run_dir, config)
