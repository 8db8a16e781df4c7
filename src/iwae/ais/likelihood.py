"""AIS estimates of log p(x) for the images of a dataset under an iwae VAE, in memory-budgeted chunks,
and the cost estimate printed before a run."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

from ..memory import CPU_ROWS_PER_CALL, DEFAULT_MEMORY_BUDGET, bytes_per_row
from ..models.vae import VAE
from .annealing import (
    DEFAULT_CHAINS,
    DEFAULT_LEAPFROG,
    DEFAULT_STEP_SIZE,
    DEFAULT_STEPS,
    TARGET_ACCEPT,
    ais,
    log_mean_exp_stats,
    schedule_betas,
)
from .vae import vae_target

__all__ = ["AISResult", "ais_log_likelihood", "ais_cost"]


@contextlib.contextmanager
def _frozen(model: VAE):
    """The model's parameters without requires_grad for the block (restored after): AIS differentiates
    with respect to z only, and autograd then keeps no tensors for weight gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@dataclass
class AISResult:
    """AIS estimates for N images (tensors on the CPU, float64)."""

    log_likelihood: torch.Tensor  # (N,) log p-hat(x_n) = logsumexp_c log w_c - log C
    stderr: torch.Tensor  # (N,) delta-method standard error from the chains' weights (log_mean_exp_stats)
    ess: torch.Tensor  # (N,) effective sample size (sum w)^2 / sum w^2, between 1 and C
    acceptance: torch.Tensor  # (N,) mean HMC acceptance rate over the image's chains
    step_sizes: torch.Tensor  # (N, C) final leapfrog step sizes
    seconds: float
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The dataset-level numbers: mean NLL with its standard error over images, and the diagnostics."""
        nll = -self.log_likelihood
        n = len(nll)
        return {
            "nll": nll.mean().item(),
            "nll_stderr": nll.std().item() / math.sqrt(n) if n > 1 else None,  # undefined for one image
            "n_test": n,
            "mean_chain_stderr": self.stderr.mean().item(),
            "mean_ess": self.ess.mean().item(),
            "acceptance": self.acceptance.mean().item(),
            "mean_step_size": self.step_sizes.mean().item(),
            "seconds": self.seconds,
            "images_per_s": n / self.seconds if self.seconds > 0 else math.inf,
            **self.settings,
        }


def _ais_bytes_per_row(model: VAE) -> int:
    """Upper estimate of one chain's memory for one gradient of log p(x, z): the no-grad pass's
    (:func:`iwae.memory.bytes_per_row`) three times over (the activations autograd keeps, the backward pass's
    gradients), plus the HMC state (z, p, the proposal and the cached gradients, about 8 D floats)."""
    element_size = next(model.parameters()).element_size()
    return 3 * bytes_per_row(model) + 8 * sum(model.config.latent_dims) * element_size


def _images_per_chunk(model: VAE, chains: int, n: int, memory_budget: int, device: torch.device) -> int:
    per_image = chains * _ais_bytes_per_row(model)
    if memory_budget < per_image:
        raise ValueError(
            f"memory_budget of {memory_budget} bytes is below one image's {chains} chains "
            f"({per_image} bytes); raise it or use fewer chains"
        )
    images = memory_budget // per_image
    if device.type == "cpu":  # as evaluate: calls of a few thousand rows stay in cache
        images = min(images, max(1, CPU_ROWS_PER_CALL // chains))
    return max(1, min(n, images))


def ais_log_likelihood(
    model: VAE,
    x: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    schedule: str = "sigmoid",
    initial: str = "encoder",
    step_size: float = DEFAULT_STEP_SIZE,
    target_accept: float = TARGET_ACCEPT,
    memory_budget: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> AISResult:
    """AIS estimates of log p(x_n) for each row of ``x`` (``(N, D)``, on the model's device).

    Images are processed in chunks of ``images x chains`` rows that fit ``memory_budget`` bytes
    (default: :data:`iwae.memory.DEFAULT_MEMORY_BUDGET`, 1 GiB); the chunking does not change the
    estimator, only which random numbers each image gets. See the module docstring for the algorithm.
    """
    memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if x.dim() != 2 or x.shape[1] != model.config.input_dim:
        raise ValueError(f"x must have shape (N, {model.config.input_dim}), got {tuple(x.shape)}")
    schedule_betas(steps, schedule)  # check the settings before any work
    if initial not in ("encoder", "prior"):
        raise ValueError(f"unknown initial distribution {initial!r}; choose encoder or prior")
    n = x.shape[0]
    images = _images_per_chunk(model, chains, n, memory_budget, x.device)
    out = {name: [] for name in ("log_likelihood", "stderr", "ess", "acceptance", "step_sizes")}
    t0 = time.perf_counter()
    with _frozen(model):
        for i in range(0, n, images):
            log_joint, p0 = vae_target(model, x[i : i + images], initial)
            run = ais(
                log_joint,
                p0,
                chains=chains,
                steps=steps,
                leapfrog_steps=leapfrog,
                schedule=schedule,
                step_size=step_size,
                target_accept=target_accept,
                generator=generator,
                progress=progress,
            )
            estimate, stderr, ess = log_mean_exp_stats(run.log_weights)
            for name, value in zip(out, (estimate, stderr, ess, run.acceptance.mean(0), run.step_sizes.t())):
                out[name].append(value.detach().double().cpu())
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - t0
    settings = dict(
        method="ais",
        steps=steps,
        chains=chains,
        leapfrog=leapfrog,
        schedule=schedule,
        initial=initial,
        step_size=step_size,
        target_accept=target_accept,
        chunking={"images": images, "memory_budget": memory_budget},
    )
    return AISResult(**{k: torch.cat(v) for k, v in out.items()}, seconds=seconds, settings=settings)


def ais_cost(
    model: VAE,
    x: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    timing_steps: int = 3,
    memory_budget: int | None = None,
    k: int = 5000,
) -> dict:
    """What AIS on the images ``x`` will cost, before it runs (the CLI prints it).

    By formula: a chain makes (T - 1) L + 1 forward-and-backward passes of log p(x, z), so an image
    costs C ((T - 1) L + 1) of them where L_k costs k forward passes (``passes_per_image`` and
    ``l_k_passes_per_image``). Measured: a timing pass of ``timing_steps`` annealing steps on one
    chunk of at most that many images, scaled to T (``seconds_per_image``, ``seconds``).
    """
    memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    n = x.shape[0]
    images = _images_per_chunk(model, chains, n, memory_budget, x.device)
    timing_steps = max(2, min(timing_steps, steps))
    sample = x[:images]
    generator = torch.Generator(device=x.device).manual_seed(0)
    result = ais_log_likelihood(
        model,
        sample,
        steps=timing_steps,
        chains=chains,
        leapfrog=leapfrog,
        memory_budget=memory_budget,
        generator=generator,
    )
    passes = chains * ((steps - 1) * leapfrog + 1)
    timed_passes = chains * ((timing_steps - 1) * leapfrog + 1)
    per_image = result.seconds / len(sample) * passes / timed_passes
    return {
        "passes_per_image": passes,
        "l_k_passes_per_image": k,
        "seconds_per_image": per_image,
        "seconds": per_image * n,
        "images": n,
    }
