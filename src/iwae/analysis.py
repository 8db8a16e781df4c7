"""Posterior analysis: ELBO surgery and the implicit IWAE posterior q_EW.

    from iwae.analysis import elbo_surgery, sample_qew
    terms = elbo_surgery(model, x)            # {'reconstruction': ..., 'avg_kl': ..., 'mutual_info': ..., ...}
    z = sample_qew(model, x[:4], k=50, n=1000)   # (1000, 4, D) draws from q_EW(z | x)

ELBO surgery [1] splits the average KL term of the ELBO over N data points with the aggregate
posterior q(z) = (1/N) sum_n q(z | x_n):

    (1/N) sum_n KL(q(z|x_n) || p(z)) = I_q[n; z] + KL(q(z) || p(z)),   0 <= I_q[n; z] <= log N,

where I_q[n; z] = E_{n, z ~ q(z|x_n)} [log q(z|x_n) - log q(z)] is the index-code mutual information.

q_EW [2] is the posterior implicit in the IWAE bound: draw k samples from q(z|x) and keep one with
probability proportional to its importance weight (sampling-importance-resampling). As k grows it
approaches the true posterior p(z|x), which :func:`posterior_grid` computes on a grid for 2-D latents.

Only the public surface of a model is used: ``encode(x)`` (an ``Independent(Normal)``), ``decode(z)``
(p(x | z) with ``log_prob`` and ``mean``, whatever the likelihood), ``prior`` (a Distribution with ``log_prob``), so any prior works. Models with
more than one stochastic layer are refused: q(z_L) of the top layer has no closed-form density.

References:
    [1] M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the variational
        evidence lower bound. NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
    [2] C. Cremer, Q. Morris, D. Duvenaud. Reinterpreting Importance-Weighted Autoencoders.
        ICLR 2017 Workshop.
"""

from __future__ import annotations

import math
import os

import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from .models.gaussian import HALF_LOG_2PI, diag_normal_log_prob
from .models.vae import Decoded
from .tables import label_table

__all__ = [
    "elbo_surgery", "run_surgery", "surgery_text",
    "sample_qew", "posterior_grid", "histogram_on_grid", "qew_density_on_grid",
    "total_variation", "sample_images", "reconstruct", "posterior_means", "toy_bias", "LATENT_SAMPLES",
]

_PAIR_BUDGET = 1 << 22  # (sample, component) pairs per logsumexp block: 32 MiB of float64 per temporary
_ROWS_PER_DECODE = 1 << 14  # decoder rows per call


def _refuse_layers(layers: int) -> None:
    if layers != 1:
        raise ValueError(f"posterior analysis needs one stochastic layer, the model has {layers}: the "
                         f"aggregate posterior and q_EW of a hierarchy need the density of q(z_L|x), "
                         f"which has no closed form")


def _one_layer(model) -> None:
    """Refuses a model with more than one stochastic layer (``num_layers``, 1 where the model has none)."""
    _refuse_layers(getattr(model, "num_layers", 1))


def _gaussian_posterior(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x)'s ``loc`` and ``scale``, shape ``(B, D)``, from ``model.encode``; refuses L > 1 layers."""
    q = model.encode(x)
    if isinstance(q, tuple):
        _refuse_layers(len(q))
    base = q.base_dist if isinstance(q, Independent) else q
    if not isinstance(base, Normal):
        raise ValueError(f"posterior analysis needs a Gaussian q(z|x), got {type(base).__name__}")
    return base.loc, base.scale


