"""The tanh MLPs of Burda et al. (2016) that map one layer's values to the next layer's distribution.

``GaussianMLP`` maps ``h`` to a diagonal Normal (mean = linear, sigma = exp(linear)); it serves as
each encoder layer q(z_l | z_{l-1}) and as the inner decoder layers p(z_l | z_{l+1}).
``MLPDecoder`` maps ``z`` to the raw parameters of p(x | z) (``P * D`` outputs, parameter-major;
Bernoulli logits for P = 1), and ``BernoulliMLP`` is the same network returning the Bernoulli
distribution. Weights are Glorot-uniform, biases zero, as in the released code of Burda et al.

The factories :func:`make_encoder_layer` and :func:`make_decoder` build one of :data:`NETWORKS`:
``mlp`` (these), ``gated`` (:mod:`.gated`, the VampPrior paper's GatedDense networks) and ``conv``
(:mod:`.conv`, a small convolutional encoder and decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

__all__ = ["GaussianMLP", "MLPDecoder", "BernoulliMLP", "Tanh", "glorot_linear", "tanh_kernel", "output_layer_kernel"]


class _TanhFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if h.dtype in (torch.bfloat16, torch.float16):  # under autocast (iwae.precision): float32 inside,
            # one rounding at the end; sigmoid near 1/2 has a bfloat16 ulp of 2^-8, which would swamp small h
            y = torch.sigmoid(h.float() * 2.0).mul_(2.0).sub_(1.0).to(h.dtype)
        else:
            y = torch.sigmoid(h * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)  # grad * (1 - y^2)


def _tanh_via_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """tanh(h) as 2 sigmoid(2h) - 1, with the usual (1 - tanh^2) g gradient."""
    return _TanhFunction.apply(h)


def _linear_then_bias(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h W^T + b as a matmul and an in-place bias add."""
    # addmm would first broadcast the bias into the whole (K * B, D) output and then accumulate
    # into it, an extra pass over the largest tensor on CPU
    # .to(bias.dtype): under bf16 autocast the product is bfloat16; the bias is added in float32 (a no-op otherwise)
    return torch.matmul(h, weight.t()).to(bias.dtype).add_(bias)


def tanh_kernel(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tanh used on ``device``: 2 sigmoid(2h) - 1 on CPU, ``torch.tanh`` elsewhere.

    On CPU PyTorch's vectorised sigmoid is about 3x faster than its tanh; on CUDA the sigmoid form
    is four elementwise kernels (mul, sigmoid, mul, sub) where ``torch.tanh`` is one, and every
    one of them is a pass over memory. ``benchmarks/kernels.py`` times both on the current device.
    """
    return _tanh_via_sigmoid if torch.device(device).type == "cpu" else torch.tanh


def output_layer_kernel(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The decoder's output layer ``(h, weight, bias) -> h W^T + b`` used on ``device``.

    On CPU a matmul and an in-place bias add (see :func:`_linear_then_bias`); elsewhere
    ``F.linear``, which on CUDA adds the bias in the matrix product's epilogue (cuBLASLt) instead
    of a second pass over the ``(K * B, 784)`` output. ``benchmarks/kernels.py`` times both.
    """
    return _linear_then_bias if torch.device(device).type == "cpu" else F.linear


def float32_out(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 where autocast left it in half precision (bf16-mixed training, iwae.precision):
    distribution parameters leave every network in float32, so samples, log q and log p(x | z) are
    float32 whatever the network (float64 models are left as they are)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class Tanh(nn.Module):
    """tanh(h), by the kernel that is fastest on ``h``'s device (:func:`tanh_kernel`).

    On CPU it is 2 sigmoid(2h) - 1: the same function (absolute error below 2e-7 in float32), but
    PyTorch's CPU sigmoid is about 3x faster than its tanh, and the hidden layers' tanh is a
    sizeable part of a training step at large K. The gradient is the usual (1 - tanh^2) g.
    """

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return tanh_kernel(h.device)(h)


def glorot_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer with Glorot-uniform weights, U(-a, a), a = sqrt(6 / (in + out)), and zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _tanh_mlp(in_features: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [glorot_linear(width, h), Tanh()]
        width = h
    return nn.Sequential(*layers), width


class GaussianMLP(nn.Module):
    """h -> N(loc(h), diag(scale(h)^2)): a tanh MLP, then loc = linear, scale = exp(linear).

    The mean and log-scale heads are one ``out_features * 2`` linear layer (one matrix product)
    whose two halves are initialised as two separate Glorot layers, as in the original code.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.body, width = _tanh_mlp(in_features, hidden)
        self.head = nn.Linear(width, 2 * out_features)
        with torch.no_grad():
            for half in (slice(0, out_features), slice(out_features, None)):
                nn.init.xavier_uniform_(self.head.weight[half])
            self.head.bias.zero_()
        self.out_features = out_features

    def loc_log_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loc, log_scale)``, each of shape ``h.shape[:-1] + (out_features,)``."""
        out = self.head(self.body(h))
        # float32 as it leaves the network, also under bf16 autocast: eps, z and log q are computed in it
        out = out.to(self.head.weight.dtype)
        loc, log_scale = out.chunk(2, dim=-1)
        return loc, log_scale

    def forward(self, h: torch.Tensor) -> Independent:
        loc, log_scale = self.loc_log_scale(h)
        return Independent(Normal(loc, log_scale.exp()), 1)


class MLPDecoder(nn.Module):
    """z -> raw parameters of p(x | z): a tanh MLP and a linear output layer of ``out_features`` units.

    ``out_features = P * D`` for a likelihood with P parameters per pixel, parameter-major
    (``raw[..., p*D:(p+1)*D]`` is parameter p); for the Bernoulli (P = 1) the raw outputs are the
    logits. The parameter names (``body.*``, ``head.*``) and the initialisation order are those of
    the original ``BernoulliMLP``, so a seed gives the same weights.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.body, width = _tanh_mlp(in_features, hidden)
        self.head = glorot_linear(width, out_features)

    @property
    def output_bias(self) -> nn.Parameter:
        """The output layer's bias, shape ``(out_features,)`` (the likelihood initialises it)."""
        return self.head.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw outputs, shape ``z.shape[:-1] + (out_features,)``."""
        h = self.body(z)
        # float32 logits also under bf16 autocast (CUDA's F.linear returns bfloat16 there)
        return output_layer_kernel(h.device)(h, self.head.weight, self.head.bias).to(self.head.weight.dtype)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The raw outputs (the Bernoulli logits where P = 1)."""
        return self.forward(z)


class BernoulliMLP(MLPDecoder):
    """z -> Bernoulli(logits(z)) over ``out_features`` pixels: :class:`MLPDecoder` returning the distribution."""

    def forward(self, z: torch.Tensor) -> Independent:  # type: ignore[override]
        return Independent(Bernoulli(logits=self.logits(z)), 1)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return MLPDecoder.forward(self, z)
