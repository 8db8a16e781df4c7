"""iwae: importance weighted autoencoders in PyTorch.

Train VAE, IWAE, MIWAE, CIWAE and PIWAE models as in Burda et al. (2016) and Rainforth et al.
(2018), and measure their test log-likelihood by L_5000.

    import iwae
    from iwae.train import TrainConfig, train
    from iwae.evaluate import evaluate

    run_dir = train(TrainConfig(objective="iwae", k=5, epochs=3, out="runs/demo"))
    model = iwae.load(run_dir)
    print(evaluate(run_dir, k=5000)["nll"])

The modules ``iwae.train`` and ``iwae.evaluate`` keep their names (the functions of the same
names live inside them), so ``iwae.train.TrainConfig`` works as one expects.

The names below are the public API. Each is imported when first used (PEP 562), so that
``import iwae`` and the command line's ``--help`` do not load PyTorch until something needs it;
``iwae.VAE`` and ``from iwae import VAE`` work as if imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    # the subpackages and modules users reach as iwae.NAME
    "ais",
    "analysis",
    "checkpoint",
    "choices",
    "compare",
    "config",
    "data",
    "errors",
    "estimators",
    "evaluate",
    "experiments",
    "figures",
    "grid",
    "groups",
    "members",
    "memory",
    "models",
    "objectives",
    "qew",
    "run_figures",
    "rundir",
    "snr",
    "train",
    # and the names most scripts need
    "load_dataset",
    "ObjectiveSpec",
    "ModelConfig",
    "TrainConfig",
    "ConfigError",
    "VAE",
    "HVAE",
    "make_model",
    "LIKELIHOODS",
    "Likelihood",
    "make_likelihood",
    "bits_per_dim",
    "log_likelihood",
    "active_units",
    "load",
    "open_run",
]
# name -> the module that defines it (the other names of __all__ are modules of the package)
_NAMES = {
    "load_dataset": "iwae.data",
    "ObjectiveSpec": "iwae.config",
    "ModelConfig": "iwae.config",
    "TrainConfig": "iwae.config",
    "ConfigError": "iwae.errors",
    "VAE": "iwae.models",
    "HVAE": "iwae.models",
    "make_model": "iwae.models",
    "LIKELIHOODS": "iwae.models",
    "Likelihood": "iwae.models",
    "make_likelihood": "iwae.models",
    "bits_per_dim": "iwae.models",
    "log_likelihood": "iwae.evaluate",
    "active_units": "iwae.evaluate",
    "load": "iwae.train",
    "open_run": "iwae.rundir",
}

if TYPE_CHECKING:  # what a type checker and an editor see; at run time __getattr__ imports on first use
    from . import (
        ais,
        analysis,
        checkpoint,
        choices,
        compare,
        config,
        data,
        errors,
        estimators,
        evaluate,
        experiments,
        figures,
        grid,
        groups,
        members,
        memory,
        models,
        objectives,
        qew,
        run_figures,
        rundir,
        snr,
        train,
    )
    from .config import ModelConfig, ObjectiveSpec, TrainConfig
    from .data import load_dataset
    from .errors import ConfigError
    from .evaluate import active_units, log_likelihood
    from .models import HVAE, LIKELIHOODS, VAE, Likelihood, bits_per_dim, make_likelihood, make_model
    from .rundir import open_run
    from .train import load


def __getattr__(name: str) -> object:
    """``iwae.NAME`` for a name of ``__all__``, imported on first use and then kept in this module."""
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in __all__:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
