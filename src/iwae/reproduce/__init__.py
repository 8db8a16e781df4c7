"""Deprecated: ``iwae.reproduce`` moved to :mod:`iwae.experiments.engine`; import it from there.

This shim is a package (not ``reproduce.py``) so that git sees ``reproduce.py`` renamed to
``experiments/engine.py``. Importing it warns once and makes ``iwae.reproduce`` the very module
``iwae.experiments.engine`` (private names and monkeypatching included).
"""

import sys
import warnings

from ..experiments import engine as _module

warnings.warn("iwae.reproduce is deprecated: import iwae.experiments.engine", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
