"""Models: the VAE of Burda et al. and the two-level HVAE of Tomczak & Welling, with their encoders,
decoders, priors and likelihoods; ``make_model(config)`` builds the one a ModelConfig names."""

from ..choices import MODELS
from .factory import make_model
from .gaussian import diag_normal_log_prob
from .hvae import HVAE
from .likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    DiscretizedLogistic256,
    Gaussian,
    Likelihood,
    bits_per_dim,
    discrete_nll,
    make_likelihood,
)
from .networks import BernoulliMLP, GaussianMLP, MLPDecoder
from .priors import PRIORS, MixturePrior, StandardNormalPrior, VampPrior, make_prior
from .registry import NETWORKS, make_decoder, make_encoder_layer
from .vae import VAE, Decoded, LogWeightParts, ModelConfig, PosteriorSample, UserEncoder

__all__ = [
    "VAE",
    "HVAE",
    "MODELS",
    "make_model",
    "ModelConfig",
    "GaussianMLP",
    "BernoulliMLP",
    "MLPDecoder",
    "NETWORKS",
    "make_encoder_layer",
    "make_decoder",
    "StandardNormalPrior",
    "MixturePrior",
    "VampPrior",
    "PRIORS",
    "make_prior",
    "LogWeightParts",
    "PosteriorSample",
    "diag_normal_log_prob",
    "Decoded",
    "UserEncoder",
    "LIKELIHOODS",
    "Likelihood",
    "Bernoulli",
    "Gaussian",
    "DiscretizedLogistic256",
    "make_likelihood",
    "bits_per_dim",
    "discrete_nll",
]
