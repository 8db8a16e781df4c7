"""Figures of trained models and of the IWAE bound: samples, pseudo-inputs, reconstructions, latent
spread, unit activity, training curves, and the toy figure of the bias of log-mean estimators.

    iwae sample runs/iwae-k5 --out samples.png
    iwae plot runs/vae-2d runs/iwae-2d --what all --out figures/
    iwae plot toy --out toy.png

Every ``plot_*`` function takes its data or models and an output path, writes one figure and returns
the path. The format follows the extension (``.png``, ``.svg``, ``.pdf``); a path without one gets
``.png``. Figure sizes are fixed in inches at ``dpi`` (100 by default) and saved without tight
cropping, so a PNG's pixel size is known in advance; each function's docstring gives it. Functions
that draw several runs take a mapping ``{title: model}`` and draw one panel per run, side by side
(the VAE-vs-IWAE comparison of the seed blog's Fig. 5).

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .evaluate import ACTIVE_THRESHOLD, active_units
from .models import VAE
from ._deprecated import moved

__all__ = [
    "sample_images", "toy_bias", "plot_samples", "plot_pseudo_inputs", "plot_reconstructions",
    "plot_latent", "plot_activity", "plot_curves", "plot_toy", "FORMATS",
]

FORMATS = ("png", "svg", "pdf")
DPI = 100
TOY_SETTINGS = ((0.1, 2.0, 0.5), (0.1, 2.0, 0.9), (0.1, 2.0, 0.99))  # (a, b, p): X = a w.p. p, else b
TOY_KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


# ----------------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Writes ``fig`` in the format of ``path``'s extension (``.png`` appended when there is none)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        path, fmt = path.with_suffix(".png"), "png"
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format .{fmt} of {path}; use one of {', '.join('.' + f for f in FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # no bbox_inches="tight": the pixel size must be figsize * dpi exactly
    fig.savefig(path, format=fmt, dpi=fig.dpi, metadata={"Software": "iwae"} if fmt == "png" else None)
    _pyplot().close(fig)
    return path


def image_shape_of(input_dim: int) -> tuple[int, int]:
    """(side, side) for a square number of pixels (MNIST, Omniglot: 28 x 28)."""
    side = math.isqrt(input_dim)
    if side * side != input_dim:
        raise ValueError(f"cannot draw inputs of {input_dim} pixels as square images")
    return side, side


def _tile(images: torch.Tensor | np.ndarray, image_shape: tuple[int, int], cols: int | None = None,
          pad: int = 1) -> np.ndarray:
    """Images ``(N, H*W)`` in [0, 1] -> one ``(rows*(H+pad)+pad, cols*(W+pad)+pad)`` array, padded with 1 (white)."""
    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    n = x.shape[0]
    h, w = image_shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            x[i].reshape(h, w)
    return grid


def _show(ax, grid: np.ndarray) -> None:
    ax.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _as_runs(models: VAE | Mapping[str, VAE]) -> dict[str, VAE]:
    return {"": models} if isinstance(models, VAE) else dict(models)


# ----------------------------------------------------------------------------- samples
def _sample_prior(prior: torch.distributions.Distribution, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws ``(n, D)`` of a prior (an Independent Normal, or a MixtureSameFamily of them) from
    ``generator``: torch's ``Distribution.sample`` takes none, it draws from the global stream."""
    if isinstance(prior, torch.distributions.MixtureSameFamily):
        weights = prior.mixture_distribution.probs  # (C,)
        component = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
        normal = prior.component_distribution.base_dist
        loc, scale = normal.loc[component], normal.scale[component]  # (n, D)
    else:
        normal = prior.base_dist if isinstance(prior, torch.distributions.Independent) else prior
        if not isinstance(normal, torch.distributions.Normal):
            raise TypeError(f"cannot sample a {type(prior).__name__} prior with a generator")
        loc, scale = normal.loc.expand(n, *normal.loc.shape), normal.scale.expand(n, *normal.scale.shape)
    return loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)


