"""The networks by name (:data:`~iwae.choices.NETWORKS`): the encoder layer and the decoder each builds.

mlp     Burda et al.'s tanh MLPs (:mod:`.networks`)
gated   Tomczak & Welling's GatedDense (:mod:`.gated`)
conv    a small convolutional net (:mod:`.conv`)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..choices import NETWORKS
from .conv import ConvDecoder, ConvEncoder
from .gated import GatedDecoder, GatedEncoder
from .networks import GaussianMLP, MLPDecoder

__all__ = ["NETWORKS", "make_encoder_layer", "make_decoder"]


def _check_network(network: str) -> None:
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")


def make_encoder_layer(
    network: str, in_features: int, hidden: Sequence[int], out_features: int, image_shape: Sequence[int] | None = None
) -> nn.Module:
    """One encoder layer q(z | h) of ``network``: a module with ``loc_log_scale(h) -> (loc, log_scale)``,
    ``h`` of shape ``(..., in_features)``, each output ``(..., out_features)``.

    ``hidden``: the tanh widths (mlp), the GatedDense widths (gated, the paper's 300, 300) or the
    channels of the stride-2 convolutions (conv, e.g. 32, 64). ``image_shape`` (conv only): ``(H, W)``
    or ``(C, H, W)`` with product ``in_features``; None means square, one channel.
    """
    _check_network(network)
    if network == "mlp":
        return GaussianMLP(in_features, hidden, out_features)
    if network == "gated":
        return GatedEncoder(in_features, hidden, out_features)
    return ConvEncoder(in_features, hidden, out_features, image_shape)


def make_decoder(
    network: str, in_features: int, hidden: Sequence[int], out_features: int, image_shape: Sequence[int] | None = None
) -> nn.Module:
    """The decoder of p(x | z) of ``network``: ``z (..., in_features) -> raw (..., out_features)``,
    ``out_features = P * D`` parameter-major, with ``output_bias`` (a ``(out_features,)`` Parameter).

    ``hidden`` is read as in :func:`make_encoder_layer`, in the decoder's order (callers pass the
    encoder's widths reversed, as Burda et al.'s nets mirror them). For conv, ``out_features`` must
    be a multiple P of the image's pixel count ``C * H * W``.
    """
    _check_network(network)
    if network == "mlp":
        return MLPDecoder(in_features, hidden, out_features)
    if network == "gated":
        return GatedDecoder(in_features, hidden, out_features)
    return ConvDecoder(in_features, hidden, out_features, image_shape)
