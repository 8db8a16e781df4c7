"""Annealed importance sampling (AIS) with HMC transitions, and bidirectional Monte Carlo (BDMC).

    from iwae.ais import ais_log_likelihood
    result = ais_log_likelihood(model, x_test[:50], steps=1000, chains=16, leapfrog=10)
    result.log_likelihood        # (N,) estimates of log p(x_n), in nats

AIS [1] estimates Z = int p_T(z) dz, here p_T(z) = p(x, z) (the whole latent chain: for two
stochastic layers log p(z_2) + log p(z_1 | z_2) + log p(x | z_1)), from a normalised initial
distribution p_0 (the encoder's q(z | x), sampled ancestrally, or the prior p(z)) through the
intermediate densities

    f_t(z) = p_0(z)^(1 - b_t) p_T(z)^(b_t),   0 = b_0 < b_1 < ... < b_T = 1.

Each chain starts at z_0 ~ p_0 and accumulates

    log w = sum_{t=1}^{T} (b_t - b_{t-1}) (log p_T(z_{t-1}) - log p_0(z_{t-1})),

where z_t follows z_{t-1} by an HMC transition that leaves f_t invariant. E[w] = Z, so
log (1/C) sum_c w_c is a stochastic lower bound on log p(x) (Jensen). With T = 1 no transition
runs and AIS is plain importance sampling with proposal p_0.

Run backwards (b from 1 to 0) from an exact sample of p_T / Z, the same recursion gives a weight
with E[w] = 1 / Z, whence a stochastic upper bound -log (1/C) sum_c w_c: on data simulated from
the model, where (z, x) ~ p(z) p(x | z) makes z an exact posterior sample, the forward and the
reverse bound sandwich log p(x) (BDMC, [2]); their gap bounds the error of AIS on such data [3].

HMC uses an identity mass matrix, L leapfrog steps and a per-chain step size that is multiplied
by 1.02 when the chain's acceptance rate so far exceeds the target (0.65) and by 0.98 otherwise,
clamped to [1e-4, 0.5], as in the released code of [3]. All images x chains run as one batch;
gradients are of log f_t with respect to z only (``torch.autograd.grad`` on z; the model's
parameters receive none).

The core (:func:`ais`) takes any ``log_joint(z)`` and initial distribution, so that tests can use
closed-form targets; :func:`vae_target` builds them from an :class:`iwae.models.VAE`.

References:
    [1] R. M. Neal. Annealed importance sampling. Statistics and Computing 11, 2001.
    [2] R. B. Grosse, Z. Ghahramani, R. P. Adams. Sandwiching the marginal likelihood using
        bidirectional Monte Carlo. arXiv:1511.02543, 2015.
    [3] Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse. On the Quantitative Analysis of Decoder-Based
        Generative Models. ICLR 2017.
"""

from .annealing import (
    DEFAULT_CHAINS,
    DEFAULT_LEAPFROG,
    DEFAULT_STEP_SIZE,
    DEFAULT_STEPS,
    TARGET_ACCEPT,
    AISChains,
    GaussianInitial,
    InitialDistribution,
    ais,
    log_mean_exp_stats,
    sandwich,
    schedule_betas,
)
from .bdmc import bdmc
from .hmc import hmc_step, leapfrog
from .likelihood import AISResult, ais_cost, ais_log_likelihood
from .run import ais_eval_name, ais_evaluate, ais_summary_text, bdmc_run, bdmc_text
from .vae import vae_target

__all__ = [
    "InitialDistribution",
    "GaussianInitial",
    "AISChains",
    "AISResult",
    "schedule_betas",
    "leapfrog",
    "hmc_step",
    "ais",
    "log_mean_exp_stats",
    "sandwich",
    "vae_target",
    "ais_log_likelihood",
    "ais_cost",
    "bdmc",
    "ais_eval_name",
    "ais_evaluate",
    "ais_summary_text",
    "bdmc_run",
    "bdmc_text",
    "DEFAULT_STEPS",
    "DEFAULT_CHAINS",
    "DEFAULT_LEAPFROG",
    "DEFAULT_STEP_SIZE",
    "TARGET_ACCEPT",
]
