"""The sizes and names of a model's parts: what :class:`iwae.models.VAE` is built from, checked by name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..choices import LIKELIHOODS, MODELS, NETWORKS

__all__ = ["ModelConfig", "HVAE_LATENT_DIMS", "HVAE_HIDDEN_DIMS"]

# fields added after runs were recorded: at these defaults they are left out of to_dict(), so that
# the architecture digest (iwae.rundir.model_digest) of every older model stays what it was
_ADDED_DEFAULTS = {"likelihood": "bernoulli", "sigma": None, "network": "mlp", "image_shape": None, "model": "vae"}

# Tomczak & Welling's two-level model (their code's models/HVAE_2level.py): z_1 = z_2 = 40, 300-unit networks
HVAE_LATENT_DIMS = (40, 40)  # (z_1, z_2)
HVAE_HIDDEN_DIMS = ((300, 300), (300, 300))  # (coupled networks: branch, join), (q(z_2 | x): two blocks)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network. The defaults are Burda et al.'s 1-layer MNIST model."""

    input_dim: int = 784  # pixels
    latent_dims: tuple[int, ...] = (50,)  # units per stochastic layer, bottom-up (z_1 first)
    # hidden widths of the deterministic tanh layers of each encoder layer q(z_l | z_{l-1});
    # the decoder layer p(z_{l-1} | z_l) mirrors them in reverse order
    hidden_dims: tuple[tuple[int, ...], ...] = ((200, 200),)
    prior: str = "normal"  # p(z_L): normal, mog or vamp; see iwae.models.priors
    prior_components: int = 1  # mixture components (mog) or pseudo-inputs (vamp); 1 for normal
    prior_learn_weights: bool = False  # learnable mixture weights, mog only
    likelihood: str = "bernoulli"  # p(x | z_1): bernoulli, gaussian or logistic256; see iwae.models.likelihoods
    sigma: float | None = None  # gaussian only: the fixed standard deviation; None: a learned, bounded head
    network: str = "mlp"  # the encoder q(z_1 | x) and decoder p(x | z_1): mlp, gated or conv (iwae.models.networks)
    # (H, W) or (C, H, W) of the flat inputs; None: square, one channel (a square (H, H) is stored as None)
    image_shape: tuple[int, ...] | None = None
    # vae, or hvae (iwae.models.hvae): latent_dims (z_1, z_2); hidden_dims[0] the widths of the coupled networks
    # q(z_1 | x, z_2) and p(x | z_1, z_2), each branch's then the joint blocks'; hidden_dims[1] those of q(z_2 | x),
    # mirrored by p(z_1 | z_2)
    model: str = "vae"

    def __post_init__(self) -> None:
        # tolerate lists (from YAML / JSON) while keeping the dataclass hashable
        object.__setattr__(self, "latent_dims", tuple(int(d) for d in self.latent_dims))
        object.__setattr__(self, "hidden_dims", tuple(tuple(int(h) for h in hs) for hs in self.hidden_dims))
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if self.sigma is not None:
            if self.likelihood != "gaussian":
                raise ValueError(
                    f"sigma is the fixed standard deviation of the gaussian likelihood, not of {self.likelihood}"
                )
            if not (math.isfinite(self.sigma) and self.sigma > 0):
                raise ValueError(f"sigma must be a positive number, got {self.sigma}")
        if len(self.latent_dims) < 1:
            raise ValueError("latent_dims needs at least one stochastic layer")
        if len(self.hidden_dims) != len(self.latent_dims):
            raise ValueError(
                f"hidden_dims needs one tuple of widths per stochastic layer: "
                f"{len(self.latent_dims)} layers but {len(self.hidden_dims)} tuples"
            )
        if self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if len(shape) not in (2, 3) or math.prod(shape) != self.input_dim:
                raise ValueError(f"image_shape {shape} is not (H, W) or (C, H, W) of {self.input_dim} pixels")
            object.__setattr__(self, "image_shape", None if len(shape) == 2 and shape[0] == shape[1] else shape)
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; choose one of {', '.join(NETWORKS)}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.model == "hvae":
            if len(self.latent_dims) != 2:
                raise ValueError(
                    f"the hvae model has two stochastic layers (z_1, z_2), got latent_dims {self.latent_dims}"
                )
            if self.network not in ("mlp", "gated"):
                raise ValueError(f"the hvae model takes network mlp or gated, not {self.network}")
            if len(self.hidden_dims[0]) < 2:
                raise ValueError(
                    f"hvae's first hidden_dims are the coupled networks' widths, each branch's then the joint "
                    f"blocks': at least 2 (the paper's 300,300), got {self.hidden_dims[0]}"
                )
        elif self.network != "mlp" and len(self.latent_dims) != 1:
            raise ValueError(
                f"the {self.network} network has one stochastic layer, got {len(self.latent_dims)}; "
                f"use network mlp for 2 layers"
            )
        if self.prior_components < 1:
            raise ValueError(f"prior_components must be >= 1, got {self.prior_components}")
        if self.prior == "normal" and self.prior_components != 1:
            raise ValueError(f"the normal prior has no components (got {self.prior_components}); use prior mog or vamp")
        if self.prior_learn_weights and self.prior != "mog":
            raise ValueError(f"learnable mixture weights apply to the mog prior only, not {self.prior}")
        if self.input_dim < 1 or min(self.latent_dims) < 1 or any(h < 1 for hs in self.hidden_dims for h in hs):
            raise ValueError(f"all sizes must be positive, got {self}")

    @classmethod
    def burda(cls, layers: int = 1, input_dim: int = 784) -> ModelConfig:
        """Burda et al.'s architectures: 1 layer 784-200-200-50, 2 layers 784-200-200-100-100-100-50."""
        if layers == 1:
            return cls(input_dim, (50,), ((200, 200),))
        if layers == 2:
            return cls(input_dim, (100, 50), ((200, 200), (100, 100)))
        raise ValueError(f"Burda et al. define 1 or 2 stochastic layers, got {layers}")

    @classmethod
    def hvae(cls, input_dim: int = 784, **fields) -> ModelConfig:
        """Tomczak & Welling's two-level model at the sizes of their code, z_1 = z_2 = 40 and 300-unit networks
        (:data:`HVAE_LATENT_DIMS`, :data:`HVAE_HIDDEN_DIMS`), with ``fields`` on top (e.g. ``network="gated",
        prior="vamp", prior_components=500``)."""
        values = dict(latent_dims=HVAE_LATENT_DIMS, hidden_dims=HVAE_HIDDEN_DIMS) | fields
        return cls(input_dim, model="hvae", **values)

    def to_dict(self) -> dict:
        """The fields as JSON values; those added later (likelihood, sigma, network, image_shape, model) only
        where they differ from their defaults, so that older models keep their digest."""
        return {
            k: (list(map(list, v)) if k == "hidden_dims" else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
            if k not in _ADDED_DEFAULTS or v != _ADDED_DEFAULTS[k]
        }
