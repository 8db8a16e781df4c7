"""The two-level hierarchical VAE of Tomczak & Welling (2018), with coupled prior and posterior.

    q(z_1, z_2 | x) = q(z_2 | x) q(z_1 | x, z_2)             (z_2 drawn first; q(z_1 | .) sees x and z_2)
    p(x, z_1, z_2)  = p(z_2) p(z_1 | z_2) p(x | z_1, z_2)     (the decoder sees both latents)

    log w = log p(z_2) + log N(z_1; p(z_1 | z_2)) + log p(x | z_1, z_2)
            - log N(z_2; q(z_2 | x)) - log N(z_1; q(z_1 | x, z_2))

Every Gaussian is diagonal; p(z_2) is ``config.prior`` (normal, mog, or the VampPrior
(1/C) sum_c q(z_2 | u_c), its pseudo-inputs u_c going through q(z_2 | x) as in the paper); p(x | z_1, z_2)
is ``config.likelihood`` (bernoulli, gaussian, logistic256) reading the decoder's raw output.

Order of the latents. As in :class:`~.vae.VAE`, latents are bottom-up: ``latent_dims = (D_1, D_2)``,
``zs = [z_1, z_2]``, the prior is on ``zs[-1] = z_2`` and active units are reported for z_1 then z_2.
The modules are listed so that the VAE's readers find what they expect:

    encoder[0] = q(z_2 | x)          reads x alone: the layer run once per input (evaluation, AIS, the VampPrior)
    encoder[1] = q(z_1 | x, z_2)     ``loc_log_scale(x, z_2)``
    decoder[0] = p(x | z_1, z_2)     ``decoder_output(z_1, z_2)``
    decoder[1] = p(z_1 | z_2)        as the VAE's decoder[l] = p(z_l | z_{l+1})

so the encoder's order is the order of drawing (z_2, then z_1) and :class:`PosteriorSample`'s ``loc``
and ``log_scale`` are q(z_2 | x)'s. The draws are eps_2 then eps_1 from the generator.

Networks (``hidden_dims = (coupled, top)``, the paper's (300, 300) and (300, 300), z_1 = z_2 = 40):
q(z_2 | x) is :func:`~.networks.make_encoder_layer` with widths ``top``, p(z_1 | z_2) the same kind of layer
with ``top`` reversed; q(z_1 | x, z_2) and p(x | z_1, z_2) are :mod:`.coupled` networks with widths
``coupled`` (each branch's width, then the joint blocks'). ``network="gated"`` is the paper's GatedDense
blocks with He-normal weights and log-variance heads bounded by Hardtanh(-6, 2); ``network="mlp"`` is the
same structure with Burda et al.'s tanh layers and heads (Glorot weights, zero biases, log sigma unbounded).

Faithful to the paper's code (models/HVAE_2level.py): the factorisation, the branches and joins of
q(z_1 | x, z_2) and p(x | z_1, z_2) (one GatedDense block per branch, one on the concatenation), the
widths, the log-variance bounds of q(z_2 | x), q(z_1 | x, z_2) and p(z_1 | z_2), the He initialisation,
and the VampPrior through q(z_2 | x). Different: p(x | z_1, z_2) ends in a linear layer of raw parameters
read by iwae's likelihoods with their own bounds (Bernoulli logits, where the code has a sigmoid mean
clipped to [1e-5, 1 - 1e-5]; the discretized logistic's log-scale in [-7 - ln 2, 0] with open edge bins,
where the code bounds it to [-4.5, 0] and clips the mean to [1/512, 1 - 1/512]); the pseudo-inputs are
sigmoid(raw) rather than a hardtanh of a linear map (:class:`~.priors.VampPrior`); log-densities keep
their log(2 pi) constants (the code drops them, which cancel in its ELBO but not in L_k); the join's
linear maps are computed without the concatenation (the same function); the mlp variant is iwae's.

Reference: J. M. Tomczak, M. Welling. VAE with a VampPrior. AISTATS 2018 (arXiv:1705.07120).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from ..config import ModelConfig
from ..config.model import HVAE_HIDDEN_DIMS as PAPER_HIDDEN_DIMS
from ..config.model import HVAE_LATENT_DIMS as PAPER_LATENT_DIMS
from .coupled import CoupledDecoder, CoupledGaussian
from .gaussian import diag_normal_log_prob, diag_normal_log_prob_from_eps
from .likelihoods import make_likelihood
from .priors import make_prior
from .registry import make_encoder_layer
from .vae import Decoded, LogWeightParts, PosteriorSample

__all__ = ["HVAE", "CoupledPosteriorSample", "PAPER_LATENT_DIMS", "PAPER_HIDDEN_DIMS"]


@dataclass
class CoupledPosteriorSample(PosteriorSample):
    """The draws of q(z_2 | x) q(z_1 | x, z_2): ``loc`` and ``log_scale`` are q(z_2 | x)'s ``(B, D_2)``,
    ``zs = [z_1, z_2]`` bottom-up, each ``(K, B, D_l)``."""

    def layer_inputs(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """``[((x,), z_2), ((x, z_2), z_1)]``: q(z_2 | x) reads x, q(z_1 | x, z_2) reads x and z_2."""
        z1, z2 = self.zs
        return [((self.x,), z2), ((self.x, z2), z1)]


class HVAE(nn.Module):
    """The two-level VAE with q(z_2 | x) q(z_1 | x, z_2) and p(z_2) p(z_1 | z_2) p(x | z_1, z_2) (module docstring).

    It has the interface of :class:`~.vae.VAE` that training, the estimators, evaluation, AIS and the
    run folder use (``log_weights``, ``log_weight_parts``, ``log_joint``, ``sample_posterior``,
    ``encoder_parameters`` / ``decoder_parameters``, ``prior``, ``init_prior``, ``init_output_bias``, ...).

    Args:
        config: a :class:`~.vae.ModelConfig` with ``model="hvae"``; :meth:`paper_config` gives the paper's sizes.

    Example:
        >>> model = HVAE(HVAE.paper_config(network="gated"))
        >>> x = torch.bernoulli(torch.full((3, 784), 0.3))
        >>> model.log_weights(x, num_samples=5).shape
        torch.Size([5, 3])
    """

    user_modules = False  # a config rebuilds it

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        config = config or self.paper_config()
        if config.model != "hvae":
            raise ValueError(
                f"HVAE builds the hvae model; config.model is {config.model!r}: use "
                f"HVAE.paper_config(...) or ModelConfig(model='hvae', ...)"
            )
        self.config = config
        d, (d1, d2) = config.input_dim, config.latent_dims
        coupled, top = config.hidden_dims
        net = config.network
        self.likelihood = make_likelihood(config.likelihood, d, config.sigma)
        self.encoder = nn.ModuleList([make_encoder_layer(net, d, top, d2), CoupledGaussian(net, d, d2, coupled, d1)])
        self.decoder = nn.ModuleList(
            [
                CoupledDecoder(net, d1, d2, coupled, self.likelihood.params_per_pixel * d),
                make_encoder_layer(net, d2, top[::-1], d1),
            ]
        )
        # the VampPrior's pseudo-inputs go through q(z_2 | x) alone (held outside the prior's parameters)
        self.prior_module = make_prior(
            config.prior,
            d2,
            config.prior_components,
            learn_weights=config.prior_learn_weights,
            encoder=self.encoder[:1],
            input_dim=d,
        )

    @classmethod
    def paper_config(cls, input_dim: int = 784, **fields) -> ModelConfig:
        """The paper's sizes, z_1 = z_2 = 40 and 300-unit networks, with ``fields`` of ModelConfig on top
        (e.g. ``network="gated", prior="vamp", prior_components=500, likelihood="logistic256"``)."""
        return ModelConfig.hvae(input_dim, **fields)

    # ----------------------------------------------------------------- distributions
    @property
    def num_layers(self) -> int:
        return 2

    @property
    def prior(self) -> Distribution:
        """p(z_2)."""
        return self.prior_module()

    def top_posterior(self, x: torch.Tensor) -> Independent:
        """q(z_2 | x), event shape ``(D_2,)``: the top layer's posterior, which depends on x alone."""
        loc, log_scale = self.encoder[0].loc_log_scale(x)
        return Independent(Normal(loc, log_scale.exp()), 1)

    def encode(self, x: torch.Tensor) -> tuple[Distribution, Distribution]:
        """``(q(z_1 | x, E[z_2 | x]), q(z_2 | x))``, bottom-up as VAE.encode: q(z_1 | .) at q(z_2 | x)'s
        mean, a deterministic summary for inspection; :meth:`log_weights` samples z_2."""
        q2 = self.top_posterior(x)
        loc, log_scale = self.encoder[1].loc_log_scale(x, q2.mean)
        return Independent(Normal(loc, log_scale.exp()), 1), q2

    def decoder_output(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """The raw parameters of p(x | z_1, z_2), shape ``(..., P * input_dim)``."""
        return self.decoder[0](z1, z2)

    def decode(self, z1: torch.Tensor, z2: torch.Tensor) -> Decoded:
        """p(x | z_1, z_2) as a :class:`~.vae.Decoded`: ``log_prob(x)``, ``mean`` and ``sample(generator)``."""
        return Decoded(self.likelihood, self.decoder_output(z1, z2))

    def decode_latents(self, zs: list[torch.Tensor]) -> Decoded:
        """p(x | z_1, z_2) for ``zs = [z_1, z_2]``."""
        return self.decode(zs[0], zs[1])

    def encoder_parameters(self) -> list[nn.Parameter]:
        """phi: q(z_2 | x) and q(z_1 | x, z_2) (also the VampPrior's map of its pseudo-inputs)."""
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        """theta: p(x | z_1, z_2), p(z_1 | z_2), the prior (a VampPrior's pseudo-inputs) and the likelihood."""
        encoder = {id(p) for p in self.encoder.parameters()}
        rest = [*self.decoder.parameters(), *self.prior_module.parameters(), *self.likelihood.parameters()]
        return [p for p in rest if id(p) not in encoder]

    @torch.no_grad()
    def init_prior(self, x_train: torch.Tensor) -> None:
        """A VampPrior's pseudo-inputs at random training images plus small noise (else nothing)."""
        if hasattr(self.prior_module, "init_from_data"):
            self.prior_module.init_from_data(x_train)

    def output_bias(self) -> torch.Tensor:
        """p(x | z_1, z_2)'s output-layer bias ``(P * D,)``."""
        return self.decoder[0].output_bias

    @torch.no_grad()
    def init_output_bias(self, train_mean: torch.Tensor) -> None:
        """Starts p(x | z_1, z_2)'s output bias from the mean training pixel, as the likelihood says."""
        self.likelihood.init_output_bias(self.output_bias(), train_mean)

    # ----------------------------------------------------------------- sampling and densities
    def sample_posterior(
        self,
        x: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        first_layer: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CoupledPosteriorSample:
        """``num_samples`` draws z_2 = loc_2 + sigma_2 eps_2 ~ q(z_2 | x), then z_1 = loc_1 + sigma_1 eps_1 ~
        q(z_1 | x, z_2), and log q(z_1, z_2 | x) at them.

        Args:
            x: inputs ``(B, input_dim)``.
            num_samples: K.
            generator: random numbers for eps_2, then eps_1.
            first_layer: q(z_2 | x)'s ``(loc, log_scale)`` when already computed (else from ``encoder[0]``).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        loc, log_scale = first_layer if first_layer is not None else self.encoder[0].loc_log_scale(x)
        eps = torch.randn((num_samples,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        z2 = torch.addcmul(loc, log_scale.exp(), eps)  # (K, B, D_2)
        log_q = diag_normal_log_prob_from_eps(eps, log_scale)  # (K, B)
        loc1, log_scale1 = self.encoder[1].loc_log_scale(x, z2)  # (K, B, D_1)
        eps = torch.randn(loc1.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        z1 = torch.addcmul(loc1, log_scale1.exp(), eps)
        log_q = log_q + diag_normal_log_prob_from_eps(eps, log_scale1)
        return CoupledPosteriorSample(x, loc, log_scale, [z1, z2], log_q)

    def posterior_log_prob(
        self, x: torch.Tensor, zs: list[torch.Tensor], first_layer: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """log q(z_1, z_2 | x) = log N(z_2; q(z_2 | x)) + log N(z_1; q(z_1 | x, z_2)) at given ``zs = [z_1, z_2]``."""
        z1, z2 = zs
        loc, log_scale = first_layer if first_layer is not None else self.encoder[0].loc_log_scale(x)
        log_q2 = diag_normal_log_prob(z2, loc, log_scale)
        return log_q2 + diag_normal_log_prob(z1, *self.encoder[1].loc_log_scale(x, z2))

    def log_joint(
        self, x: torch.Tensor, zs: list[torch.Tensor], prior_direct: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log p(x, z_1, z_2) = log p(z_2) + log N(z_1; p(z_1 | z_2)) + log p(x | z_1, z_2), one decoder pass.

        Returns:
            ``(log p(x, z), log p(x | z_1, z_2), log p(stop_grad(z_2)) or None)``, each ``(K, B)``; the
            last only with ``prior_direct`` and a prior that depends on the encoder (VampPrior).
        """
        z1, z2 = zs
        log_prior_direct = None
        if prior_direct and getattr(self.prior_module, "depends_on_encoder", False):
            log_p, log_prior_direct = self.prior_module.log_prob_with_direct(z2)
        else:
            log_p = self.prior_module.log_prob(z2)
        log_p = log_p + diag_normal_log_prob(z1, *self.decoder[1].loc_log_scale(z2))
        log_lik = self.likelihood.log_prob(self.decoder_output(z1, z2), x)
        return log_p + log_lik, log_lik, log_prior_direct

    # ----------------------------------------------------------------- log-weights
    def log_weight_parts(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None, *, prior_direct: bool = False
    ) -> LogWeightParts:
        """log p(x, z_i) and log q(z_i | x) of ``num_samples`` draws, with the draws (one sampling, one
        decoder pass); ``prior_direct`` as :meth:`log_joint`."""
        return self._log_weight_parts(x, self.sample_posterior(x, num_samples, generator), prior_direct)

    def _log_weight_parts(
        self, x: torch.Tensor, posterior: CoupledPosteriorSample, prior_direct: bool = False
    ) -> LogWeightParts:
        log_p, log_lik, log_prior_direct = self.log_joint(x, posterior.zs, prior_direct)
        return LogWeightParts(
            log_p, posterior.log_q, log_likelihood=log_lik, log_prior_direct=log_prior_direct, posterior=posterior
        )

    def log_weights(self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log w_i = log p(x, z_{1,i}, z_{2,i}) - log q(z_{1,i}, z_{2,i} | x), shape ``(K, B)``; q(z_2 | x) and
        the x branch of q(z_1 | x, z_2) run once per input, the rest on all K samples in one call."""
        loc, log_scale = self.encoder[0].loc_log_scale(x)
        return self.log_weights_from_posterior(x, loc, log_scale, num_samples, generator)

    def log_weights_from_posterior(
        self,
        x: torch.Tensor,
        loc: torch.Tensor,
        log_scale: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`log_weights` given q(z_2 | x)'s ``loc`` and ``log_scale`` ``(B, D_2)`` (evaluation's chunks)."""
        return self._log_weight_parts(x, self.sample_posterior(x, num_samples, generator, (loc, log_scale))).log_weights

    def log_weights_with_samples(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`log_weights` and the samples ``(z_1, z_2)`` they were computed at."""
        parts = self.log_weight_parts(x, num_samples, generator)
        return parts.log_weights, tuple(parts.posterior.zs)

    # ----------------------------------------------------------------- what analysis and evaluation read
    def posterior_means(
        self, x: torch.Tensor, num_samples: int = 100, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """``[E_q[z_1 | x], E_q[z_2 | x]]``, each ``(N, D_l)``: z_2's is q(z_2 | x)'s mean; z_1's is
        E_{z_2 ~ q(z_2 | x)}[mean of q(z_1 | x, z_2)], averaged over ``num_samples`` draws of z_2."""
        loc, log_scale = self.encoder[0].loc_log_scale(x)
        eps = torch.randn((num_samples,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        loc1, _ = self.encoder[1].loc_log_scale(x, loc + log_scale.exp() * eps)  # (S, N, D_1)
        return [loc1.mean(0), loc]

    def elbo_given_top(
        self, x: torch.Tensor, z2: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One draw z_1 ~ q(z_1 | x, z_2) of log p(x | z_1, z_2) + log p(z_1 | z_2) - log q(z_1 | x, z_2), the
        ELBO's terms other than z_2's (an unbiased estimate of their expectation over z_1), shape ``z2.shape[:-1]``.
        With KL(q(z_2 | x) || p(z_2)) they make the ELBO: ELBO surgery on z_2 (:func:`iwae.analysis.elbo_surgery`)."""
        loc1, log_scale1 = self.encoder[1].loc_log_scale(x, z2)
        eps = torch.randn(loc1.shape, generator=generator, device=loc1.device, dtype=loc1.dtype)
        z1 = loc1 + log_scale1.exp() * eps
        prior_z1 = diag_normal_log_prob(z1, *self.decoder[1].loc_log_scale(z2))
        return (
            self.likelihood.log_prob(self.decoder_output(z1, z2), x)
            + prior_z1
            - diag_normal_log_prob_from_eps(eps, log_scale1)
        )