@torch.no_grad()
def sample_images(model: VAE, n: int = 64, seed: int = 0, probabilities: bool = True) -> torch.Tensor:
    """Draws x ~ p(x) ancestrally: z_L ~ p(z_L), then z_{l-1} ~ p(z_{l-1} | z_l) top-down, then p(x | z_1).

    The draws come from a generator of their own on the model's device, seeded with ``seed``: the
    same seed gives the same samples, and torch's global random state (CPU and every CUDA device)
    is left as it was.

    Returns:
        ``(n, input_dim)``: the Bernoulli means of p(x | z_1) (``probabilities``), else binary samples.
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
    x = px.mean if probabilities else torch.bernoulli(px.mean, generator=generator)
    model.train(was_training)
    return x.cpu()


def plot_samples(models: VAE | Mapping[str, VAE], path: str | os.PathLike, *, n: int = 64, seed: int = 0,
                 probabilities: bool = True, image_shape: tuple[int, int] | None = None, dpi: int = DPI) -> Path:
    """A grid of ``n`` samples from each model's prior through its decoder, one panel per model.

    Size: 5 x 5.5 inches per panel, 500 x 550 pixels per panel as PNG at ``dpi`` 100.
    """
    plt = _pyplot()
    runs = _as_runs(models)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 5.5), dpi=dpi, squeeze=False)
    for ax, (title, model) in zip(axes[0], runs.items()):
        shape = image_shape or image_shape_of(model.config.input_dim)
        _show(ax, _tile(sample_images(model, n, seed, probabilities), shape))
        what = "Bernoulli means of p(x | z)" if probabilities else "binary samples x ~ p(x | z)"
        ax.set_title(f"{title + ': ' if title else ''}{n} samples, z ~ p(z)\n{what}", fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def plot_pseudo_inputs(model: VAE, path: str | os.PathLike, *, image_shape: tuple[int, int] | None = None,
                       title: str = "", dpi: int = DPI) -> Path:
    """The VampPrior's pseudo-inputs u_c = sigmoid(raw_c) as images. Size: 5 x 5.5 inches, 500 x 550 pixels.

    Raises:
        ValueError: when the model's prior has no pseudo-inputs (only ``prior: vamp`` has them).
    """
    if not hasattr(model.prior_module, "pseudo_inputs"):
        raise ValueError(f"the model's prior ({model.config.prior}) has no pseudo-inputs; only a vamp prior has them")
    plt = _pyplot()
    u = model.prior_module.pseudo_inputs.cpu()
    fig, ax = plt.subplots(figsize=(5, 5.5), dpi=dpi)
    _show(ax, _tile(u, image_shape or image_shape_of(model.config.input_dim)))
    ax.set_title(f"{title + ': ' if title else ''}VampPrior, {len(u)} pseudo-inputs u_c", fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def plot_reconstructions(models: VAE | Mapping[str, VAE], x: torch.Tensor, path: str | os.PathLike, *,
                         n: int = 10, image_shape: tuple[int, int] | None = None, dpi: int = DPI) -> Path:
    """The first ``n`` rows of ``x`` (top) above the Bernoulli means of p(x | z_1 = E_q[z_1 | x]) (bottom).

    Size: 8 x 3 inches per panel, 800 x 300 pixels per panel as PNG at ``dpi`` 100.
    """
    plt = _pyplot()
    runs = _as_runs(models)
    x = x[:n]
    fig, axes = plt.subplots(2, len(runs), figsize=(8 * len(runs), 3), dpi=dpi, squeeze=False)
    for j, (title, model) in enumerate(runs.items()):
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        loc, _ = model.encoder[0].loc_log_scale(x.to(dev))  # z_1 = E_q[z_1 | x]
        recon = model.decode(loc).mean.cpu()
        model.train(was_training)
        shape = image_shape or image_shape_of(model.config.input_dim)
        _show(axes[0, j], _tile(x, shape, cols=len(x)))
        _show(axes[1, j], _tile(recon, shape, cols=len(x)))
        axes[0, j].set_title(f"{title + ': ' if title else ''}test images (top), reconstructions (bottom)",
                             fontsize=10)
        axes[0, j].set_ylabel("x", fontsize=9)
        axes[1, j].set_ylabel("E p(x | E[z|x])", fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- latent space
LATENT_SAMPLES = 100  # draws of the chain below the top layer for E_q[z_L | x], as active_units


@torch.no_grad()
def _posterior_means(model: VAE, x: torch.Tensor, num_samples: int = LATENT_SAMPLES, seed: int = 0) -> torch.Tensor:
    """E_q[z_L | x] of the top layer, shape ``(N, D_L)``.

    One layer: q(z_1 | x)'s mean. L > 1 layers: E_q[z_L | x] = E_{z_{L-1} ~ q(z_{L-1} | x)}[mean of
    q(z_L | z_{L-1})], estimated by the average over ``num_samples`` draws of the chain
    z_1, ..., z_{L-1} ~ q (seeded: the same figure every time). The mean of q(z_L | E[z_{L-1}]),
    the chain of :meth:`VAE.encode`, is not that expectation when q(z_L | z_{L-1}) is nonlinear in
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


