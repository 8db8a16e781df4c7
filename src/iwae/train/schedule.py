"""The learning-rate schedule and the KL warm-up of a training run, as functions of the epoch."""

from __future__ import annotations

from ..config.train import PAPER_STAGES, TrainConfig

__all__ = ["paper_schedule", "learning_rate", "kl_weight"]


def paper_schedule(stages: int = PAPER_STAGES, lr: float = 1e-3) -> list[tuple[int, float]]:
    """Burda et al.'s schedule: ``[(3^i epochs, lr * 10^(-i/7)) for i in range(stages)]``."""
    return [(3**i, lr * 10 ** (-i / 7)) for i in range(stages)]


def kl_weight(config: TrainConfig, epoch: int) -> float:
    """KL warm-up: the weight of log p(z) - log q(z|x) in the 0-based ``epoch``, epoch / kl_warmup up to 1."""
    return min(1.0, epoch / config.kl_warmup) if config.kl_warmup else 1.0


def learning_rate(config: TrainConfig, epoch: int) -> tuple[int, float]:
    """``(stage, learning rate)`` of the 0-based ``epoch``; the paper schedule's last rate continues past 3,280."""
    if config.schedule == "constant":
        return 0, config.lr
    end = 0
    for stage, (n, lr) in enumerate(paper_schedule(lr=config.lr)):
        end += n
        if epoch < end:
            return stage, lr
    return PAPER_STAGES - 1, paper_schedule(lr=config.lr)[-1][1]
