"""What a trained model's latent space and samples look like: ancestral samples, reconstructions,
posterior means of the top layer, and the activity A_u of every unit.

These use the layer modules (``loc_log_scale``) rather than encode/decode alone, so hierarchies
(L > 1) are handled. Active units (Burda et al., Sec. 5.2): A_u = Var_x(E_q[u | x]) over the first
500 training images; unit u is active if A_u > 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Distribution, Independent, Normal

from ..models.vae import VAE, Decoded

__all__ = [
    "sample_images",
    "reconstruct",
    "posterior_means",
    "active_units",
    "ActiveUnits",
    "LATENT_SAMPLES",
    "ACTIVE_THRESHOLD",
    "ACTIVE_UNITS_IMAGES",
    "ACTIVE_UNITS_SEED",
]

ACTIVE_THRESHOLD = 0.01
ACTIVE_UNITS_IMAGES = 500  # the first 500 training images, as Burda et al.'s code
ACTIVE_UNITS_SEED = 2016  # fixed binarization of those images
LATENT_SAMPLES = 100  # draws of the chain below the top layer for E_q[z_L | x], as active_units


def _sample_prior(prior: Distribution, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws ``(n, D)`` of a prior (an Independent Normal, or a MixtureSameFamily of them) from
    ``generator``: torch's ``Distribution.sample`` takes none, it draws from the global stream."""
    if isinstance(prior, torch.distributions.MixtureSameFamily):
        weights = prior.mixture_distribution.probs  # (C,)
        component = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
        normal = prior.component_distribution.base_dist
        loc, scale = normal.loc[component], normal.scale[component]  # (n, D)
    else:
        normal = prior.base_dist if isinstance(prior, Independent) else prior
        if not isinstance(normal, Normal):
            raise TypeError(f"cannot sample a {type(prior).__name__} prior with a generator")
        loc, scale = normal.loc.expand(n, *normal.loc.shape), normal.scale.expand(n, *normal.scale.shape)
    return loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)


@torch.no_grad()
def sample_images(model, n: int = 64, seed: int = 0, probabilities: bool = True) -> torch.Tensor:
    """Draws x ~ p(x) ancestrally: z_L ~ p(z_L), then z_{l-1} ~ p(z_{l-1} | z_l) top-down, then p(x | z_1).

    The draws come from a generator of their own on the model's device, seeded with ``seed``: the
    same seed gives the same samples, and torch's global random state (CPU and every CUDA device)
    is left as it was.

    Returns:
        ``(n, input_dim)`` on the CPU: the means E[x | z_1] of p(x | z_1) (``probabilities``), else
        samples of it (binary for the Bernoulli likelihood, k/255 for logistic256).
    """
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    z = _sample_prior(model.prior, n, generator)  # (n, D_L)
    zs = [z]
    for layer in reversed(model.decoder[1:]):  # decoder[l] is p(z_l | z_{l+1})
        loc, log_scale = layer.loc_log_scale(z)
        z = loc + log_scale.exp() * torch.randn(loc.shape, generator=generator, device=device, dtype=loc.dtype)
        zs.insert(0, z)
    # p(x | z_1), or the HVAE's p(x | z_1, z_2)
    px = model.decode_latents(zs) if hasattr(model, "decode_latents") else model.decode(z)
    if probabilities:
        x = px.mean
    elif isinstance(px, Decoded):  # the model's likelihood draws x (Bernoulli: binary pixels)
        x = px.sample(generator)
    else:  # a model whose decode is a torch Bernoulli distribution
        x = torch.bernoulli(px.mean, generator=generator)
    model.train(was_training)
    return x.cpu()


