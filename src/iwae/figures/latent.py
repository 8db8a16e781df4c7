"""The latent space of trained models: posterior means E_q[z_l | x] of every layer as a scatter, unit activity A_u.

The numbers come from :func:`iwae.analysis.posterior_means` and :func:`iwae.analysis.active_units`;
this module only draws them.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..analysis.latent import ACTIVE_THRESHOLD, LATENT_SAMPLES, active_units, posterior_means
from ._base import DPI, as_runs, panel_grid, pyplot, save, wrap_title

__all__ = ["plot_latent", "plot_activity"]


def plot_latent(
    models,
    x: torch.Tensor,
    path: str | os.PathLike,
    *,
    labels: torch.Tensor | None = None,
    x_units: torch.Tensor | None = None,
    dpi: int = DPI,
) -> Path:
    """Posterior means E_q[z_l | x] of the rows of ``x``, coloured by ``labels``: one panel per model, and
    one row of panels per stochastic layer, the top layer first (a model of one layer: one row).

    Where E_q[z_l | x] is estimated (a layer above the first of Burda et al.'s chain, the HVAE's z_1) it is a
    Monte Carlo average over 100 draws (see :func:`iwae.analysis.posterior_means`), and the title says so.
    A 2-D latent is drawn directly. Otherwise the two dimensions with the largest activity
    A_u = Var_x(E_q[u | x]) are drawn: A_u from :func:`iwae.analysis.active_units` on ``x_units`` (pass the
    first 500 training images, as evaluation does), or, without ``x_units``, the variance of the plotted
    points' own posterior means. Axis labels give each unit's A_u; a unit with A_u <= 0.01 is marked inactive.

    Panels wrap after three models a row, each model taking a row of panels per layer; titles wrap to the
    panel's width and the layout leaves room for them (matplotlib's constrained layout).

    Size: 5 x 5 inches per panel and layer plus 1 inch for the colour bar, 600 x 500 pixels for one
    panel of one layer as PNG at ``dpi`` 100 (1100 x 500 for two models, 600 x 1000 for two layers,
    1600 x 1000 for four to six models of one layer).
    """
    plt = pyplot()
    runs = as_runs(models)
    layers = max(getattr(m, "num_layers", 1) for m in runs.values())
    prows, cols = panel_grid(len(runs))
    fig, axes = plt.subplots(
        prows * layers, cols, figsize=(5 * cols + 1, 5 * prows * layers), dpi=dpi, squeeze=False, layout="constrained"
    )
    for j in range(len(runs), prows * cols):  # the empty places of the last row of models
        for row in range(layers):
            axes[(j // cols) * layers + row, j % cols].set_axis_off()
    scatter = None
    for j, (title, model) in enumerate(runs.items()):
        top = getattr(model, "num_layers", 1)
        variances = None
        if x_units is not None:
            gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
            variances = active_units(model, x_units.to(next(model.parameters()).device), generator=gen).variances
        for row in range(layers):
            ax, layer = axes[(j // cols) * layers + row, j % cols], top - row  # the top layer first
            if layer < 1:
                ax.set_axis_off()
                continue
            z = posterior_means(model, x, layer=layer)  # (N, D_l)
            if variances is not None:
                a_u, source = variances[layer - 1], f"A_u over {len(x_units)} training images"
            else:
                a_u, source = z.var(0, unbiased=False), f"A_u over these {len(z)} points"
            scatter = _scatter(ax, z, a_u, labels, layer, top) or scatter
            heading = f"{title + ': ' if title else ''}posterior means, {len(z)} test images"
            if _estimated(model, layer):  # the expectation over other layers is estimated, not exact
                heading += f"\nE_q[z_{layer} | x] averaged over {LATENT_SAMPLES} draws of " + _others(model, layer)
            if z.shape[1] != 2:
                heading += f"\n2 most active of {z.shape[1]} units ({source})"
            ax.set_title(wrap_title(heading), fontsize=10)
    if labels is not None and scatter is not None:
        bar = fig.colorbar(scatter, ax=axes.ravel().tolist(), ticks=range(10), fraction=0.9 / (5 * cols + 1))
        bar.set_label("digit label")
    return save(fig, path)


def _estimated(model, layer: int) -> bool:
    """Whether E_q[z_layer | x] is a Monte Carlo average: above the chain's first layer, the HVAE's z_1."""
    if hasattr(model, "top_posterior"):
        return layer < getattr(model, "num_layers", 1)
    return layer > 1


def _others(model, layer: int) -> str:
    """The latents E_q[z_layer | x] averages over: the chain's layers below, the HVAE's z_2."""
    if hasattr(model, "top_posterior"):
        return f"z_{layer + 1}"
    return "z_1" if layer == 2 else f"z_1..z_{layer - 1}"


def _scatter(ax, z: torch.Tensor, a_u: torch.Tensor, labels, layer: int, top: int):
    """The two most active units of one layer's posterior means as a scatter, axes labelled with their A_u."""
    dims = [0, 1] if z.shape[1] == 2 else sorted(torch.argsort(a_u, descending=True)[:2].tolist())
    if z.shape[1] < 2:
        dims = [0, 0]
    colour = {} if labels is None else dict(c=np.asarray(labels[: len(z)]), cmap="tab10", vmin=-0.5, vmax=9.5)
    scatter = ax.scatter(z[:, dims[0]], z[:, dims[1]], s=4, alpha=0.7, **colour)
    for setter, d in ((ax.set_xlabel, dims[0]), (ax.set_ylabel, dims[1])):
        state = "" if a_u[d] > ACTIVE_THRESHOLD else ", inactive"
        unit = f"z_{d + 1}" if top == 1 else f"z_{layer}[{d + 1}]"  # unit d + 1 of this layer
        setter(f"E[{unit} | x]  (A_u = {a_u[d]:.3g}{state})")
    ax.grid(True, alpha=0.3)
    return scatter if labels is not None else None


