"""What a run says when it starts: the epochs planned, and after its first epoch how long the rest will
take at that pace, so that a run of the whole paper schedule (3,280 epochs, weeks on a CPU) never
starts without a word."""

from __future__ import annotations

from ..config.train import TrainConfig

__all__ = ["plan_line", "estimate_line", "duration"]


def duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``12m05s``, ``3h20m``, ``4.2 days``."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s} s"


def plan_line(config: TrainConfig, n_train: int, start_epoch: int = 0, members: int = 1) -> str:
    """``training runs/x: IWAE(k=5), epochs 1-10 of 10, on 59600 images`` (and, without ``epochs``,
    that the whole paper schedule is planned and how to ask for fewer)."""
    total = config.total_epochs
    who = f"{members} runs as one batched model" if members > 1 else config.spec.label
    line = (
        f"training {config.out if members == 1 else 'the members'}: {who}, "
        f"epochs {start_epoch + 1}-{total} of {total}, on {n_train} images"
    )
    if config.epochs is None:
        line += (
            f"; no epochs given: the whole paper schedule, {total} epochs (weeks on a CPU); "
            f"stop with Ctrl-C and resume, or give --epochs N (epochs=N) for the first N"
        )
    return line


def estimate_line(epoch_seconds: float, epochs_left: int) -> str:
    """After the first epoch of an invocation: how long the epochs left take at its pace."""
    if epochs_left <= 0:
        return f"the epoch took {duration(epoch_seconds)}"
    return (
        f"the first epoch took {duration(epoch_seconds)}: the {epochs_left} left will take about "
        f"{duration(epoch_seconds * epochs_left)} at that pace"
    )
