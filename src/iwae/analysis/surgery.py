"""ELBO surgery [1]: the ELBO's average KL over N data points split with the aggregate posterior
q(z) = (1/N) sum_n q(z | x_n):

    (1/N) sum_n KL(q(z|x_n) || p(z)) = I_q[n; z] + KL(q(z) || p(z)),   0 <= I_q[n; z] <= log N,

where I_q[n; z] = E_{n, z ~ q(z|x_n)} [log q(z|x_n) - log q(z)] is the index-code mutual information.

Models with more than one stochastic layer are refused (q(z_L) of a chain's top layer has no closed-form
density), except a model whose top layer's posterior depends on x alone (``top_posterior(x)``, the HVAE's
q(z_2 | x)): the split is then of z_2's KL term, its ``elbo_given_top`` giving the rest of the ELBO.

References:
    [1] M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the variational
        evidence lower bound. NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
"""

from __future__ import annotations

import math
import os

import torch
from torch.distributions import Independent, Normal, kl_divergence

from ..data import fixed_binarization
from ..errors import ConfigError
from ..models.gaussian import HALF_LOG_2PI, diag_normal_log_prob
from ..rundir import locks, write_surgery
from ..tables import label_table
from .posterior import _ROWS_PER_DECODE, _gaussian_posterior

__all__ = ["elbo_surgery", "run_surgery", "surgery_text"]

_PAIR_BUDGET = 1 << 22  # (sample, component) pairs per logsumexp block: 32 MiB of float64 per temporary


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
        zb = z[i : i + chunk]  # (m, D)
        table = const + zb @ (loc * prec).T - 0.5 * zb.square() @ prec.T  # (m, N)
        out[i : i + chunk] = torch.logsumexp(table, dim=1)
    return out - math.log(loc.shape[0])


def _top_posterior(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The top layer's q(z_L|x) ``loc`` and ``scale``: the HVAE's q(z_2 | x) (``top_posterior``), else a
    one-layer model's q(z|x)."""
    top = getattr(model, "top_posterior", None)
    if top is None:
        return _gaussian_posterior(model, x)
    q = top(x)
    return q.base_dist.loc, q.base_dist.scale


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

    For the HVAE the split is of z = z_2 (q(z_2 | x) depends on x alone), and ``reconstruction`` is
    the rest of the ELBO, (1/N) sum_n E_q[log p(x_n | z_1, z_2) + log p(z_1 | z_2) - log q(z_1 | x_n, z_2)],
    with one z_1 ~ q(z_1 | x_n, z_2) per z_2 (``model.elbo_given_top``); ``elbo`` is then the ELBO.

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
        ``identity_residual`` (avg_kl - mutual_info - marginal_kl), ``n``, ``num_samples`` and ``latent``
        (the latent split: ``z``, or ``z_2`` for the HVAE).

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
        loc, scale = _top_posterior(model, x[i : i + rows])
        locs.append(loc)
        scales.append(scale)
    loc, scale = torch.cat(locs), torch.cat(scales)  # (N, D)
    eps = torch.randn((num_samples,) + loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
    z = loc + scale * eps  # (S, N, D)
    below = getattr(model, "elbo_given_top", None)  # the HVAE: the ELBO's terms other than z_2's
    for i in range(0, n, rows):
        xb, zb = x[i : i + rows], z[:, i : i + rows]
        recon.append((below(xb, zb, generator) if below else model.decode(zb).log_prob(xb)).double())  # (S, b)
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
    result["latent"] = "z_2" if below else "z"
    if hasattr(model, "train"):
        model.train(was_training)
    return result


@locks("iwae analyze", lambda a: a["run_dir"])
def run_surgery(
    model, splits, run_dir: str | os.PathLike, *, weights: dict, subset: int = 5000, num_samples: int = 1, seed: int = 0
) -> dict:
    """:func:`elbo_surgery` of a trained run on its first ``subset`` training images, written to
    ``RUN_DIR/surgery_n{N}.json`` (atomically) and returned.

    Grey-level (dynamically binarized) images are binarized once with ``seed``
    (:func:`iwae.data.fixed_binarization`), which also seeds the samples z. The result adds
    ``seed`` and ``model``: ``weights``, which weights were measured (the epoch and SHA-256 of
    model.safetensors, as :func:`iwae.rundir.load_trained` returns them).
    """
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
    z = r.get("latent", "z")
    analytic = f"  (analytic {r['avg_kl_analytic']:.3f})" if r["avg_kl_analytic"] is not None else ""
    rest = "E_q log p(x|z)" if z == "z" else "E_q[log p(x|z_1,z_2) + log p(z_1|z_2) - log q(z_1|x,z_2)]"
    of = "" if z == "z" else f"  (of {z})"
    return label_table(
        [
            ("reconstruction", f"{r['reconstruction']:.3f} ± {r['reconstruction_stderr']:.3f}  ({rest})"),
            ("average KL", f"{r['avg_kl']:.3f} ± {r['avg_kl_stderr']:.3f}{analytic}{of}"),
            (f"I[n;{z}]", f"{r['mutual_info']:.3f} ± {r['mutual_info_stderr']:.3f}  (log N = {r['log_n']:.2f})"),
            ("marginal KL", f"{r['marginal_kl']:.3f} ± {r['marginal_kl_stderr']:.3f}  (KL(q({z}) || p({z})))"),
            ("ELBO", f"{r['elbo']:.3f}"),
            ("residual", f"{r['identity_residual']:.2e}  (average KL - I - marginal KL)"),
            ("images", f"{r['n']} training images x {r['num_samples']} samples"),
        ]
    )
