"""AIS on a run directory: the test NLL of its trained model, saved beside evaluate's files."""

from __future__ import annotations

import torch

from .annealing import DEFAULT_CHAINS, DEFAULT_LEAPFROG, DEFAULT_STEPS, schedule_betas
from .likelihood import ais_log_likelihood

__all__ = ["ais_eval_name", "ais_evaluate"]


def ais_eval_name(steps: int, chains: int, leapfrog: int, seed: int, test_subset: int | None = None) -> str:
    """File stem of an AIS evaluation in a run directory, beside evaluate's ``eval_k...`` files:
    ``ais_T{T}_C{C}_L{L}[_n{N}]_seed{S}`` (the JSON and the per-image ``.npy`` share it)."""
    return f"ais_T{steps}_C{chains}_L{leapfrog}" + (f"_n{test_subset}" if test_subset is not None else "") + \
        f"_seed{seed}"


def ais_evaluate(
    run_dir,
    *,
    steps: int = DEFAULT_STEPS,
    chains: int = DEFAULT_CHAINS,
    leapfrog: int = DEFAULT_LEAPFROG,
    schedule: str = "sigmoid",
    initial: str = "encoder",
    test_subset: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    memory_budget: int | None = None,
    data_dir: str | None = None,
    progress: bool = False,
    save: bool = True,
) -> dict:
    """Test NLL of a run by AIS, as :func:`iwae.evaluate.evaluate` by L_k (the same keys where they apply).

    Measures the weights of the run's last completed epoch on the first ``test_subset`` test images
    and, with ``save``, writes ``RUN_DIR/{ais_eval_name(...)}.json`` and the per-image log p-hat to
    the ``.npy`` beside it (float64, test-set order; the ``.npy`` first, both atomically), so that
    :func:`iwae.compare.compare_runs` can pair them (``evaluation=`` that stem).
    """
    import json
    from pathlib import Path

    import numpy as np

    from .. import data as data_module
    from ..checkpoint import atomic_write
    from ..errors import ConfigError
    from ..evaluate import load_trained
    from ..runtime import check_device, describe
    from ..train import TrainConfig

    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", [name])
    if test_subset is not None and test_subset < 1:
        raise ConfigError(f"test_subset must be >= 1, got {test_subset}", ["test_subset"])
    schedule_betas(steps, schedule)
    if initial not in ("encoder", "prior"):
        raise ConfigError(f"unknown initial distribution {initial!r}; choose encoder or prior", ["initial"])
    check_device(device)
    model, weights = load_trained(run_dir, device)
    config = TrainConfig.from_yaml(Path(run_dir) / "config.yaml")
    splits = data_module.load_dataset(config.dataset, data_dir or config.data_dir)
    dev = next(model.parameters()).device
    x = splits.first("test", test_subset, "test_subset").to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    result = ais_log_likelihood(model, x, steps=steps, chains=chains, leapfrog=leapfrog, schedule=schedule,
                                initial=initial, memory_budget=memory_budget, generator=generator, progress=progress)
    name = ais_eval_name(steps, chains, leapfrog, seed, test_subset)
    out = {**result.summary(), "seed": seed,
           "test_images": {"dataset": splits.name, "split": "test", "first": len(x), "of": splits.test.shape[0]},
           "model": {**weights, "run_dir": str(run_dir), "epochs_planned": config.total_epochs},
           "runtime": describe(dev), "files": {"json": f"{name}.json", "bounds": f"{name}.npy"} if save else None}
    if save:
        with atomic_write(Path(run_dir) / f"{name}.npy", "wb") as f:
            np.save(f, result.log_likelihood.numpy())
        with atomic_write(Path(run_dir) / f"{name}.json") as f:
            json.dump(out, f, indent=1)
    return out
