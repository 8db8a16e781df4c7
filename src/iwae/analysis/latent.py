"""What a trained model's latent space and samples look like: ancestral samples (also with the top layer
held fixed, to show what each layer draws), reconstructions (from every layer's posterior, or from the
layers above one only), posterior means of each layer, and the activity A_u of every unit.

These use the layer modules (``loc_log_scale``) rather than encode/decode alone, so hierarchies
(L > 1) are handled: Burda et al.'s chain of layers and the two-level HVAE of Tomczak & Welling, whose
posterior q(z_2 | x) q(z_1 | x, z_2) gives its own means (``posterior_means``) and whose decoder reads
both latents (``decode_latents``). Active units (Burda et al., Sec. 5.2): A_u = Var_x(E_q[u | x]) over
the first 500 training images; unit u is active if A_u > 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Distribution, Independent, Normal

from ..models.vae import VAE, Decoded

__all__ = [
    "sample_images",
    "sample_layer_grid",
    "reconstruct",
    "posterior_means",
    "layer_means",
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


def _prior_chain(model, top: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """``[z_1, ..., z_L]`` drawn top-down from z_L = ``top`` through p(z_l | z_{l+1}) (``decoder[l]``)."""
    zs = [top]
    for layer in reversed(model.decoder[1:]):  # decoder[l] is p(z_l | z_{l+1})
        loc, log_scale = layer.loc_log_scale(zs[0])
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        zs.insert(0, loc + log_scale.exp() * eps)
    return zs


def _images(model, zs: list[torch.Tensor], probabilities: bool, generator: torch.Generator) -> torch.Tensor:
    """The means of p(x | z) at the latents ``zs`` (bottom-up), or draws of it; the HVAE's decoder reads
    z_1 and z_2, the chain's z_1."""
    px = model.decode_latents(zs) if hasattr(model, "decode_latents") else model.decode(zs[0])
    if probabilities:
        return px.mean
    if isinstance(px, Decoded):  # the model's likelihood draws x (Bernoulli: binary pixels)
        return px.sample(generator)
    return torch.bernoulli(px.mean, generator=generator)  # a model whose decode is a torch Bernoulli


@torch.no_grad()
def sample_images(model, n: int = 64, seed: int = 0, probabilities: bool = True) -> torch.Tensor:
    """Draws x ~ p(x) ancestrally: z_L ~ p(z_L), then z_{l-1} ~ p(z_{l-1} | z_l) top-down, then p(x | z_1)
    (the HVAE's p(x | z_1, z_2)).

    The draws come from a generator of their own on the model's device, seeded with ``seed``: the
    same seed gives the same samples, and torch's global random state (CPU and every CUDA device)
    is left as it was.

    Returns:
        ``(n, input_dim)`` on the CPU: the means of p(x | z) (``probabilities``), else samples of it
        (binary for the Bernoulli likelihood, k/255 for logistic256).
    """
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    zs = _prior_chain(model, _sample_prior(model.prior, n, generator), generator)
    x = _images(model, zs, probabilities, generator)
    model.train(was_training)
    return x.cpu()