def plot_latent(models: VAE | Mapping[str, VAE], x: torch.Tensor, path: str | os.PathLike, *,
                labels: torch.Tensor | None = None, x_units: torch.Tensor | None = None, dpi: int = DPI) -> Path:
    """Posterior means E_q[z_L | x] of the rows of ``x`` in the top stochastic layer, coloured by ``labels``.

    With L > 1 layers E_q[z_L | x] is a Monte Carlo average over 100 draws of the layers below
    (see :func:`_posterior_means`), and the title says so. A 2-D latent is drawn directly. Otherwise the two dimensions with the largest activity
    A_u = Var_x(E_q[u | x]) are drawn: A_u from :func:`iwae.evaluate.active_units` on ``x_units``
    (pass the first 500 training images, as evaluation does), or, without ``x_units``, the variance
    of the plotted points' own posterior means. Axis labels give each unit's A_u; a unit with
    A_u <= 0.01 is marked inactive.

    Size: 5 x 5 inches per panel plus 1 inch for the colour bar, 600 x 500 pixels for one panel
    as PNG at ``dpi`` 100 (1100 x 500 for two).
    """
    plt = _pyplot()
    runs = _as_runs(models)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs) + 1, 5), dpi=dpi, squeeze=False)
    scatter = None
    for ax, (title, model) in zip(axes[0], runs.items()):
        z = _posterior_means(model, x)  # (N, D_L)
        if x_units is not None:
            gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
            a_u = active_units(model, x_units.to(next(model.parameters()).device), generator=gen).variances[-1]
            source = f"A_u over {len(x_units)} training images"
        else:
            a_u = z.var(0, unbiased=False)
            source = f"A_u over these {len(z)} points"
        dims = [0, 1] if z.shape[1] == 2 else sorted(torch.argsort(a_u, descending=True)[:2].tolist())
        if z.shape[1] < 2:
            dims = [0, 0]
        colour = {} if labels is None else dict(c=np.asarray(labels[: len(z)]), cmap="tab10", vmin=-0.5, vmax=9.5)
        scatter = ax.scatter(z[:, dims[0]], z[:, dims[1]], s=4, alpha=0.7, **colour)
        top = model.num_layers
        for setter, d in ((ax.set_xlabel, dims[0]), (ax.set_ylabel, dims[1])):
            state = "" if a_u[d] > ACTIVE_THRESHOLD else ", inactive"
            unit = f"z_{d + 1}" if top == 1 else f"z_{top}[{d + 1}]"  # unit d + 1 of the top layer
            setter(f"E[{unit} | x]  (A_u = {a_u[d]:.3g}{state})")
        heading = f"{title + ': ' if title else ''}posterior means, {len(z)} test images"
        if top > 1:  # the expectation over the layers below is estimated, not exact
            below = "z_1" if top == 2 else f"z_1..z_{top - 1}"
            heading += f"\nE_q[z_{top} | x] averaged over {LATENT_SAMPLES} draws of {below}"
        if z.shape[1] != 2:
            heading += f"\n2 most active of {z.shape[1]} units ({source})"
        ax.set_title(heading, fontsize=10)
        ax.grid(True, alpha=0.3)
    if labels is not None and scatter is not None:
        bar = fig.colorbar(scatter, ax=axes[0].tolist(), ticks=range(10), fraction=0.9 / (5 * len(runs) + 1))
        bar.set_label("digit label")
    return _save(fig, path)


