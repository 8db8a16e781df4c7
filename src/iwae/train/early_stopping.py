"""Early stopping on the validation bound, as Tomczak & Welling's code does it (``utils/perform_experiment.py``
of github.com/jmtomczak/vae_vampprior), with the best model kept for the test evaluation.

After every epoch the validation bound L_k (higher is better) either improves on the best so far, which
then becomes the best epoch and its weights are kept, or counts one more bad epoch. Bad epochs do not
count during KL warm-up (an epoch before ``kl_warmup``), and training stops after ``patience + 1`` bad
epochs in a row (the code's ``e > early_stopping_epochs``; its patience is 50). Whatever ends the run,
stopping or the last epoch, its model.safetensors is then the best epoch's. The state, with the best
weights, is part of every checkpoint, so a resumed run stops where the uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """The early-stopping state of a run: the best validation bound, its epoch and weights, the bad epochs
    in a row, and whether the run has stopped."""

    patience: int  # bad epochs in a row that are tolerated; one more stops the run
    warmup: int = 0  # epochs of KL warm-up, during which bad epochs do not count
    best: float | None = None  # the best validation bound so far (None before the first finite one)
    best_epoch: int = 0  # the completed epoch that reached it
    bad_epochs: int = 0
    stopped: bool = False
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def update(self, epoch: int, value: float, weights: dict[str, torch.Tensor]) -> bool:
        """Records the validation bound ``value`` of the completed (1-based) ``epoch``; ``weights`` (a state
        dict) are copied when it is the best so far. Returns whether it was. A bound that is not finite
        is never the best."""
        if math.isfinite(value) and (self.best is None or value > self.best):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            self.best_weights = {name: w.detach().clone() for name, w in weights.items()}
            return True
        self.bad_epochs += 1
        if epoch < self.warmup:  # the code: ``if epoch < args.warmup: e = 0``
            self.bad_epochs = 0
        self.stopped = self.bad_epochs > self.patience
        return False

    def state(self) -> dict:
        """The state as JSON values (the checkpoint's metadata; the weights are stored as tensors)."""
        return {
            "patience": self.patience,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
        }

    @classmethod
    def restored(cls, patience: int, warmup: int, state: dict, best_weights: dict[str, torch.Tensor]) -> EarlyStopping:
        """The state a checkpoint recorded (:meth:`state` and the best weights), for the same patience."""
        if int(state["patience"]) != patience:
            raise ValueError(f"its early stopping has patience {state['patience']}, the run {patience}")
        return cls(
            patience,
            warmup,
            None if state["best"] is None else float(state["best"]),
            int(state["best_epoch"]),
            int(state["bad_epochs"]),
            bool(state["stopped"]),
            best_weights,
        )
