"""Deprecated: the figures moved to :mod:`iwae.figures`, their computations to :mod:`iwae.analysis`.

This module re-exports the old names so that ``from iwae.plots import plot_samples`` keeps working;
import them from ``iwae.figures`` (figures) or ``iwae.analysis`` (``sample_images``, ``toy_bias``).
"""

from __future__ import annotations

import warnings

from .analysis import LATENT_SAMPLES, _sample_prior, sample_images, toy_bias
from .analysis import posterior_means as _posterior_means
from .figures import (DPI, FORMATS, TOY_KS, TOY_SETTINGS, image_shape_of, plot_activity, plot_curves, plot_latent,
                      plot_pseudo_inputs, plot_reconstructions, plot_samples, plot_toy)
from .figures._base import save as _save
from .rundir import read_metrics

warnings.warn("iwae.plots is deprecated: import the figures from iwae.figures, and sample_images and "
              "toy_bias from iwae.analysis", DeprecationWarning, stacklevel=2)

__all__ = [
    "sample_images", "toy_bias", "plot_samples", "plot_pseudo_inputs", "plot_reconstructions",
    "plot_latent", "plot_activity", "plot_curves", "plot_toy", "read_metrics", "FORMATS",
]
