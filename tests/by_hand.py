"""Independent computations that tests compare the package's reported numbers with.

They are written from the papers' definitions on the model's public methods (``log_weights``,
``encode``), not by calling the evaluation code under test:

- L_k(x) = log (1/k) sum_i w_i, averaged over images (Burda et al. 2016, Eq. 8), in float64;
- active units (Burda et al., Sec. 5.2): Var_x(E_q[u | x]) > 0.01 over the first 500 training
  images, binarized (the images the model sees).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from iwae import data as data_module
from iwae import evaluate as evaluate_module

ACTIVITY_THRESHOLD = 1e-2  # Burda et al., Sec. 5.2


@torch.no_grad()
def mean_lk(model, x: torch.Tensor, k: int, seeds=(101, 102, 103, 104)) -> tuple[float, float]:
    """(mean over ``seeds`` of the mean L_k over the rows of ``x``, the spread (std) of one such estimate)."""
    was_training = model.training
    model.eval()
    values = []
    for seed in seeds:
        lw = model.log_weights(x, k, torch.Generator().manual_seed(seed)).double()  # (k, N)
        values.append((torch.logsumexp(lw, 0) - math.log(k)).mean().item())
    model.train(was_training)
    return float(np.mean(values)), float(np.std(values))


def active_unit_images(train: torch.Tensor) -> torch.Tensor:
    """The first 500 training images, binarized once with the evaluation's documented seed."""
    return torch.from_numpy(data_module.fixed_binarization(train[:500].numpy(), evaluate_module.ACTIVE_UNITS_SEED))


@torch.no_grad()
def active_units_one_layer(model, train: torch.Tensor) -> int:
    """Burda et al.'s active-unit count of a 1-layer model, with numpy's variance of q's mean."""
    mean = model.encode(active_unit_images(train)).mean.double().numpy()
    return int((mean.var(0) > ACTIVITY_THRESHOLD).sum())
