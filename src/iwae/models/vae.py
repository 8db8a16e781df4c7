"""The variational autoencoder of Burda et al. (2016) with 1 or more stochastic layers.

``VAE`` ties the encoder q(z|x), the decoder p(x|z) and the prior p(z) together and computes the
log importance weights ``log w = log p(x, z) - log q(z|x)`` of K samples per input. The
objectives in :mod:`iwae.objectives` reduce them to bounds; the model knows no objective.

Stochastic layers are indexed bottom-up: ``z_1`` (called h1 in the paper) is nearest to x.

    q(z_1, ..., z_L | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})
    p(x, z_1, ..., z_L)  = p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1)

Reference: Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from ..config import ModelConfig
from .gaussian import diag_normal_log_prob, diag_normal_log_prob_from_eps
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from .networks import BernoulliMLP, GaussianMLP, float32_out
from .priors import make_prior
from .registry import make_decoder, make_encoder_layer

__all__ = ["ModelConfig", "VAE", "LogWeightParts", "PosteriorSample", "Decoded", "UserEncoder"]


@dataclass
class PosteriorSample:
    """Draws z_l = loc_l + sigma_l * eps_l ~ q(z_l | z_{l-1}) of every stochastic layer (z_0 = x) and
    log q(z_1, ..., z_L | x) at them: enough to evaluate q at the draws in any view (q's parameters
    detached, samples detached), which :mod:`iwae.estimators` builds from it.

    Only layer 1's loc and log sigma are kept, shape ``(B, D_1)``: those of a layer above are
    ``(K, B, D_l)``, and a view recomputes them from the layer's input anyway.
    """

    x: torch.Tensor  # the inputs, (B, D_0)
    loc: torch.Tensor  # q(z_1 | x)'s loc, (B, D_1)
    log_scale: torch.Tensor  # and its log sigma
    zs: list[torch.Tensor]  # the samples z_1, ..., z_L, each (K, B, D_l)
    log_q: torch.Tensor  # log q(z_1, ..., z_L | x) = sum_l log N(z_l; loc_l, sigma_l^2), (K, B)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """Each layer's input: x, z_1, ..., z_{L-1}."""
        return [self.x] + self.zs[:-1]

    def layer_inputs(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """For each encoder layer, in the order of ``model.encoder``: its inputs (the arguments of its
        ``loc_log_scale``) and its draw; here ``((x,), z_1), ((z_1,), z_2), ...``."""
        return [((h,), z) for h, z in zip(self.inputs, self.zs)]


@dataclass
class LogWeightParts:
    """log p(x, z_i) and log q(z_i | x) for K samples per input, each of shape ``(K, B)``, with the
    samples they were computed at and the views that gradient estimators add (:mod:`iwae.estimators`)."""

    log_p: torch.Tensor  # log p(x, z_i)
    log_q: torch.Tensor  # log q(z_i | x), differentiable through samples and parameters
    log_q_stop_params: torch.Tensor | None = None  # encoder parameters detached, samples attached
    log_q_stop_samples: torch.Tensor | None = None  # samples detached, parameters attached
    log_likelihood: torch.Tensor | None = None  # log p(x | z_1), the part of log_p that KL warm-up keeps
    # log p(z_L) at detached samples: its gradient is the prior's direct dependence on the encoder
    # (VampPrior); None where the prior has none or the view was not asked for
    log_prior_direct: torch.Tensor | None = None
    posterior: PosteriorSample | None = None  # the draws, from VAE.log_weight_parts

    @property
    def log_weights(self) -> torch.Tensor:
        """log w_i = log p(x, z_i) - log q(z_i | x)."""
        return self.log_p - self.log_q


class UserEncoder(nn.Module):
    """Adapts a user's encoder, any module whose ``forward(h)`` returns q(z | x)'s ``(loc, log_scale)``,
    to the layer interface the rest of iwae uses, ``loc_log_scale(h)``. ``module`` is its one
    submodule: its weights are saved as ``encoder.0.module.<name>``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def loc_log_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(h)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"a user encoder must return (loc, log_scale), got {type(out).__name__}")
        return float32_out(out[0]), float32_out(out[1])

    def forward(self, h: torch.Tensor) -> Distribution:
        loc, log_scale = self.loc_log_scale(h)
        return Independent(Normal(loc, log_scale.exp()), 1)


@dataclass
class Decoded:
    """p(x | z_1) at given z_1: the decoder's raw output and the likelihood that reads it, with the
    interface of a distribution that analysis and figures use (``log_prob``, ``mean``, ``sample``)."""

    likelihood: Likelihood
    raw: torch.Tensor  # (..., P * D)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z_1) summed over pixels, shape ``raw.shape[:-1]`` (x broadcast)."""
        return self.likelihood.log_prob(self.raw, x)

    @property
    def mean(self) -> torch.Tensor:
        return self.likelihood.mean(self.raw)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.likelihood.sample(self.raw, generator)


def _decoder_output(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The raw parameters ``(..., P * D)`` of p(x | z_1): a built-in MLP's output layer by its fast
    kernel (``logits``), any other module's ``forward``, in float32 (:func:`~iwae.models.networks.float32_out`)."""
    return float32_out(decoder.logits(z) if isinstance(decoder, BernoulliMLP) else decoder(z))


class VAE(nn.Module):
    """A VAE with Gaussian stochastic layers and the observation model its config names.

    Built from ``config`` alone (Burda et al.'s tanh MLPs), or with any of the four parts given as
    modules, keyword-only; ``config`` then still gives the sizes (``input_dim``, one entry of
    ``latent_dims``) and the names of the parts not given:

        VAE(ModelConfig(input_dim=784, latent_dims=(16,), likelihood="logistic256"),
            encoder=MyEncoder(), decoder=MyDecoder())

    Args:
        config: the sizes and names; :meth:`ModelConfig.burda` gives the paper's models.
        encoder: a module whose ``forward(x)`` returns q(z_1 | x)'s ``(loc, log_scale)``, each
            ``(..., D_z)`` for x ``(..., D)`` (one stochastic layer); wrapped in :class:`UserEncoder`.
        decoder: a module mapping z ``(..., D_z)`` to the likelihood's raw parameters ``(..., P * D)``
            (parameter-major). With an ``output_bias`` Parameter ``(P * D,)``, :meth:`init_output_bias`
            starts it from the data.
        prior: a prior name (``normal``, ``mog``, ``vamp``) or a prior module (``log_prob(z)``,
            ``forward()`` a Distribution; see :mod:`.priors`). A VampPrior built by name maps its
            pseudo-inputs through the model's encoder, a user encoder too.
        likelihood: a name of ``LIKELIHOODS`` or a :class:`~.likelihoods.Likelihood`.

    Attributes:
        encoder: ``encoder[l]`` is q(z_{l+1} | z_l) with z_0 = x (``loc_log_scale(h)``).
        decoder: ``decoder[0]`` maps z_1 to p(x | z_1)'s raw parameters; ``decoder[l]`` is
            p(z_l | z_{l+1}) for l >= 1.
        likelihood: the observation model reading ``decoder[0]``'s output.
        prior_module: the module behind :attr:`prior`.

    Example:
        >>> model = VAE(ModelConfig.burda(1))
        >>> x = torch.bernoulli(torch.full((3, 784), 0.3))
        >>> model.log_weights(x, num_samples=5).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        *,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior: str | nn.Module | None = None,
        likelihood: str | Likelihood | None = None,
    ):
        super().__init__()
        config = config or ModelConfig()
        if config.model != "vae":
            raise ValueError(
                f"VAE builds the vae model; config.model is {config.model!r}: build it with "
                f"iwae.models.make_model(config)"
            )
        if isinstance(prior, str):
            config = dataclasses.replace(config, prior=prior)
        if isinstance(likelihood, str):
            config = dataclasses.replace(
                config, likelihood=likelihood, sigma=None if likelihood != "gaussian" else config.sigma
            )
        elif isinstance(likelihood, Likelihood) and likelihood.name in LIKELIHOODS:  # the config says what it is
            config = dataclasses.replace(config, likelihood=likelihood.name, sigma=getattr(likelihood, "sigma", None))
        self.config = config
        # whether a config can rebuild this model (rundir refuses to load one it cannot)
        self.user_modules = any(m is not None and not isinstance(m, str) for m in (encoder, decoder, prior)) or (
            isinstance(likelihood, Likelihood) and likelihood.name not in LIKELIHOODS
        )
        if (encoder is not None or decoder is not None) and len(config.latent_dims) != 1:
            raise ValueError(
                f"user encoder and decoder modules make one stochastic layer; config.latent_dims "
                f"{config.latent_dims} has {len(config.latent_dims)}"
            )
        self.likelihood = (
            likelihood
            if isinstance(likelihood, Likelihood)
            else make_likelihood(config.likelihood, config.input_dim, config.sigma)
        )
        if self.likelihood.input_dim != config.input_dim:
            raise ValueError(
                f"the likelihood models {self.likelihood.input_dim} pixels, config.input_dim is {config.input_dim}"
            )
        dims = (config.input_dim,) + config.latent_dims
        net, shape = config.network, config.image_shape
        side = math.isqrt(config.input_dim)
        if net == "conv" and shape is None and side * side == config.input_dim:
            shape = (side, side)  # None means square; the conv layers refuse other sizes without a shape
        self.encoder = nn.ModuleList(
            [UserEncoder(encoder)]
            if encoder is not None
            else [make_encoder_layer(net, dims[0], config.hidden_dims[0], dims[1], shape)]
            + [GaussianMLP(dims[i], config.hidden_dims[i], dims[i + 1]) for i in range(1, len(config.latent_dims))]
        )
        out = self.likelihood.params_per_pixel * dims[0]
        self.decoder = nn.ModuleList(
            [decoder if decoder is not None else make_decoder(net, dims[1], config.hidden_dims[0][::-1], out, shape)]
            + [
                GaussianMLP(dims[i + 1], config.hidden_dims[i][::-1], dims[i])
                for i in range(1, len(config.latent_dims))
            ]
        )
        # the VampPrior maps its pseudo-inputs through the encoder, which stays outside the prior's parameters
        self.prior_module = (
            prior
            if isinstance(prior, nn.Module)
            else make_prior(
                config.prior,
                config.latent_dims[-1],
                config.prior_components,
                learn_weights=config.prior_learn_weights,
                encoder=self.encoder,
                input_dim=config.input_dim,
            )
        )

    # ----------------------------------------------------------------- distributions
    @property
    def num_layers(self) -> int:
        return len(self.config.latent_dims)

    @property
    def prior(self) -> Distribution:
        """p(z_L), the prior over the top stochastic layer."""
        return self.prior_module()

    def encode(self, x: torch.Tensor) -> Distribution | tuple[Distribution, ...]:
        """The approximate posterior q(z | x).

        For one stochastic layer, q(z_1 | x) (an ``Independent(Normal)``, event shape ``(D,)``).
        For L layers, the tuple ``(q(z_1 | x), q(z_2 | E[z_1]), ...)``: each layer above the first is
        conditioned on the mean of the layer below, a deterministic summary for inspection;
        :meth:`log_weights` samples the whole chain.
        """
        dists = []
        h = x
        for layer in self.encoder:
            loc, log_scale = layer.loc_log_scale(h)
            dists.append(Independent(Normal(loc, log_scale.exp()), 1))
            h = loc
        return dists[0] if len(dists) == 1 else tuple(dists)

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The raw parameters of p(x | z_1), shape ``(..., P * input_dim)`` for z ``(..., D_1)``."""
        return _decoder_output(self.decoder[0], z)

    def decode(self, z: torch.Tensor) -> Decoded:
        """p(x | z_1) as a :class:`Decoded`: ``log_prob(x)``, ``mean`` and ``sample(generator)``."""
        return Decoded(self.likelihood, self.decoder_output(z))

    def decode_latents(self, zs: list[torch.Tensor]) -> Decoded:
        """p(x | z) for the latents ``zs`` (bottom-up, as :meth:`log_joint` takes them): here p(x | z_1)."""
        return self.decode(zs[0])

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The inference network's parameters (phi)."""
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The generative model's parameters (theta): decoder, prior and likelihood.

        The prior's parameters include a VampPrior's pseudo-inputs but not the encoder weights that
        map them to q(z | u_c): those stay encoder parameters (phi). So where the two sets follow
        different objectives, the encoder's part of log p(z) follows the encoder's: with PIWAE the
        pseudo-inputs ascend IWAE(M*K) while the encoder, also inside the prior, ascends MIWAE(M, K);
        with ``rws`` the encoder gets no gradient through the prior at all.
        """
        encoder = {id(p) for p in self.encoder.parameters()}
        rest = (
            list(self.decoder.parameters()) + list(self.prior_module.parameters()) + list(self.likelihood.parameters())
        )
        return [p for p in rest if id(p) not in encoder]  # a user prior holding the encoder counts it once

    @torch.no_grad()
    def init_prior(self, x_train: torch.Tensor) -> None:
        """Starts a VampPrior's pseudo-inputs at random training images plus small noise (a no-op for
        other priors); uses torch's global random numbers."""
        if hasattr(self.prior_module, "init_from_data"):
            self.prior_module.init_from_data(x_train)

    def output_bias(self) -> torch.Tensor | None:
        """The decoder's output-layer bias ``(P * D,)`` (a built-in MLP's, or a user decoder's
        ``output_bias``), or None where the decoder has none."""
        decoder = self.decoder[0]
        if isinstance(decoder, BernoulliMLP):
            return decoder.head.bias
        bias = getattr(decoder, "output_bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @torch.no_grad()
    def init_output_bias(self, train_mean: torch.Tensor) -> None:
        """Starts p(x | z)'s output bias from the mean training pixel, as the likelihood says (Bernoulli:
        logit(clip(mean, 1e-3, 1 - 1e-3)), as Burda et al.'s code); a no-op for a decoder without one."""
        bias = self.output_bias()
        if bias is not None:
            self.likelihood.init_output_bias(bias, train_mean)

    # ----------------------------------------------------------------- log-weights
    def log_weights(self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log w_i = log p(x, z_i) - log q(z_i | x) for ``num_samples`` samples z_i ~ q(z | x).

        The first encoder layer runs once per input; the samples are drawn by reparameterisation
        (z = loc + scale * eps) and the decoder runs on all of them in one batched call.

        Args:
            x: inputs in [0, 1], shape ``(B, input_dim)``.
            num_samples: K, samples per input.
            generator: optional random number generator for eps.

        Returns:
            Log-weights of shape ``(K, B)``.
        """
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
        """:meth:`log_weights` given q(z_1 | x)'s ``loc`` and ``log_scale`` (shape ``(B, D_1)``).

        Lets evaluation run the first encoder layer once per input and draw samples in chunks.
        """
        return self._log_weight_parts(x, self.sample_posterior(x, num_samples, generator, (loc, log_scale))).log_weights

    def log_weights_with_samples(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`log_weights` and the samples they were computed at, the same draws for one generator.

        Returns:
            log w ``(K, B)`` and the samples ``(z_1, ..., z_L)``, each ``(K, B, D_l)``.
        """
        parts = self.log_weight_parts(x, num_samples, generator)
        return parts.log_weights, tuple(parts.posterior.zs)

    def sample_posterior(
        self,
        x: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        first_layer: tuple[torch.Tensor, torch.Tensor] | None = None,
        eps: list[torch.Tensor] | None = None,
    ) -> PosteriorSample:
        """``num_samples`` draws of the whole chain z_1 ~ q(z_1 | x), z_2 ~ q(z_2 | z_1), ... by
        reparameterisation, z_l = loc_l + sigma_l * eps_l (eps of layer 1 first, then layer 2, ...).

        Args:
            x: inputs, shape ``(B, input_dim)``.
            num_samples: K.
            generator: random numbers for eps.
            first_layer: q(z_1 | x)'s ``(loc, log_scale)`` when already computed (else from ``encoder[0]``).
            eps: the standard normal draws of every layer, each ``(K, B, D_l)``, drawn already (the
                compiled training step, :mod:`iwae.compiled.step`, takes them as inputs); else drawn
                here from ``generator``, in the same order and shapes.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if eps is not None and len(eps) != len(self.encoder):
            raise ValueError(f"eps needs one tensor per stochastic layer: {len(self.encoder)}, got {len(eps)}")
        drawn = iter(eps) if eps is not None else None
        loc, log_scale = first_layer if first_layer is not None else self.encoder[0].loc_log_scale(x)
        eps = (
            next(drawn)
            if drawn is not None
            else torch.randn((num_samples,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        )
        zs = [torch.addcmul(loc, log_scale.exp(), eps)]  # (K, B, D_1)
        log_q = diag_normal_log_prob_from_eps(eps, log_scale)  # (K, B)
        for layer in self.encoder[1:]:
            loc_l, log_scale_l = layer.loc_log_scale(zs[-1])  # (K, B, D_l)
            eps = (
                next(drawn)
                if drawn is not None
                else torch.randn(loc_l.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            )
            zs.append(torch.addcmul(loc_l, log_scale_l.exp(), eps))
            log_q = log_q + diag_normal_log_prob_from_eps(eps, log_scale_l)
        return PosteriorSample(x, loc, log_scale, zs, log_q)

    def log_weight_parts(
        self,
        x: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        *,
        prior_direct: bool = False,
        eps: list[torch.Tensor] | None = None,
    ) -> LogWeightParts:
        """log p(x, z_i) and log q(z_i | x) of ``num_samples`` draws, with the draws themselves.

        One sampling (:meth:`sample_posterior`) and one decoder pass. With ``prior_direct``, and a
        prior that depends on the encoder (VampPrior), also log p(z_L) at the detached top-layer
        samples, whose gradient is that direct dependence alone (DReG, RWS-DReG); the prior computes
        both from one encoder pass over its pseudo-inputs. The views of log q with the encoder's
        parameters or the samples detached are built by :func:`iwae.estimators.add_views`. ``eps``:
        the draws, as :meth:`sample_posterior` takes them (else drawn from ``generator``).
        """
        return self._log_weight_parts(x, self.sample_posterior(x, num_samples, generator, eps=eps), prior_direct)

    def log_joint(
        self, x: torch.Tensor, zs: list[torch.Tensor], prior_direct: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log p(x, z_1, ..., z_L) at samples ``zs`` (bottom-up, each ``(K, B, D_l)``), one decoder pass.

        Returns:
            ``(log p(x, z), log p(x | z_1), log p(stop_grad(z_L)) or None)``, each ``(K, B)``; the
            last only with ``prior_direct`` and a prior that depends on the encoder.
        """
        log_prior_direct = None
        if prior_direct and getattr(self.prior_module, "depends_on_encoder", False):
            log_p, log_prior_direct = self.prior_module.log_prob_with_direct(zs[-1])
        else:
            log_p = self.prior_module.log_prob(zs[-1])
        for layer, z_above, z_below in zip(self.decoder[1:], zs[1:], zs[:-1]):
            loc_l, log_scale_l = layer.loc_log_scale(z_above)
            log_p = log_p + diag_normal_log_prob(z_below, loc_l, log_scale_l)
        log_lik = self.likelihood.log_prob(self.decoder_output(zs[0]), x)
        return log_p + log_lik, log_lik, log_prior_direct

    def _log_weight_parts(
        self, x: torch.Tensor, posterior: PosteriorSample, prior_direct: bool = False
    ) -> LogWeightParts:
        log_p, log_lik, log_prior_direct = self.log_joint(x, posterior.zs, prior_direct)
        return LogWeightParts(
            log_p, posterior.log_q, log_likelihood=log_lik, log_prior_direct=log_prior_direct, posterior=posterior
        )