def plot_activity(models: VAE | Mapping[str, VAE], x_units: torch.Tensor, path: str | os.PathLike, *,
                  dpi: int = DPI) -> Path:
    """A_u = Var_x(E_q[u | x]) of every unit, sorted, on a log scale, with the 0.01 threshold of [1]
    as a horizontal line; one panel per stochastic layer, several models overlaid.

    Size: 5 x 4 inches per stochastic layer (of the deepest model), 500 x 400 pixels per layer as PNG.
    """
    plt = _pyplot()
    runs = _as_runs(models)
    layers = max(m.num_layers for m in runs.values())
    fig, axes = plt.subplots(1, layers, figsize=(5 * layers, 4), dpi=dpi, squeeze=False)
    floor = 1e-8  # log scale: dead units sit at the floor instead of vanishing
    for title, model in runs.items():
        dev = next(model.parameters()).device
        units = active_units(model, x_units.to(dev), generator=torch.Generator(device=dev).manual_seed(0))
        for layer, (ax, v) in enumerate(zip(axes[0], units.variances)):
            v = torch.sort(v, descending=True).values.clamp_min(floor).numpy()
            active = int((v > ACTIVE_THRESHOLD).sum())
            ax.plot(np.arange(1, len(v) + 1), v, marker="o", markersize=3,
                    label=f"{title + ', ' if title else ''}{active} of {len(v)} active")
    for layer, ax in enumerate(axes[0]):
        ax.axhline(ACTIVE_THRESHOLD, color="black", linestyle="--", linewidth=1,
                   label=f"threshold {ACTIVE_THRESHOLD:g}")
        ax.set_yscale("log")
        ax.set_xlabel("unit, sorted by activity")
        ax.set_ylabel("A_u = Var_x(E_q[u | x])")
        ax.set_title(f"stochastic layer {layer + 1}, {len(x_units)} training images", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- training curves
def plot_curves(metrics: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, *,
                dpi: int = DPI) -> Path:
    """Training bound (solid) and validation L_k (dashed) against epoch, one colour per run.

    Args:
        metrics: ``{title: rows}``, rows as :func:`iwae.rundir.read_metrics` returns them.

    Size: 7 x 4.5 inches, 700 x 450 pixels as PNG at ``dpi`` 100.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=dpi)
    for i, (title, rows) in enumerate(metrics.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in rows]
        prefix = f"{title}, " if title else ""
        ax.plot(epochs, [r["train_bound"] for r in rows], "-", marker="o", markersize=3, color=color,
                label=f"{prefix}train bound")
        for key in sorted({k for r in rows for k in r if k.startswith("valid_L")}):
            ax.plot(epochs, [r.get(key, math.nan) for r in rows], "--", marker="s", markersize=3, color=color,
                    label=f"{prefix}valid L_{key[len('valid_L'):]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bound (nats per example)")
    ax.set_title("Training curves")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- toy: bias of log-mean
def toy_bias(k: int, a: float = 0.1, b: float = 2.0, p: float = 0.9) -> float:
    """E[log (1/k) sum_i X_i] - log E[X] for k iid X_i with X = a with probability p, else b; exact.

    With j the number of draws equal to a, j ~ Binomial(k, p) and the mean is (j a + (k - j) b) / k:

        E[log mean] = sum_j C(k, j) p^j (1 - p)^(k - j) log((j a + (k - j) b) / k)

    the binomial weights taken in log space (lgamma), so k in the thousands is fine. By Jensen the
    bias is <= 0, and it rises monotonically to 0 as k grows, as the IWAE bound L_k does [1].

    Raises:
        ValueError: for k < 1, a or b not > 0, or p outside [0, 1].
    """
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


def plot_toy(path: str | os.PathLike, *, settings: Sequence[tuple[float, float, float]] = TOY_SETTINGS,
             ks: Sequence[int] = TOY_KS, dpi: int = DPI) -> Path:
    """The bias E[log mean of k samples] - log E[X] of a two-valued X against k (log x axis), one line
    per ``(a, b, p)`` setting: always <= 0 and shrinking towards 0 as k grows.

    Size: 7 x 4.5 inches, 700 x 450 pixels as PNG at ``dpi`` 100.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=dpi)
    for a, b, p in settings:
        ax.plot(ks, [toy_bias(k, a, b, p) for k in ks], marker="o", markersize=3,
                label=f"X = {a:g} w.p. {p:g}, else {b:g}")
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("k (samples averaged inside the log)")
    ax.set_ylabel("E[log mean of k samples] - log E[X]")
    ax.set_title("Bias of log (k-sample mean): <= 0 (Jensen), shrinking as k grows")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# read_metrics moved to iwae.rundir (it reads a run folder's file): the old name still works, with a warning
__getattr__ = moved(__name__, "iwae.rundir", ("read_metrics",))
