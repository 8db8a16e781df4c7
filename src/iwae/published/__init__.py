"""Deprecated: ``iwae.published`` moved to :mod:`iwae.experiments.published`; import it from there.

This shim is a package (not ``published.py``) so that git sees ``published.py`` renamed to
``experiments/published.py``. Importing it warns once and makes ``iwae.published`` the very module
``iwae.experiments.published`` (private names and monkeypatching included).
"""

import sys
import warnings

from ..experiments import published as _module

warnings.warn("iwae.published is deprecated: import iwae.experiments.published", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
