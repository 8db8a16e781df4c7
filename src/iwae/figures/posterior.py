"""The q_EW figure: how the IWAE's implicit posterior approaches p(z|x) as k grows (2-D latents).

    from iwae.figures import qew_figure, plot_qew
    rows = qew_figure(model, x[:3], (1, 5, 50), "qew.png")   # compute (iwae.qew) and draw; the report's rows
    plot_qew(qew_panels(model, x[:3]), x[:3], "qew.png")     # draw panels computed elsewhere

The masses drawn are those of :func:`iwae.qew.qew_panels` (see :mod:`iwae.qew` for the grid, the
window and the distances in the titles); this module only draws them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..qew import QEWPanel, qew_panels
from ._base import _plane, pyplot

__all__ = ["plot_qew", "qew_figure"]


def _image(x1: torch.Tensor, image_shape):
    """One input as a 2-D array: ``image_shape``, else square when the size is a square, else one row."""
    d = x1.numel()
    if image_shape is None:
        side = math.isqrt(d)
        image_shape = (side, side) if side * side == d else (1, d)
    return x1.detach().cpu().float().reshape(_plane(image_shape)).numpy()  # (1, H, W) drawn as (H, W)


def qew_figure(
    model,
    x: torch.Tensor,
    ks,
    path: str | os.PathLike,
    *,
    grid: torch.Tensor | None = None,
    samples: int = 20_000,
    generator: torch.Generator | None = None,
    grid_size: int = 121,
    extent="auto",
    image_shape: tuple[int, int] | None = None,
    panel_inches: float = 2.2,
    dpi: int = 100,
) -> list[dict]:
    """Compute the panels (:func:`iwae.qew.qew_panels`, arguments as :func:`iwae.qew.qew_report`) and draw
    them (:func:`plot_qew`): one row per input, the image, p(z|x), q(z|x) and q_EW for each k.

    The figure is ``panel_inches * (3 + len(ks))`` by ``panel_inches * len(x)`` inches at ``dpi``
    (PNG: that many pixels, 100 per inch by default); the format follows the extension (.png, .svg, .pdf).

    Returns:
        The report's rows (:func:`iwae.qew.qew_report`), one per input and k.
    """
    panels = qew_panels(model, x, [int(k) for k in ks], grid, samples, generator, grid_size, extent)
    plot_qew(panels, x, path, image_shape=image_shape, panel_inches=panel_inches, dpi=dpi)
    return [r for p in panels for r in p.rows]


def plot_qew(
    panels: Sequence[QEWPanel],
    x: torch.Tensor,
    path: str | os.PathLike,
    *,
    image_shape: tuple[int, int] | None = None,
    panel_inches: float = 2.2,
    dpi: int = 100,
) -> Path:
    """Draw :func:`iwae.qew.qew_panels`' panels, one row per input ``x[b]``: the image, p(z|x), q(z|x)
    and q_EW for each k of the panels; returns the path.

    All heatmaps of a row share one grid and axes (z_1 across, z_2 up); each is scaled to its own
    maximum, and p's contours (at 10% and 50% of its peak) are drawn over q and every q_EW. Titles
    carry TV to p (p's: the noise floor, ``tv_floor``). The figure is ``panel_inches * (3 + len(ks))``
    by ``panel_inches * len(panels)`` inches at ``dpi``; the format follows the extension.
    """
    plt = pyplot()
    ks = [r["k"] for r in panels[0].rows]  # the columns, in the order asked for
    samples = panels[0].rows[0]["samples"]
    nrows, ncols = len(panels), 3 + len(ks)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_inches * ncols, panel_inches * nrows), dpi=dpi, squeeze=False)
    for b, (panel, row) in enumerate(zip(panels, axes)):
        row[0].imshow(_image(x[b], image_shape), cmap="gray_r", vmin=0, vmax=1)
        row[0].set_title(f"input {b}", fontsize=8)
        row[0].set_xticks([])
        row[0].set_yticks([])
        g = panel.grid.double().cpu().numpy()
        cx, cy = panel.centre.double().tolist()
        h = (g[1] - g[0]) / 2
        box = [g[0] - h + cx, g[-1] + h + cx, g[0] - h + cy, g[-1] + h + cy]
        p = panel.p.cpu().numpy()
        by_k = {r["k"]: r for r in panel.rows}
        maps = [
            (f"true p(z|x)\nTV floor {panel.rows[0]['tv_floor']:.3f}", p, False),
            (f"q(z|x)\nTV {panel.rows[0]['tv_q']:.3f}", panel.q.cpu().numpy(), True),
        ]
        maps += [(f"q_EW k={k}\nTV {by_k[k]['tv_qew']:.3f}", panel.qew[k].cpu().numpy(), True) for k in ks]
        for ax, (title, mass, contour) in zip(row[1:], maps):
            ax.imshow(mass.T, origin="lower", extent=box, cmap="viridis", interpolation="nearest", aspect="equal")
            if contour and p.max() > 0:
                ax.contour(g + cx, g + cy, p.T, levels=[0.1 * p.max(), 0.5 * p.max()], colors="white", linewidths=0.6)
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
        row[1].set_ylabel("z_2", fontsize=7)
    for ax in axes[-1][1:]:
        ax.set_xlabel("z_1", fontsize=7)
    fig.suptitle(
        f"q_EW(z|x) approaches p(z|x) as k grows ({samples:,} draws each; white: contours of p; "
        f"TV floor: TV of {samples:,} draws from p itself)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
