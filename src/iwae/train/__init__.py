"""Training: the config, the learning-rate schedule and the loop (the run directory's files: :mod:`iwae.rundir`).

    from iwae.train import TrainConfig, train
    run_dir = train(TrainConfig(objective="iwae", k=5, epochs=10, out="runs/iwae-k5"))

follows Burda et al. (2016): Adam (beta1 0.9, beta2 0.999, eps 1e-4), minibatches of 20 with
gradients summed over the minibatch, dynamic binarization, and the ``paper`` schedule of 3^i epochs
at learning rate 1e-3 * 10^(-i/7) for i = 0..7 (3,280 epochs). ``epochs = N`` runs the first N
epochs of the schedule. Every epoch logs the training objective's bound, the validation L_k, wall
time and examples/s to ``metrics.csv`` and TensorBoard, and writes a checkpoint atomically (also
every ``checkpoint_every`` optimizer steps, if set), so ``train(..., resume=True)`` continues a run
killed at any moment; on CPU it ends with the same parameters, bit for bit, as the uninterrupted
run. A loss or gradient that turns nan or inf stops the run before the parameters change.

The package: :mod:`.schedule` (the learning rate and KL warm-up per epoch), :mod:`.resume` (the
config a run resumes with, and where it resumes from), :mod:`.loop` (the loop itself). The config,
:class:`~iwae.config.TrainConfig`, loads no PyTorch and lives in :mod:`iwae.config`.
"""

from ..choices import SCHEDULES
from ..config.train import RESUMABLE, TrainConfig, configure
from .loop import build_model, load, train, train_or_resume, validation_bound
from .resume import resume_config, resume_point
from .schedule import kl_weight, learning_rate, paper_schedule

__all__ = [
    "TrainConfig",
    "train",
    "train_or_resume",
    "paper_schedule",
    "learning_rate",
    "kl_weight",
    "load",
    "build_model",
    "SCHEDULES",
    "RESUMABLE",
    "configure",
    "resume_config",
    "resume_point",
    "validation_bound",
]
