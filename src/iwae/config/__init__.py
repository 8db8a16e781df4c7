"""What a run is, as plain data that loads no PyTorch: :class:`TrainConfig` (a training run),
:class:`ModelConfig` (a model's sizes and parts), :class:`ObjectiveSpec` (an objective, its samples
and estimator) and the points of the (M, K) grid. The names each setting may take are in
:mod:`iwae.choices`.

The command line builds ``iwae train``'s options from TrainConfig's fields, so ``iwae train --help``
imports this package and nothing heavier; the code that trains (:mod:`iwae.train`), builds models
(:mod:`iwae.models`) and reads run folders (:mod:`iwae.rundir`) takes these configs.
"""

from .grid import GridPoint, Run, canonical_run, distinct_runs, grid_points, points_of
from .model import ModelConfig
from .objective import ObjectiveSpec
from .train import MAX_SEED, MAX_SIZE, PAPER_STAGES, RESUMABLE, TrainConfig, configure

__all__ = [
    "TrainConfig",
    "ModelConfig",
    "ObjectiveSpec",
    "configure",
    "RESUMABLE",
    "PAPER_STAGES",
    "MAX_SIZE",
    "MAX_SEED",
    "GridPoint",
    "Run",
    "canonical_run",
    "distinct_runs",
    "grid_points",
    "points_of",
]
