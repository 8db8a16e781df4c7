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
"""

from . import ais, analysis, compare, data, estimators, evaluate, experiments, figures, grid, models, objectives, qew, snr, train
from .experiments import published
from .data import load_dataset
from .errors import ConfigError
from .estimators import ObjectiveSpec
from .evaluate import active_units, log_likelihood
from .models import LIKELIHOODS, VAE, Likelihood, ModelConfig, bits_per_dim, make_likelihood
from . import checkpoint
from .train import TrainConfig, load
from . import rundir
from .rundir import open_run

__all__ = [
    "ais", "analysis", "compare", "data", "estimators", "evaluate", "experiments", "figures", "grid", "models",
    "objectives", "published",
    "qew", "snr", "train",
    "load_dataset", "ObjectiveSpec", "VAE", "ModelConfig", "TrainConfig", "load",
    "log_likelihood", "active_units", "ConfigError",
    "rundir", "open_run",
    "LIKELIHOODS", "Likelihood", "make_likelihood", "bits_per_dim", "checkpoint",
]
__version__ = "0.1.0"

