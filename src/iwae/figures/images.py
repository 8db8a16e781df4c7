"""Image grids of trained models: samples x ~ p(x), the VampPrior's pseudo-inputs, reconstructions.

The images come from :mod:`iwae.analysis` (:func:`~iwae.analysis.sample_images`,
:func:`~iwae.analysis.sample_layer_grid`, :func:`~iwae.analysis.reconstruct`); this module only lays
them out. Functions that draw several runs take a mapping ``{title: model}`` and draw one panel per run,
side by side. A model of two stochastic layers (Burda et al.'s, or the HVAE) gets a row per layer: its
samples with the top layer held fixed along a row, its reconstructions from the top layer alone.
Images are drawn in the shape the model records (28 x 20 for Frey faces), else square.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..analysis.latent import reconstruct, sample_images, sample_layer_grid
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
    (:func:`iwae.analysis.sample_images` with ``seed``), wrapped after three panels a row. Where a model has
    two or more stochastic layers a second row shows what the layers below the top one draw: 8 rows of one
    z_L ~ p(z_L) each, along a row 8 draws of z_{L-1}, ..., z_1 (:func:`iwae.analysis.sample_layer_grid`).

    Size: 5 x 5.5 inches per panel and row, 500 x 550 pixels per panel as PNG at ``dpi`` 100 (three runs
    of one layer in a row: 1500 x 550; four to six: 1500 x 1100).
    """
    plt = pyplot()
    runs = as_runs(models)
    per = 2 if any(getattr(m, "num_layers", 1) > 1 for m in runs.values()) else 1  # rows of panels per model
    prows, cols = panel_grid(len(runs))
    fig, axes = plt.subplots(prows * per, cols, figsize=(5 * cols, 5.5 * prows * per), dpi=dpi, squeeze=False)
    for j in range(len(runs), prows * cols):  # the empty places of the last row of models
        for row in range(per):
            axes[(j // cols) * per + row, j % cols].set_axis_off()
    what = "means of p(x | z)" if probabilities else "samples x ~ p(x | z)"
    for j, (title, model) in enumerate(runs.items()):
        first, col = (j // cols) * per, j % cols
        shape = model_image_shape(model, image_shape)
        show(axes[first, col], tile(sample_images(model, n, seed, probabilities), shape))
        axes[first, col].set_title(
            wrap_title(f"{title + ': ' if title else ''}{n} samples, z ~ p(z)\n{what}"), fontsize=10
        )
        if per == 1:
            continue
        layers = getattr(model, "num_layers", 1)
        if layers == 1:
            axes[first + 1, col].set_axis_off()
            continue
        show(axes[first + 1, col], tile(sample_layer_grid(model, 8, 8, seed, probabilities), shape, cols=8))
        below = "z_1" if layers == 2 else f"z_1..z_{layers - 1}"
        axes[first + 1, col].set_title(
            wrap_title(f"each row one z_{layers} ~ p(z_{layers}); along it {below} drawn again\n{what}"), fontsize=10
        )
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
    """The first ``n`` rows of ``x`` (top) above the means of p(x | z) at the posterior's means (below,
    :func:`iwae.analysis.reconstruct`); for a model of L > 1 stochastic layers, one more row per layer l > 1:
    the reconstruction from z_l, ..., z_L alone (the layers below at their prior means), what layer l and
    those above hold of x.

    Panels wrap after two models a row.

    Size: 8 x 1.5 inches per panel and row (3 inches for one layer), 800 x 150 pixels per panel and row as
    PNG at ``dpi`` 100 (two runs of one layer in a row: 1600 x 300; three or four: 1600 x 600).
    """
    plt = pyplot()
    runs = as_runs(models)
    x = x[:n]
    layers = max(getattr(m, "num_layers", 1) for m in runs.values())
    per = 1 + layers  # rows of panels per model: x, then a reconstruction per layer
    prows, cols = panel_grid(len(runs), columns=2)
    fig, axes = plt.subplots(prows * per, cols, figsize=(8 * cols, 1.5 * prows * per), dpi=dpi, squeeze=False)
    for j in range(len(runs), prows * cols):  # the empty places of the last row of models
        for row in range(per):
            axes[(j // cols) * per + row, j % cols].set_axis_off()
    for j, (title, model) in enumerate(runs.items()):
        first, col = (j // cols) * per, j % cols
        shape = model_image_shape(model, image_shape)
        show(axes[first, col], tile(x, shape, cols=len(x)))
        axes[first, col].set_title(
            wrap_title(f"{title + ': ' if title else ''}test images (top), reconstructions (below)"), fontsize=10
        )
        axes[first, col].set_ylabel("x", fontsize=9)
        own = getattr(model, "num_layers", 1)
        for layer in range(1, per):
            ax = axes[first + layer, col]
            if layer > own:
                ax.set_axis_off()
                continue
            show(ax, tile(reconstruct(model, x, layer), shape, cols=len(x)))
            ax.set_ylabel(
                "E p(x | E[z|x])" if layer == 1 else f"from z_{layer}" + ("" if layer == own else "+"), fontsize=9
            )
    return save(fig, path)
