"""Deprecated: ``iwae.experiment`` moved to :mod:`iwae.experiments.spec`; import it from there.

This shim is a package (not ``experiment.py``) so that git sees ``experiment.py`` renamed to
``experiments/spec.py``. Importing it warns once and makes ``iwae.experiment`` the very module
``iwae.experiments.spec`` (private names and monkeypatching included).
"""

import sys
import warnings

from ..experiments import spec as _module

warnings.warn("iwae.experiment is deprecated: import iwae.experiments.spec", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
