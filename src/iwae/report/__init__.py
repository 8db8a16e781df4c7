"""Deprecated: ``iwae.report`` moved to :mod:`iwae.experiments.report`; import it from there.

This shim is a package (not ``report.py``) so that git sees ``report.py`` renamed to
``experiments/report.py``. Importing it warns once and makes ``iwae.report`` the very module
``iwae.experiments.report`` (private names and monkeypatching included).
"""

import sys
import warnings

from ..experiments import report as _module

warnings.warn("iwae.report is deprecated: import iwae.experiments.report", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
