"""Deprecated: the q_EW figure moved to :mod:`iwae.figures` (``qew_figure``, ``plot_qew``) and its
computation to :mod:`iwae.qew` (``qew_report``, ``qew_panels``, ``check_model``).

This module re-exports the old names so that ``from iwae.posterior_figure import qew_figure`` keeps working.
"""

from __future__ import annotations

import warnings

from .figures import qew_figure
from .qew import KL_SMOOTHING, check_model, qew_report

warnings.warn("iwae.posterior_figure is deprecated: import qew_figure from iwae.figures, and qew_report and "
              "check_model from iwae.qew", DeprecationWarning, stacklevel=2)

__all__ = ["qew_report", "qew_figure", "check_model", "KL_SMOOTHING"]
