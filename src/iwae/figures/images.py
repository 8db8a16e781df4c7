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
from ._base import DPI, as_runs, model_image_shape, panel_grid, pyplot, save, show, tile, wrap_title

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
    (:func:`iwae.analysis.sample_images` with ``seed``), wrapped after three panels a row.

    Size: 5 x 5.5 inches per panel, 500 x 550 pixels per panel as PNG at ``dpi`` 100 (three runs in a
    row: 1500 x 550; four to six: 1500 x 1100).
    """
    plt = pyplot()
    runs = as_runs(models)
    rows, cols = panel_grid(len(runs))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5.5 * rows), dpi=dpi, squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_axis_off()
    for ax, (title, model) in zip(axes.flat, runs.items()):
        shape = model_image_shape(model, image_shape)
        show(ax, tile(sample_images(model, n, seed, probabilities), shape))
        what = "means of p(x | z)" if probabilities else "samples x ~ p(x | z)"
        ax.set_title(wrap_title(f"{title + ': ' if title else ''}{n} samples, z ~ p(z)\n{what}"), fontsize=10)
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

    Panels wrap after two a row.

    Size: 8 x 3 inches per panel, 800 x 300 pixels per panel as PNG at ``dpi`` 100 (two runs in a row:
    1600 x 300; three or four: 1600 x 600).
    """
    plt = pyplot()
    runs = as_runs(models)
    x = x[:n]
    rows, cols = panel_grid(len(runs), columns=2)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(8 * cols, 3 * rows), dpi=dpi, squeeze=False)
    for j in range(len(runs), rows * cols):  # the empty places of the last row
        axes[2 * (j // cols), j % cols].set_axis_off()
        axes[2 * (j // cols) + 1, j % cols].set_axis_off()
    for j, (title, model) in enumerate(runs.items()):
        top, bottom = axes[2 * (j // cols), j % cols], axes[2 * (j // cols) + 1, j % cols]
        recon = reconstruct(model, x)
        shape = model_image_shape(model, image_shape)
        show(top, tile(x, shape, cols=len(x)))
        show(bottom, tile(recon, shape, cols=len(x)))
        top.set_title(f"{title + ': ' if title else ''}test images (top), reconstructions (bottom)", fontsize=10)
        top.set_ylabel("x", fontsize=9)
        bottom.set_ylabel("E p(x | E[z|x])", fontsize=9)
    return save(fig, path)
