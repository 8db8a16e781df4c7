"""The latent space of trained models: posterior means E_q[z_L | x] as a scatter, unit activity A_u.

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
    """Posterior means E_q[z_L | x] of the rows of ``x`` in the top stochastic layer, coloured by ``labels``.

    With L > 1 layers E_q[z_L | x] is a Monte Carlo average over 100 draws of the layers below
    (see :func:`iwae.analysis.posterior_means`), and the title says so. A 2-D latent is drawn
    directly. Otherwise the two dimensions with the largest activity A_u = Var_x(E_q[u | x]) are
    drawn: A_u from :func:`iwae.analysis.active_units` on ``x_units`` (pass the first 500 training
    images, as evaluation does), or, without ``x_units``, the variance of the plotted points' own
    posterior means. Axis labels give each unit's A_u; a unit with A_u <= 0.01 is marked inactive.

    Panels wrap after three a row; titles wrap to the panel's width, and the layout leaves room for
    them (matplotlib's constrained layout), so that neighbours' titles do not overlap.

    Size: 5 x 5 inches per panel plus 1 inch for the colour bar, 600 x 500 pixels for one panel
    as PNG at ``dpi`` 100 (1100 x 500 for two, 1600 x 500 for three, 1600 x 1000 for four to six).
    """
    plt = pyplot()
    runs = as_runs(models)
    rows, cols = panel_grid(len(runs))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols + 1, 5 * rows), dpi=dpi, squeeze=False, layout="constrained")
    for ax in axes.flat[len(runs) :]:
        ax.set_axis_off()
    scatter = None
    for ax, (title, model) in zip(axes.flat, runs.items()):
        z = posterior_means(model, x)  # (N, D_L)
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
        ax.set_title(wrap_title(heading), fontsize=10)
        ax.grid(True, alpha=0.3)
    if labels is not None and scatter is not None:
        bar = fig.colorbar(scatter, ax=axes.ravel().tolist(), ticks=range(10), fraction=0.9 / (5 * cols + 1))
        bar.set_label("digit label")
    return save(fig, path)


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
