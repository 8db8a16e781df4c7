"""What every figure module shares: the Agg backend, saving by extension, image tiling.

Figure sizes are fixed in inches at ``dpi`` (100 by default) and saved without tight cropping, so a
PNG's pixel size is known in advance; each figure function's docstring gives it.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..errors import WriteError

FORMATS = ("png", "svg", "pdf")
DPI = 100
PANEL_COLUMNS = 3  # figures of several runs wrap after this many panels, so that each stays readable
TITLE_CHARS = 46  # a panel title's line length at fontsize 10 in a 5-inch panel: wrapped beyond it


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), imported on first use."""
    # deferred: matplotlib is slow to import, and only the code that draws needs it
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # deferred too, and after the backend is chosen

    return plt


def save(fig, path: str | os.PathLike) -> Path:
    """Writes ``fig`` in the format of ``path``'s extension (``.png`` appended when there is none),
    atomically (:func:`iwae.checkpoint.atomic_write`): a folder that cannot be written is a
    :class:`~iwae.errors.WriteError`, and a half-drawn figure never takes the file's name."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        path, fmt = path.with_suffix(".png"), "png"
    try:
        if fmt not in FORMATS:
            raise ValueError(
                f"unknown figure format .{fmt} of {path}; use one of {', '.join('.' + f for f in FORMATS)}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"could not create the folder {path.parent}: {e.strerror or e}") from e
        with atomic_write(path, "wb") as f:
            # no bbox_inches="tight": the pixel size must be figsize * dpi exactly
            fig.savefig(f, format=fmt, dpi=fig.dpi, metadata={"Software": "iwae"} if fmt == "png" else None)
    finally:
        pyplot().close(fig)
    return path


def image_shape_of(input_dim: int) -> tuple[int, int]:
    """(side, side) for a square number of pixels (MNIST, Omniglot: 28 x 28)."""
    side = math.isqrt(input_dim)
    if side * side != input_dim:
        raise ValueError(f"cannot draw inputs of {input_dim} pixels as square images")
    return side, side


def model_image_shape(model, image_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The shape to draw ``model``'s inputs in: ``image_shape`` if given, else the one its config
    records (non-square data, e.g. 28 x 20), else square (:func:`image_shape_of`)."""
    return image_shape or getattr(model.config, "image_shape", None) or image_shape_of(model.config.input_dim)


def _plane(image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of an (H, W) or one-channel (1, H, W) image shape."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise ValueError(f"cannot draw images of shape {shape} in grey levels; the figures draw (H, W) or (1, H, W)")
    return shape


def tile(
    images: torch.Tensor | np.ndarray, image_shape: tuple[int, ...], cols: int | None = None, pad: int = 1
) -> np.ndarray:
    """Images ``(N, H*W)`` in [0, 1] -> one ``(rows*(H+pad)+pad, cols*(W+pad)+pad)`` array, padded with 1 (white).

    Each row is read in C order as ``image_shape`` = (H, W) (or (1, H, W)): H rows of W pixels."""
    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    n = x.shape[0]
    h, w = _plane(image_shape)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = x[
            i
        ].reshape(h, w)
    return grid


def show(ax, grid: np.ndarray) -> None:
    """An image grid in grey (1 = black), no ticks."""
    ax.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def as_runs(models) -> dict:
    """``{title: model}`` from one model (title "") or a mapping."""
    return dict(models) if isinstance(models, Mapping) else {"": models}


def panel_grid(n: int, columns: int = PANEL_COLUMNS) -> tuple[int, int]:
    """``(rows, cols)`` of ``n`` panels wrapped after ``columns``: 2 -> (1, 2), 4 -> (2, 3), 6 -> (2, 3)."""
    cols = max(1, min(n, columns))
    return math.ceil(n / cols), cols


def wrap_title(text: str, width: int = TITLE_CHARS) -> str:
    """``text`` with each of its lines wrapped to ``width`` characters, so that the titles of panels side
    by side do not run into each other."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))
