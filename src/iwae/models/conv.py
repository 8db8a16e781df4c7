"""A small convolutional encoder and decoder for 28 x 28-like images, one stochastic layer.

With the default channels (32, 64) and an image of C x H x W:

    encoder  x (C, H, W) -> conv 4x4 stride 2 pad 1, 32 ch, ReLU -> (32, H/2, W/2)
                         -> conv 4x4 stride 2 pad 1, 64 ch, ReLU -> (64, H/4, W/4)
                         -> flatten -> linear to 2 D_z: (loc, log sigma) of q(z | x)
    decoder  z (D_z)     -> linear to 64 (H/4) (W/4), ReLU -> (64, H/4, W/4)
                         -> conv-transpose 4x4 stride 2 pad 1, 32 ch, ReLU -> (32, H/2, W/2)
                         -> conv-transpose 4x4 stride 2 pad 1, P C ch (no bias) -> (P, C, H, W)
                         -> flatten, + a per-output bias (P C H W,): the raw parameters of p(x | z)

Each entry of the channel list (``hidden_dims``) is one stride-2 layer, so H and W must be
divisible by 2^L for L layers (28 x 28 and 28 x 20 are, for L = 2); other sizes are refused with a
one-line error. The decoder's output bias is one parameter per output (not per channel), so that
the likelihood can start it at the training mean of each pixel as for the MLP. Inputs are flat,
``(..., C H W)`` in C, H, W order with any leading dims (flattened for the convolutions and
restored after). Weights keep PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .networks import float32_out

__all__ = ["ConvEncoder", "ConvDecoder", "chw"]


def chw(pixels: int, image_shape: Sequence[int] | None, layers: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image of ``pixels`` values: ``image_shape`` as (H, W) or (C, H, W), None for
    square with one channel; refuses shapes the ``layers`` stride-2 layers cannot halve exactly."""
    if layers < 1:
        raise ValueError("the conv network needs at least one convolution: give its channels, e.g. 32,64")
    if image_shape is None:
        side = math.isqrt(pixels)
        if side * side != pixels:
            raise ValueError(
                f"the conv network needs the image shape of inputs of {pixels} pixels (not a square); "
                f"give image_shape (H, W) or (C, H, W)"
            )
        shape = (1, side, side)
    else:
        shape = tuple(int(s) for s in image_shape)
        shape = (1,) + shape if len(shape) == 2 else shape
        if len(shape) != 3 or math.prod(shape) != pixels:
            raise ValueError(
                f"image_shape {tuple(image_shape)} does not describe {pixels} pixels as (H, W) or (C, H, W)"
            )
    c, h, w = shape
    step = 2**layers
    if h % step or w % step:
        raise ValueError(
            f"the conv network with {layers} stride-2 layers needs H and W divisible by {step}, "
            f"got {h} x {w}; pad or crop the images, or give fewer channels"
        )
    return c, h, w


class ConvEncoder(nn.Module):
    """q(z | x) from stride-2 convolutions and a linear head (see the module docstring)."""

    def __init__(
        self, in_features: int, channels: Sequence[int], out_features: int, image_shape: Sequence[int] | None = None
    ):
        super().__init__()
        self.shape = chw(in_features, image_shape, len(channels))
        c, h, w = self.shape
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.ReLU()]
            c, h, w = ch, h // 2, w // 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, 2 * out_features)
        self.out_features = out_features

    def loc_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, log_scale)``, each ``x.shape[:-1] + (out_features,)``."""
        lead = x.shape[:-1]
        h = self.body(x.reshape(-1, *self.shape))  # (N, C_L, H / 2^L, W / 2^L)
        out = float32_out(self.head(h.flatten(1))).reshape(*lead, 2 * self.out_features)  # float32 under autocast too
        loc, log_scale = out.chunk(2, dim=-1)
        return loc, log_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc_log_scale(x)


class ConvDecoder(nn.Module):
    """z -> raw parameters of p(x | z): linear, then stride-2 transposed convolutions (module docstring).

    ``channels`` in the decoder's order (the encoder's reversed, e.g. 64, 32); ``out_features = P C H W``.
    ``image_shape`` None means a square one-channel image and P = 1 (pass the shape for P > 1).
    """

    def __init__(
        self, in_features: int, channels: Sequence[int], out_features: int, image_shape: Sequence[int] | None = None
    ):
        super().__init__()
        if image_shape is None:  # square, one channel, one parameter per pixel
            pixels = out_features
        else:
            pixels = math.prod(int(s) for s in image_shape)
        if out_features % pixels:
            raise ValueError(
                f"the conv decoder's {out_features} outputs are not a whole number of parameters "
                f"per pixel of a {tuple(image_shape or ())} image"
            )
        c, h, w = chw(pixels, image_shape, len(channels))
        self.params_per_pixel = out_features // pixels
        self.image = (c, h, w)
        step = 2 ** len(channels)
        self.start = (channels[0], h // step, w // step)
        self.fc = nn.Linear(in_features, math.prod(self.start))
        layers: list[nn.Module] = [nn.ReLU()]
        widths = list(channels[1:]) + [self.params_per_pixel * c]
        width = channels[0]
        for i, ch in enumerate(widths):
            last = i == len(widths) - 1
            layers.append(nn.ConvTranspose2d(width, ch, 4, stride=2, padding=1, bias=not last))
            if not last:
                layers.append(nn.ReLU())
            width = ch
        self.body = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.out_features = out_features

    @property
    def output_bias(self) -> nn.Parameter:
        """One bias per output, ``(P C H W,)``."""
        return self.bias

    @property
    def floats_per_row(self) -> int:
        """Temporary floats of one sample's forward pass (each layer's output and its ReLU, and the
        likelihood's two passes over the output), for :mod:`iwae.evaluate`'s memory budget."""
        c, h, w = self.start
        sizes = [c * h * w]
        for layer in self.body:
            if isinstance(layer, nn.ConvTranspose2d):
                h, w = 2 * h, 2 * w
                sizes.append(layer.out_channels * h * w)
        return 2 * sum(sizes) + 2 * self.out_features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``z.shape[:-1] + (P C H W,)``: parameter p of pixel (c, y, x) at p C H W + c H W + y W + x."""
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        out = self.body(h)  # (N, P C, H, W), channel index p C + c
        return (out.flatten(1) + self.bias).reshape(*lead, self.out_features)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The raw outputs (Bernoulli logits where there is one parameter per pixel)."""
        return self.forward(z)
