"""iwae: importance weighted autoencoders in PyTorch.

Train VAE, IWAE, MIWAE, CIWAE and PIWAE models as in Burda et al. (2016) and Rainforth et al.
(2018), and measure their test log-likelihood by L_5000.

    import iwae
    run_dir = iwae.train(iwae.TrainConfig(objective="iwae", k=5, epochs=3, out="runs/demo"))
    model = iwae.load(run_dir)
    print(iwae.evaluate(run_dir, k=5000)["nll"])
"""

from . import data, objectives
from .data import load_dataset
from .estimators import ObjectiveSpec
from .evaluate import active_units, evaluate, log_likelihood
from .models import VAE, ModelConfig
from .train import TrainConfig, load, train

__all__ = [
    "data", "objectives", "load_dataset", "ObjectiveSpec", "VAE", "ModelConfig",
    "TrainConfig", "train", "load", "evaluate", "log_likelihood", "active_units",
]
__version__ = "0.1.0"
