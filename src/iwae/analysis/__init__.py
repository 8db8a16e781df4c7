"""Analysis of trained models: ELBO surgery, the implicit IWAE posterior q_EW, and what the figures draw.

    from iwae.analysis import elbo_surgery, sample_qew
    terms = elbo_surgery(model, x)            # {'reconstruction': ..., 'avg_kl': ..., 'mutual_info': ..., ...}
    z = sample_qew(model, x[:4], k=50, n=1000)   # (1000, 4, D) draws from q_EW(z | x)

``surgery`` (ELBO surgery), ``posterior`` (q(z|x), p(z|x) on a grid, q_EW), ``latent`` (samples,
reconstructions, posterior means, active units), ``curves`` (the gradient-SNR curves and slopes) and
``toy`` (the bias of a log-mean); :mod:`iwae.figures` draws what they compute.

ELBO surgery [1] splits the average KL term of the ELBO over N data points with the aggregate
posterior q(z) = (1/N) sum_n q(z | x_n):

    (1/N) sum_n KL(q(z|x_n) || p(z)) = I_q[n; z] + KL(q(z) || p(z)),   0 <= I_q[n; z] <= log N,

where I_q[n; z] = E_{n, z ~ q(z|x_n)} [log q(z|x_n) - log q(z)] is the index-code mutual information.

q_EW [2] is the posterior implicit in the IWAE bound: draw k samples from q(z|x) and keep one with
probability proportional to its importance weight (sampling-importance-resampling). As k grows it
approaches the true posterior p(z|x), which :func:`posterior_grid` computes on a grid for 2-D latents.

Only the public surface of a model is used: ``encode(x)`` (an ``Independent(Normal)``), ``decode(z)``
(p(x | z) with ``log_prob`` and ``mean``, whatever the likelihood), ``prior`` (a Distribution with
``log_prob``), so any prior works. Models with more than one stochastic layer are refused: q(z_L) of
the top layer has no closed-form density.

References:
    [1] M. D. Hoffman, M. J. Johnson. ELBO surgery: yet another way to carve up the variational
        evidence lower bound. NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
    [2] C. Cremer, Q. Morris, D. Duvenaud. Reinterpreting Importance-Weighted Autoencoders.
        ICLR 2017 Workshop.
"""

from .curves import curve_slopes, fit_slope, snr_curves
from .latent import (
    ACTIVE_THRESHOLD,
    ACTIVE_UNITS_IMAGES,
    ACTIVE_UNITS_SEED,
    LATENT_SAMPLES,
    ActiveUnits,
    active_units,
    layer_means,
    posterior_means,
    reconstruct,
    sample_images,
    sample_layer_grid,
)
from .posterior import histogram_on_grid, posterior_grid, qew_density_on_grid, sample_qew, total_variation
from .surgery import elbo_surgery, run_surgery, surgery_text
from .toy import toy_bias

__all__ = [
    "elbo_surgery",
    "run_surgery",
    "surgery_text",
    "sample_qew",
    "posterior_grid",
    "histogram_on_grid",
    "qew_density_on_grid",
    "total_variation",
    "sample_images",
    "sample_layer_grid",
    "reconstruct",
    "posterior_means",
    "layer_means",
    "toy_bias",
    "LATENT_SAMPLES",
    "active_units",
    "ActiveUnits",
    "ACTIVE_THRESHOLD",
    "ACTIVE_UNITS_IMAGES",
    "ACTIVE_UNITS_SEED",
    "snr_curves",
    "fit_slope",
    "curve_slopes",
]