def plot_activity(models, x_units: torch.Tensor, path: str | os.PathLike, *, dpi: int = DPI) -> Path:
    """A_u = Var_x(E_q[u | x]) of every unit, sorted, on a log scale, with the 0.01 threshold of [1]
    as a horizontal line; one panel per stochastic layer, several models overlaid.

    Size: 5 x 4 inches per stochastic layer (of the deepest model), 500 x 400 pixels per layer as PNG.
    """
    plt = pyplot()
    runs = as_runs(models)
    layers = max(m.num_layers for m in runs.values())
    fig, axes = plt.subplots(1, layers, figsize=(5 * layers, 4), dpi=dpi, squeeze=False)
    floor = 1e-8  # log scale: dead units sit at the floor instead of vanishing
    for title, model in runs.items():
        dev = next(model.parameters()).device
        units = active_units(model, x_units.to(dev), generator=torch.Generator(device=dev).manual_seed(0))
        for ax, v in zip(axes[0], units.variances):
            v = torch.sort(v, descending=True).values.clamp_min(floor).numpy()
            active = int((v > ACTIVE_THRESHOLD).sum())
            ax.plot(
                np.arange(1, len(v) + 1),
                v,
                marker="o",
                markersize=3,
                label=f"{title + ', ' if title else ''}{active} of {len(v)} active",
            )
    for layer, ax in enumerate(axes[0]):
        ax.axhline(
            ACTIVE_THRESHOLD, color="black", linestyle="--", linewidth=1, label=f"threshold {ACTIVE_THRESHOLD:g}"
        )
        ax.set_yscale("log")
        ax.set_xlabel("unit, sorted by activity")
        ax.set_ylabel("A_u = Var_x(E_q[u | x])")
        ax.set_title(f"stochastic layer {layer + 1}, {len(x_units)} training images", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
