"""Models: the VAE of Burda et al. with its encoder, decoder and prior networks."""

from .gaussian import diag_normal_log_prob
from .networks import NETWORKS, BernoulliMLP, GaussianMLP, MLPDecoder, make_decoder, make_encoder_layer
from .priors import PRIORS, MixturePrior, StandardNormalPrior, VampPrior, make_prior
from .vae import VAE, LogWeightParts, ModelConfig, PosteriorSample

__all__ = ["VAE", "ModelConfig", "GaussianMLP", "BernoulliMLP", "MLPDecoder", "NETWORKS", "make_encoder_layer",
           "make_decoder", "StandardNormalPrior", "MixturePrior", "VampPrior", "PRIORS", "make_prior",
           "LogWeightParts", "PosteriorSample", "diag_normal_log_prob"]