@torch.no_grad()
def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    """The means E[x | z_1] of p(x | z_1 = E_q[z_1 | x]), shape ``(N, input_dim)``, on the CPU.

    Only the first layer's mean is used (no sampling): the reconstruction a figure shows under x. For
    the HVAE, the means of p(x | z_1, z_2) at z_2 = E_q[z_2 | x] and z_1 = the mean of q(z_1 | x, z_2).
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    if hasattr(model, "top_posterior"):
        recon = model.decode_latents([q.mean for q in model.encode(x.to(dev))]).mean.cpu()
        model.train(was_training)
        return recon
    loc, _ = model.encoder[0].loc_log_scale(x.to(dev))  # z_1 = E_q[z_1 | x]
    recon = model.decode(loc).mean.cpu()
    model.train(was_training)
    return recon


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, num_samples: int = LATENT_SAMPLES, seed: int = 0) -> torch.Tensor:
    """E_q[z_L | x] of the top layer, shape ``(N, D_L)``, on the CPU.

    One layer: q(z_1 | x)'s mean. L > 1 layers: E_q[z_L | x] = E_{z_{L-1} ~ q(z_{L-1} | x)}[mean of
    q(z_L | z_{L-1})], estimated by the average over ``num_samples`` draws of the chain
    z_1, ..., z_{L-1} ~ q (seeded: the same figure every time). The mean of q(z_L | E[z_{L-1}]),
    the chain of ``VAE.encode``, is not that expectation when q(z_L | z_{L-1}) is nonlinear in
    z_{L-1}. The estimator and the order of its random draws are those of
    :func:`active_units`, so with the same seed the variances of these points are
    its A_u of the top layer. The HVAE's top layer z_2: q(z_2 | x)'s mean, exactly.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = x.to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    if hasattr(model, "top_posterior"):  # the HVAE's q(z_2 | x): its mean, exactly
        mean = model.top_posterior(x).mean
        model.train(was_training)
        return mean.cpu()
    loc, log_scale = model.encoder[0].loc_log_scale(x)
    mean = loc
    if model.num_layers > 1:
        z = loc + log_scale.exp() * torch.randn((num_samples,) + loc.shape, generator=generator, device=dev)
        for layer in model.encoder[1:]:
            loc_l, log_scale_l = layer.loc_log_scale(z)  # (S, N, D_l)
            mean = loc_l.mean(0)
            z = loc_l + log_scale_l.exp() * torch.randn(loc_l.shape, generator=generator, device=dev)
    model.train(was_training)
    return mean.cpu()


@dataclass
class ActiveUnits:
    variances: list[torch.Tensor]  # A_u per stochastic layer
    threshold: float = ACTIVE_THRESHOLD

    @property
    def counts(self) -> list[int]:
        return [int((v > self.threshold).sum()) for v in self.variances]


@torch.no_grad()
def active_units(
    model: VAE,
    x: torch.Tensor,
    num_samples: int = 100,
    generator: torch.Generator | None = None,
    threshold: float = ACTIVE_THRESHOLD,
) -> ActiveUnits:
    """A_u = Var_x(E_q[u | x]) for every unit of every stochastic layer, over the rows of ``x``.

    Layer 1: E_q[z_1 | x] is q's mean. Layer l > 1: E_q[z_l | x] = E_{z_{l-1} ~ q}[mean of
    q(z_l | z_{l-1})], averaged over ``num_samples`` samples of the chain below (Burda et al.'s
    code used one sample). A model whose posterior is not such a chain gives its means itself
    (``model.posterior_means``: the HVAE's E_q[z_1 | x] averages q(z_1 | x, z_2) over draws of z_2).
    Variances are over x, without Bessel's correction (as ``np.var``).
    """
    was_training = model.training
    model.eval()
    if hasattr(model, "posterior_means"):
        means = model.posterior_means(x, num_samples, generator)
        model.train(was_training)
        return ActiveUnits([m.var(0, unbiased=False).cpu() for m in means], threshold)
    loc, log_scale = model.encoder[0].loc_log_scale(x)
    means = [loc]
    if model.num_layers > 1:
        eps = torch.randn((num_samples,) + loc.shape, generator=generator, device=loc.device)
        z = loc + log_scale.exp() * eps  # (S, N, D_1)
        for layer in model.encoder[1:]:
            loc_l, log_scale_l = layer.loc_log_scale(z)
            means.append(loc_l.mean(0))
            z = loc_l + log_scale_l.exp() * torch.randn(loc_l.shape, generator=generator, device=loc.device)
    model.train(was_training)
    return ActiveUnits([m.var(0, unbiased=False).cpu() for m in means], threshold)
