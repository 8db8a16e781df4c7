"""The model a :class:`~.vae.ModelConfig` describes: ``make_model(config)`` builds a :class:`~.vae.VAE` for
``model="vae"`` and a :class:`~.hvae.HVAE` for ``model="hvae"``; training and the run folder build every
model through it."""

from __future__ import annotations

from torch import nn

from ..choices import MODELS
from ..config import ModelConfig
from .hvae import HVAE
from .vae import VAE

__all__ = ["make_model", "MODELS"]


def make_model(config: ModelConfig) -> nn.Module:
    """The model of ``config.model`` (one of :data:`~.vae.MODELS`) with ``config``'s sizes, freshly initialised
    from torch's global random numbers."""
    builders = {"vae": VAE, "hvae": HVAE}
    assert set(builders) == set(MODELS), f"a model of {MODELS} has no builder"
    return builders[config.model](config)