def _log_aggregate(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, chunk: int) -> torch.Tensor:
    """log q(z) = logsumexp_m log q(z|x_m) - log N for each row of ``z`` (M, D), in float64.

    The (M, N) table of log q(z_i|x_m) is built ``chunk`` rows at a time, by the expansion
    sum_d (z^2 - 2 z loc + loc^2) / scale^2 so that each block is two matrix products.
    """
    loc, scale, z = loc.double(), scale.double(), z.double()
    prec = scale.pow(-2)  # (N, D)
    const = -0.5 * (loc.square() * prec).sum(-1) - scale.log().sum(-1) - loc.shape[-1] * HALF_LOG_2PI  # (N,)
    out = torch.empty(z.shape[0], dtype=torch.float64, device=z.device)
    for i in range(0, z.shape[0], chunk):
        zb = z[i: i + chunk]  # (m, D)
        table = const + zb @ (loc * prec).T - 0.5 * zb.square() @ prec.T  # (m, N)
        out[i: i + chunk] = torch.logsumexp(table, dim=1)
    return out - math.log(loc.shape[0])


def _mean_and_stderr(per_point: torch.Tensor) -> tuple[float, float]:
    n = per_point.shape[0]
    stderr = per_point.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return per_point.mean().item(), stderr


@torch.no_grad()
def elbo_surgery(
    model,
    x: torch.Tensor,
    num_samples: int = 1,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """The ELBO's terms over the N rows of ``x``, with the average KL split following reference [1].

        reconstruction = (1/N) sum_n E_{q(z|x_n)} log p(x_n|z)
        avg_kl         = (1/N) sum_n KL(q(z|x_n) || p(z))           = E[log q(z|x_n) - log p(z)]
        mutual_info    = I_q[n; z]                                  = E[log q(z|x_n) - log q(z)]
        marginal_kl    = KL(q(z) || p(z))                           = E[log q(z) - log p(z)]

    Expectations are over n uniform on 1..N and z ~ q(z|x_n). Every n is taken once with
    ``num_samples`` draws of z (the stratified form of drawing n uniformly, with less variance), and
    the three KL terms are averages of per-sample differences of the same three log-densities, so
    ``avg_kl = mutual_info + marginal_kl`` holds up to float64 rounding (``identity_residual``), and
    ``mutual_info <= log N`` holds for every sample. log q(z) is a logsumexp over all N encodings,
    computed in float64 blocks of ``chunk`` samples: memory is O(chunk * N), time O(S N^2 D).

    Standard errors are the standard deviation over n of the per-image averages divided by sqrt(N),
    as :func:`iwae.evaluate.evaluate` reports them (for i.i.d. n this is the Monte Carlo error; with
    every n taken once it is an upper estimate). ``avg_kl_analytic`` is the closed-form average KL
    where torch knows KL(q || p) for the prior (a Normal prior), else None.

    Args:
        model: a 1-stochastic-layer model with ``encode``, ``decode`` and ``prior``.
        x: inputs, shape ``(N, input_dim)``, on the model's device.
        num_samples: S, samples z per input. Default 1.
        chunk: samples per logsumexp block; default: as many as keep a block near 4M entries.
        generator: random numbers for the samples.

    Returns:
        A dict of floats: ``reconstruction``, ``avg_kl``, ``mutual_info``, ``marginal_kl``, each with a
        ``*_stderr``, plus ``elbo`` (= reconstruction - avg_kl), ``avg_kl_analytic``, ``log_n``,
        ``identity_residual`` (avg_kl - mutual_info - marginal_kl), ``n`` and ``num_samples``.

    Raises:
        ValueError: for fewer than 1 sample or input, or a model with more than one stochastic layer.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    n = x.shape[0]
    if n < 1:
        raise ValueError("elbo_surgery needs at least one input")
    chunk = chunk or max(1, _PAIR_BUDGET // n)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    rows = max(1, _ROWS_PER_DECODE // num_samples)  # images per encoder / decoder call
    locs, scales, recon = [], [], []
    for i in range(0, n, rows):
        loc, scale = _gaussian_posterior(model, x[i: i + rows])
        locs.append(loc)
        scales.append(scale)
    loc, scale = torch.cat(locs), torch.cat(scales)  # (N, D)
    eps = torch.randn((num_samples,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
    z = loc + scale * eps  # (S, N, D)
    for i in range(0, n, rows):
        recon.append(model.decode(z[:, i: i + rows]).log_prob(x[i: i + rows]).double())  # (S, b)
    recon = torch.cat(recon, dim=1)  # (S, N)

    log_q_own = diag_normal_log_prob(z.double(), loc.double(), scale.double().log())  # (S, N) log q(z|x_n)
    log_q_agg = _log_aggregate(z.reshape(-1, z.shape[-1]), loc, scale, chunk).reshape(num_samples, n)
    log_p = model.prior.log_prob(z).double()  # (S, N)

    per_point = {  # (N,) averages over the S samples of each image
        "reconstruction": recon.mean(0),
        "avg_kl": (log_q_own - log_p).mean(0),
        "mutual_info": (log_q_own - log_q_agg).mean(0),
        "marginal_kl": (log_q_agg - log_p).mean(0),
    }
    result: dict = {}
    for name, values in per_point.items():
        result[name], result[f"{name}_stderr"] = _mean_and_stderr(values)
    result["elbo"] = result["reconstruction"] - result["avg_kl"]
    try:
        q = Independent(Normal(loc, scale), 1)
        result["avg_kl_analytic"] = kl_divergence(q, model.prior).double().mean().item()
    except NotImplementedError:  # no closed form for this prior, e.g. a mixture
        result["avg_kl_analytic"] = None
    result["log_n"] = math.log(n)
    result["identity_residual"] = result["avg_kl"] - result["mutual_info"] - result["marginal_kl"]
    result["n"] = n
    result["num_samples"] = num_samples
    if hasattr(model, "train"):
        model.train(was_training)
    return result


def run_surgery(model, splits, run_dir: str | os.PathLike, *, weights: dict, subset: int = 5000,
                num_samples: int = 1, seed: int = 0) -> dict:
    """:func:`elbo_surgery` of a trained run on its first ``subset`` training images, written to
    ``RUN_DIR/surgery_n{N}.json`` (atomically) and returned.

    Grey-level (dynamically binarized) images are binarized once with ``seed``
    (:func:`iwae.data.fixed_binarization`), which also seeds the samples z. The result adds
    ``seed`` and ``model``: ``weights``, which weights were measured (the epoch and SHA-256 of
    model.safetensors, as :func:`iwae.evaluate.load_trained` returns them).
    """
    from .data import fixed_binarization
    from .errors import ConfigError
    from .rundir import write_surgery

    for name, value in (("subset", subset), ("num_samples", num_samples)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", [name])
    x = splits.train[:subset]
    if splits.dynamic:  # grey levels: binarize once, reproducibly
        x = torch.from_numpy(fixed_binarization(x.numpy(), seed))
    result = elbo_surgery(model, x, num_samples=num_samples, generator=torch.Generator().manual_seed(seed))
    result["seed"] = seed
    result["model"] = weights
    write_surgery(run_dir, result)
    return result


def surgery_text(result: dict) -> str:
    """The lines ``iwae analyze`` prints for a result of :func:`elbo_surgery`, each term with its standard error."""
    r = result
    analytic = f"  (analytic {r['avg_kl_analytic']:.3f})" if r["avg_kl_analytic"] is not None else ""
    return label_table([
        ("reconstruction", f"{r['reconstruction']:.3f} ± {r['reconstruction_stderr']:.3f}  (E_q log p(x|z))"),
        ("average KL", f"{r['avg_kl']:.3f} ± {r['avg_kl_stderr']:.3f}{analytic}"),
        ("I[n;z]", f"{r['mutual_info']:.3f} ± {r['mutual_info_stderr']:.3f}  (log N = {r['log_n']:.2f})"),
        ("marginal KL", f"{r['marginal_kl']:.3f} ± {r['marginal_kl_stderr']:.3f}  (KL(q(z) || p(z)))"),
        ("ELBO", f"{r['elbo']:.3f}"),
        ("residual", f"{r['identity_residual']:.2e}  (average KL - I - marginal KL)"),
        ("images", f"{r['n']} training images x {r['num_samples']} samples"),
    ])


# ----------------------------------------------------------------------------- q_EW
@torch.no_grad()
def sample_qew(model, x: torch.Tensor, k: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws from q_EW(z|x) by sampling-importance-resampling, following reference [2].

    For each draw: z_1..z_k ~ q(z|x), log w_i = log p(x, z_i) - log q(z_i|x), and one z_i is kept with
    probability softmax(log w)_i (normalised in log space; unnormalised weights are never formed).
    k = 1 gives q(z|x) itself. The samples and log w are the model's own, from
    ``model.log_weights_with_samples`` (the same function that training and L_k use).

    Args:
        model: a 1-stochastic-layer model with ``log_weights_with_samples`` (:class:`~iwae.models.VAE`).
        x: inputs, shape ``(B, input_dim)``.
        k: proposals per draw.
        n: draws per input.
        generator: random numbers for proposals and choices (one generator serves both).

    Returns:
        Shape ``(n, B, D)``.
    """
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be >= 1, got k={k}, n={n}")
    _one_layer(model)
    b = x.shape[0]
    draws = max(1, _ROWS_PER_DECODE // (k * b))  # draws per decoder call
    out = []
    for j in range(0, n, draws):
        m = min(draws, n - j)
        # the model's own log w and the samples it was computed at, m draws of k proposals
        log_w, (z,) = model.log_weights_with_samples(x, m * k, generator)  # (m k, B), (m k, B, D)
        z = z.reshape(m, k, b, -1)
        probs = torch.softmax(log_w.reshape(m, k, b), dim=1).permute(0, 2, 1).reshape(m * b, k)  # (m B, k)
        pick = torch.multinomial(probs, 1, generator=generator).reshape(m, 1, b, 1)
        out.append(z.gather(1, pick.expand(m, 1, b, z.shape[-1])).squeeze(1))  # (m, B, D)
    return torch.cat(out)


def _grid_points(grid: torch.Tensor) -> torch.Tensor:
    """The G*G cell centres of a square grid, shape ``(G, G, 2)``; ``[i, j] = (grid[i], grid[j])``."""
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D tensor of at least 2 equally spaced cell centres, got shape "
                         f"{tuple(grid.shape)}")
    return torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1)


