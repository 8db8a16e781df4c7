"""Variational bounds as pure functions of log importance weights.

Every objective takes the log-weights ``log_w = log p(x, z) - log q(z | x)`` of samples
``z ~ q(z | x)`` (see :meth:`iwae.models.VAE.log_weights`) and returns one value per example,
shape ``(B,)``. All reductions stay in log space (``logsumexp``); weights are never exponentiated.

Shapes: samples first, then batch: ``(K, B)`` for one group of K samples, ``(M, K, B)`` for M groups.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [2] T. Rainforth, A. Kosiorek, T. A. Le, C. Maddison, M. Igl, F. Wood, Y. W. Teh.
        Tighter Variational Bounds are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

import math

import torch

from .choices import OBJECTIVES

__all__ = ["elbo", "iwae", "miwae", "ciwae", "piwae", "OBJECTIVES"]


def _check_samples_dim(log_w: torch.Tensor, ndim: int, name: str) -> None:
    if log_w.dim() != ndim:
        raise ValueError(
            f"{name} expects log-weights with {ndim} dims "
            f"({'(K, B)' if ndim == 2 else '(M, K, B)'}), got shape {tuple(log_w.shape)}"
        )
    if log_w.shape[0] < 1 or (ndim == 3 and log_w.shape[1] < 1):
        raise ValueError(f"{name} needs at least one sample, got shape {tuple(log_w.shape)}")


def elbo(log_w: torch.Tensor) -> torch.Tensor:
    """The VAE evidence lower bound estimated with K samples (Kingma & Welling 2014).

    .. math:: \\mathcal{L}(x) = \\frac{1}{K} \\sum_{i=1}^K \\log w_i

    Args:
        log_w: log importance weights, shape ``(K, B)``.

    Returns:
        The bound per example, shape ``(B,)``.
    """
    _check_samples_dim(log_w, 2, "elbo")
    return log_w.mean(dim=0)


def iwae(log_w: torch.Tensor) -> torch.Tensor:
    """The importance weighted bound L_K of Burda et al. [1].

    .. math:: \\mathcal{L}_K(x) = \\log \\frac{1}{K} \\sum_{i=1}^K w_i
              = \\operatorname{logsumexp}_i(\\log w_i) - \\log K

    ``L_1`` is the ELBO; ``L_K <= L_{K'} <= log p(x)`` for ``K <= K'`` [1, Thm. 1].

    Args:
        log_w: log importance weights, shape ``(K, B)``.

    Returns:
        The bound per example, shape ``(B,)``.
    """
    _check_samples_dim(log_w, 2, "iwae")
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def miwae(log_w: torch.Tensor) -> torch.Tensor:
    """The multiply importance weighted bound MIWAE(M, K) of Rainforth et al. [2].

    .. math:: \\mathrm{MIWAE}_{M,K}(x) = \\frac{1}{M} \\sum_{m=1}^M
              \\log \\frac{1}{K} \\sum_{k=1}^K w_{m,k}

    MIWAE(1, K) is IWAE(K); MIWAE(M, 1) is the M-sample ELBO.

    Args:
        log_w: log importance weights, shape ``(M, K, B)``: M independent groups of K samples.

    Returns:
        The bound per example, shape ``(B,)``.
    """
    _check_samples_dim(log_w, 3, "miwae")
    return (torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])).mean(dim=0)


def ciwae(log_w: torch.Tensor, beta: float) -> torch.Tensor:
    """The combination CIWAE(beta) of the ELBO and IWAE bounds on the same samples [2].

    .. math:: \\mathrm{CIWAE}_\\beta(x) = \\beta\\, \\mathcal{L}(x) + (1 - \\beta)\\, \\mathcal{L}_K(x)

    Args:
        log_w: log importance weights, shape ``(K, B)``.
        beta: weight of the ELBO, in ``[0, 1]``; ``beta = 0`` is IWAE, ``beta = 1`` the ELBO.

    Returns:
        The bound per example, shape ``(B,)``.

    Raises:
        ValueError: if ``beta`` is outside ``[0, 1]``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"ciwae needs beta in [0, 1], got {beta}")
    return beta * elbo(log_w) + (1.0 - beta) * iwae(log_w)


def piwae(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two objectives of the partially importance weighted rule PIWAE(M, K) [2].

    PIWAE is a gradient rule rather than one bound: on the same ``M * K`` samples the decoder
    (generative network, theta, and a learnable prior) ascends IWAE(M * K) while the encoder
    (inference network, phi) ascends MIWAE(M, K):

    .. math:: \\Delta\\theta \\propto \\nabla_\\theta\\, \\mathcal{L}_{MK}(x), \\qquad
              \\Delta\\phi \\propto \\nabla_\\phi\\, \\mathrm{MIWAE}_{M,K}(x)

    No single scalar has that gradient, so this returns both objectives; the trainer
    back-propagates the first into the decoder's parameters only and the second into the
    encoder's only (``Tensor.backward(inputs=...)``), which runs the decoder forward once.
    The value to report is the first, the IWAE(M * K) bound.

    Args:
        log_w: log importance weights, shape ``(M, K, B)``.

    Returns:
        ``(decoder_objective, encoder_objective)``, each of shape ``(B,)``.
    """
    _check_samples_dim(log_w, 3, "piwae")
    m, k, b = log_w.shape
    return iwae(log_w.reshape(m * k, b)), miwae(log_w)
