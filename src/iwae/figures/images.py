"""Image grids of trained models: samples x ~ p(x), the VampPrior's pseudo-inputs, reconstructions.

The images come from :mod:`iwae.analysis` (:func:`~iwae.analysis.sample_images`,
:func:`~iwae.analysis.reconstruct`); this module only lays them out. Functions that draw several
runs take a mapping ``{title: model}`` and draw one panel per run, side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..analysis.latent import reconstruct, sample_images
from ._base import DPI, as_runs, model_image_shape, pyplot, save, show, tile

__all__ = ["plot_samples", "plot_pseudo_inputs", "plot_reconstructions"]


def plot_samples(
    models,
    path: str | os.PathLike,
    *,
    n: int = 64,
    seed: int = 0,
    probabilities: bool = True,
    image_shape: tuple[int, int] | None = None,
    dpi: int = DPI,
) -> Path:
    """A grid of ``n`` samples from each model's prior through its decoder, one panel per model
    (:func:`iwae.analysis.sample_images` with ``seed``).

    Size: 5 x 5.5 inches per panel, 500 x 550 pixels per panel as PNG at ``dpi`` 100.
    """
    plt = pyplot()
    runs = as_runs(models)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 5.5), dpi=dpi, squeeze=False)
    for ax, (title, model) in zip(axes[0], runs.items()):
        shape = model_image_shape(model, image_shape)
        show(ax, tile(sample_images(model, n, seed, probabilities), shape))
        what = "means of p(x | z)" if probabilities else "samples x ~ p(x | z)"
        ax.set_title(f"{title + ': ' if title else ''}{n} samples, z ~ p(z)\n{what}", fontsize=10)
    return save(fig, path)


@torch.no_grad()
def plot_pseudo_inputs(
    model, path: str | os.PathLike, *, image_shape: tuple[int, int] | None = None, title: str = "", dpi: int = DPI
) -> Path:
    """The VampPrior's pseudo-inputs u_c = sigmoid(raw_c) as images. Size: 5 x 5.5 inches, 500 x 550 pixels.

    Raises:
        ValueError: when the model's prior has no pseudo-inputs (only ``prior: vamp`` has them).
    """
    if not hasattr(model.prior_module, "pseudo_inputs"):
        raise ValueError(f"the model's prior ({model.config.prior}) has no pseudo-inputs; only a vamp prior has them")
    plt = pyplot()
    u = model.prior_module.pseudo_inputs.cpu()
    fig, ax = plt.subplots(figsize=(5, 5.5), dpi=dpi)
    show(ax, tile(u, model_image_shape(model, image_shape)))
    ax.set_title(f"{title + ': ' if title else ''}VampPrior, {len(u)} pseudo-inputs u_c", fontsize=10)
    return save(fig, path)


def plot_reconstructions(
    models,
    x: torch.Tensor,
    path: str | os.PathLike,
    *,
    n: int = 10,
    image_shape: tuple[int, int] | None = None,
    dpi: int = DPI,
) -> Path:
    """The first ``n`` rows of ``x`` (top) above the means of p(x | z_1 = E_q[z_1 | x]) (bottom,
    :func:`iwae.analysis.reconstruct`).

    Size: 8 x 3 inches per panel, 800 x 300 pixels per panel as PNG at ``dpi`` 100.
    """
    plt = pyplot()
    runs = as_runs(models)
    x = x[:n]
    fig, axes = plt.subplots(2, len(runs), figsize=(8 * len(runs), 3), dpi=dpi, squeeze=False)
    for j, (title, model) in enumerate(runs.items()):
        recon = reconstruct(model, x)
        shape = model_image_shape(model, image_shape)
        show(axes[0, j], tile(x, shape, cols=len(x)))
        show(axes[1, j], tile(recon, shape, cols=len(x)))
        axes[0, j].set_title(f"{title + ': ' if title else ''}test images (top), reconstructions (bottom)", fontsize=10)
        axes[0, j].set_ylabel("x", fontsize=9)
        axes[1, j].set_ylabel("E p(x | E[z|x])", fontsize=9)
    return save(fig, path)