@torch.no_grad()
def posterior_grid(model, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The true posterior p(z|x) of a 2-D latent model as cell masses on a square grid.

    log p(x|z) + log p(z) at each cell centre, normalised by logsumexp over the cells: a mass per
    cell (the density times the cell area), summing to 1. The grid should hold nearly all the mass.

    Args:
        model: a model with a 2-D latent, ``decode`` and ``prior``.
        x: inputs, shape ``(B, input_dim)``.
        grid: ``(G,)`` equally spaced cell centres, used for both latent dimensions.

    Returns:
        Shape ``(B, G, G)``; ``[b, i, j]`` is the cell at ``(grid[i], grid[j])``.
    """
    points = _grid_points(grid.to(x.dtype)).to(x.device).reshape(-1, 1, 2)  # (G G, 1, 2)
    if model.prior.event_shape != torch.Size([2]):
        raise ValueError(f"posterior_grid needs a 2-D latent, the prior's event shape is "
                         f"{tuple(model.prior.event_shape)}")
    log_joint = torch.cat([
        model.decode(points[i: i + _ROWS_PER_DECODE]).log_prob(x) + model.prior.log_prob(points[i: i + _ROWS_PER_DECODE])
        for i in range(0, points.shape[0], _ROWS_PER_DECODE)
    ]).double()  # (G G, B)
    log_mass = log_joint - torch.logsumexp(log_joint, dim=0)
    g = grid.shape[0]
    return log_mass.exp().T.reshape(-1, g, g)


def histogram_on_grid(samples: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The fraction of 2-D ``samples`` ``(n, B, 2)`` in each cell of the grid, shape ``(B, G, G)``.

    Cells have width ``grid[1] - grid[0]`` centred on the grid points; samples outside are dropped,
    so the masses sum to the fraction of samples inside.
    """
    _grid_points(grid)
    g = grid.shape[0]
    h = (grid[1] - grid[0]).item()
    idx = torch.floor((samples.double() - (grid[0].item() - h / 2)) / h).long()  # (n, B, 2)
    inside = ((idx >= 0) & (idx < g)).all(-1)  # (n, B)
    n, b = samples.shape[:2]
    cell = idx[..., 0] * g + idx[..., 1] + torch.arange(b, device=samples.device) * g * g  # (n, B)
    counts = torch.bincount(cell[inside], minlength=b * g * g).double()
    return (counts / n).reshape(b, g, g)


def qew_density_on_grid(model, x: torch.Tensor, grid: torch.Tensor, k: int, n: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """q_EW(z|x) as cell masses on the grid, from ``n`` draws of :func:`sample_qew`; shape ``(B, G, G)``."""
    return histogram_on_grid(sample_qew(model, x, k, n, generator), grid)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = (1/2) sum |p - q| over the last two (grid) dims; shape ``p.shape[:-2]``."""
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} vs {tuple(q.shape)}")
    return 0.5 * (p - q).abs().sum((-2, -1))


# ----------------------------------------------------------------------------- what the figures draw
# The computations behind iwae.figures (which only draws): ancestral samples, reconstructions,
# posterior means of the top layer, and the exact bias of a log-mean. These use the layer modules
# (loc_log_scale) rather than encode/decode alone, so hierarchies (L > 1) are handled.
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
    for layer in reversed(model.decoder[1:]):  # decoder[l] is p(z_l | z_{l+1})
        loc, log_scale = layer.loc_log_scale(z)
        z = loc + log_scale.exp() * torch.randn(loc.shape, generator=generator, device=device, dtype=loc.dtype)
    px = model.decode(z)
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

    Only the first layer's mean is used (no sampling): the reconstruction a figure shows under x.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
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
    :func:`iwae.evaluate.active_units`, so with the same seed the variances of these points are
    its A_u of the top layer.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = x.to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
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


def toy_bias(k: int, a: float = 0.1, b: float = 2.0, p: float = 0.9) -> float:
    """E[log (1/k) sum_i X_i] - log E[X] for k iid X_i with X = a with probability p, else b; exact.

    With j the number of draws equal to a, j ~ Binomial(k, p) and the mean is (j a + (k - j) b) / k:

        E[log mean] = sum_j C(k, j) p^j (1 - p)^(k - j) log((j a + (k - j) b) / k)

    the binomial weights taken in log space (lgamma), so k in the thousands is fine. By Jensen the
    bias is <= 0, and it rises monotonically to 0 as k grows, as the IWAE bound L_k does (Burda et
    al. 2016).

    Raises:
        ValueError: for k < 1, a or b not > 0, or p outside [0, 1].
    """
    import numpy as np

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not (a > 0 and b > 0):
        raise ValueError(f"the two values must be > 0 for the log, got a = {a}, b = {b}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    j = np.arange(k + 1, dtype=np.float64)
    log_binomial = np.array([math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1) for i in range(k + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 or 1: 0 * log 0 counts as 0
        log_weights = (log_binomial + np.where(j > 0, j * np.log(p), 0.0)
                       + np.where(k - j > 0, (k - j) * np.log1p(-p), 0.0))
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    expected_log_mean = float(np.sum(weights * np.log((j * a + (k - j) * b) / k)))
    return expected_log_mean - math.log(p * a + (1 - p) * b)
