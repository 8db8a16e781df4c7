"""The exact bias of the log of a k-sample mean: a toy of why L_k rises with k (Burda et al. 2016)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["toy_bias"]


def toy_bias(k: int, a: float = 0.1, b: float = 2.0, p: float = 0.9) -> float:
    """E[log (1/k) sum_i X_i] - log E[X] for k iid X_i with X = a with probability p, else b; exact.

    With j the number of draws equal to a, j ~ Binomial(k, p) and the mean is (j a + (k - j) b) / k:

        E[log mean] = sum_j C(k, j) p^j (1 - p)^(k - j) log((j a + (k - j) b) / k)

    the binomial weights taken in log space (lgamma), so k in the thousands is fine. By Jensen the
    bias is <= 0, and it rises monotonically to 0 as k grows, as the IWAE bound L_k does (Burda et
    al. 2016).

    Raises:
        ValueError: for k < 1, a or b not > 0, or p outside [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not (a > 0 and b > 0):
        raise ValueError(f"the two values must be > 0 for the log, got a = {a}, b = {b}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    j = np.arange(k + 1, dtype=np.float64)
    log_binomial = np.array([math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1) for i in range(k + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 or 1: 0 * log 0 counts as 0
        log_weights = (
            log_binomial + np.where(j > 0, j * np.log(p), 0.0) + np.where(k - j > 0, (k - j) * np.log1p(-p), 0.0)
        )
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    expected_log_mean = float(np.sum(weights * np.log((j * a + (k - j) * b) / k)))
    return expected_log_mean - math.log(p * a + (1 - p) * b)
