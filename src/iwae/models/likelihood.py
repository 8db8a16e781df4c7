"""log p(x | z) for the Bernoulli decoder, the hot spot of every training step and evaluation.

The decoder's output layer is the largest tensor of a step, ``(K * B, 784)``. PyTorch's
``binary_cross_entropy_with_logits`` makes several passes over it (its log-sigmoid forward alone
was about a third of a training step at K = 50 on a 2-core CPU, see ``benchmarks/``), so the
log-likelihood and its gradient are written here as one small autograd function:

    log p(x | l) = sum_d x_d l_d - softplus(l_d),     d/dl_d = x_d - sigmoid(l_d)

Same formula, same values (to float rounding), two passes forward and three backward. It serves on
every device: PyTorch's function is composite on CUDA too, and passes over memory are what an
elementwise kernel costs there; ``benchmarks/kernels.py`` times both on the current device (the GPU
check prints it), where tanh and the output layer are chosen by device (:mod:`.networks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .networks import BernoulliMLP

__all__ = ["bernoulli_log_prob", "bernoulli_log_prob_from_logits"]


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        nll = F.softplus(logits)  # (K, B, D)
        nll.addcmul_(logits, x, value=-1.0)  # softplus(l) - x * l, x broadcast over K
        ctx.save_for_backward(logits, x)
        return nll.sum(-1).neg_()  # (K, B)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        logits, x = ctx.saved_tensors
        grad_logits = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.sigmoid(logits)
            grad_logits.sub_(x).mul_(grad.neg().unsqueeze(-1))  # (x - sigmoid(l)) * g
        if ctx.needs_input_grad[1]:
            grad_x = (logits * grad.unsqueeze(-1)).sum_to_size(x.shape)
        return grad_logits, grad_x


def bernoulli_log_prob_from_logits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_d x_d l_d - softplus(l_d) over the last dim, ``x`` broadcast to ``logits``' shape.

    Equals ``Independent(Bernoulli(logits=logits), 1).log_prob(x)`` (tested), in two passes. Reduced-
    precision logits (bfloat16 from a product under autocast) are cast to float32 first: the sum
    over pixels is a reduction of the log-weights and stays float32 (:mod:`iwae.precision`).
    """
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    return _BernoulliLogProb.apply(logits, x)


def bernoulli_log_prob(decoder: BernoulliMLP, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) with logits from ``decoder(z)``.

    Args:
        decoder: the Bernoulli MLP.
        z: latent samples, shape ``(K, B, D_z)``.
        x: inputs, shape ``(B, D)``, broadcast over the K samples without a copy.

    Returns:
        Shape ``(K, B)``.
    """
    return bernoulli_log_prob_from_logits(decoder.logits(z), x)