@torch.no_grad()
def sample_layer_grid(model, rows: int = 8, cols: int = 8, seed: int = 0, probabilities: bool = True) -> torch.Tensor:
    """What the layers below the top one draw: ``rows`` draws of z_L ~ p(z_L), each with ``cols`` draws of the
    layers below (z_{l-1} ~ p(z_{l-1} | z_l) down to z_1) and the means of p(x | z): within a row only the
    lower layers change. For one stochastic layer every image is its own draw of z_1.

    Returns:
        ``(rows * cols, input_dim)`` on the CPU, row by row; seeded as :func:`sample_images`.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows} and {cols}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    top = _sample_prior(model.prior, rows, generator)  # (rows, D_L)
    if model.num_layers > 1:
        top = top.repeat_interleave(cols, dim=0)  # each row's z_L, cols times
    else:
        top = torch.cat([top, _sample_prior(model.prior, rows * cols - rows, generator)])
    x = _images(model, _prior_chain(model, top, generator), probabilities, generator)
    model.train(was_training)
    return x.cpu()


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, layer: int = 1) -> torch.Tensor:
    """The means of p(x | z) with the latents z_l, ..., z_L at their posterior means and the layers below
    ``layer`` at their prior means top-down (z_{l-1} = the mean of p(z_{l-1} | z_l)), shape ``(N, input_dim)``,
    on the CPU. No sampling.

    ``layer = 1`` is the reconstruction a figure shows under x: every layer from the posterior (for the
    chain, z_1 = E_q[z_1 | x]; for the HVAE, z_2 = E_q[z_2 | x] and z_1 the mean of q(z_1 | x, z_2)).
    ``layer = L`` keeps only what the top layer holds of x: what the decoder makes of it alone.
    """
    layers = getattr(model, "num_layers", 1)
    if not 1 <= layer <= layers:
        raise ValueError(f"layer must be one of 1..{layers} (the model's stochastic layers), got {layer}")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = x.to(dev)
    if layers == 1 and not hasattr(model, "top_posterior"):
        loc, _ = model.encoder[0].loc_log_scale(x)  # z_1 = E_q[z_1 | x]
        recon = model.decode(loc).mean.cpu()
        model.train(was_training)
        return recon
    q = model.encode(x)
    zs = [d.mean for d in (q if isinstance(q, tuple) else (q,))]  # the posterior's means, bottom-up
    for l in range(layer - 1, 0, -1):  # below ``layer``: p(z_l | z_{l+1})'s mean, top-down
        zs[l - 1] = model.decoder[l].loc_log_scale(zs[l])[0]
    recon = (model.decode_latents(zs) if hasattr(model, "decode_latents") else model.decode(zs[0])).mean.cpu()
    model.train(was_training)
    return recon


@torch.no_grad()
def layer_means(
    model, x: torch.Tensor, num_samples: int = LATENT_SAMPLES, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """E_q[z_l | x] of every stochastic layer, bottom-up, each ``(N, D_l)`` on the model's device.

    Layer 1 of the chain: q(z_1 | x)'s mean. A layer l > 1 of the chain: E_{z_{l-1} ~ q}[mean of
    q(z_l | z_{l-1})], averaged over ``num_samples`` draws of the chain below (Burda et al.'s code used
    one draw). A model whose posterior is not such a chain gives its means itself (``model.posterior_means``:
    the HVAE's E_q[z_2 | x] is q(z_2 | x)'s mean, its E_q[z_1 | x] averages q(z_1 | x, z_2) over draws of z_2).
    """
    was_training = model.training
    model.eval()
    if hasattr(model, "posterior_means"):
        means = model.posterior_means(x, num_samples, generator)
        model.train(was_training)
        return means
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
    return means


@torch.no_grad()
def posterior_means(
    model, x: torch.Tensor, num_samples: int = LATENT_SAMPLES, seed: int = 0, layer: int | None = None
) -> torch.Tensor:
    """E_q[z_l | x] of stochastic layer ``layer`` (1-based; None: the top layer), shape ``(N, D_l)``, on the CPU.

    One layer: q(z_1 | x)'s mean. Above the first layer of a chain, E_q[z_l | x] = E_{z_{l-1} ~ q}[mean of
    q(z_l | z_{l-1})], estimated by the average over ``num_samples`` draws of the layers below (seeded:
    the same figure every time); the mean of q(z_l | E[z_{l-1}]), the chain of ``VAE.encode``, is not that
    expectation when q(z_l | z_{l-1}) is nonlinear in z_{l-1}. The HVAE's top layer z_2: q(z_2 | x)'s
    mean, exactly; its z_1: q(z_1 | x, z_2)'s mean averaged over draws of z_2. The estimator and the order
    of its random draws are those of :func:`active_units` (:func:`layer_means`), so with the same seed the
    variances of these points are its A_u of that layer.
    """
    layers = getattr(model, "num_layers", 1)
    layer = layers if layer is None else layer
    if not 1 <= layer <= layers:
        raise ValueError(f"layer must be one of 1..{layers} (the model's stochastic layers), got {layer}")
    dev = next(model.parameters()).device
    generator = torch.Generator(device=dev).manual_seed(seed)
    return layer_means(model, x.to(dev), num_samples, generator)[layer - 1].cpu()


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
    """A_u = Var_x(E_q[u | x]) for every unit of every stochastic layer, over the rows of ``x``, with
    E_q[u | x] from :func:`layer_means` (``num_samples`` draws of the layers below where it is estimated).
    Variances are over x, without Bessel's correction (as ``np.var``)."""
    means = layer_means(model, x, num_samples, generator)
    return ActiveUnits([m.var(0, unbiased=False).cpu() for m in means], threshold)
