"""How far a run trained as a member of one batched model ends from the same run trained alone.

    python benchmarks/batched_vs_alone.py --data-dir ../shared/data --out runs/bva --steps 200 --threads 1

Trains seeds 0 and 1 of Burda et al.'s 1-layer MNIST model with IWAE (k = 5, batch 20, dynamic
binarization, the first ``20 * steps_per_epoch`` training images) twice: as one batched model
(:func:`iwae.members.train_members`) and each alone (:func:`iwae.train.train`), for ``--steps``
optimizer steps, then prints per seed: the largest |batched - alone| over all weights, relative to
the largest |weight| of its tensor, and the validation bound L_k of each (metrics.csv, last epoch).
The two start from the same weights and draw the same noise; they differ only in how the batched
products round, which Adam and training amplify. The numbers are not a property of the model but of
float rounding: they vary with the seed, the step count and the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from iwae.checkpoint import load_tensors
from iwae.members import train_members
from iwae.train import TrainConfig, train


def _valid(run: Path) -> float:
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    key = next(k for k in rows[-1] if k.startswith("valid_L"))
    return float(rows[-1][key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (4 epochs of steps/4 batches)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    epochs = 4
    subset = 20 * args.steps // epochs

    def config(seed: int, where: str) -> TrainConfig:
        return TrainConfig(
            objective="iwae", k=5, batch_size=20, epochs=epochs, train_subset=subset, seed=seed,
            data_dir=args.data_dir, threads=args.threads, out=str(Path(args.out) / where / f"seed{seed}"),
        )  # fmt: skip

    seeds = (0, 1)
    train_members([config(s, "batched") for s in seeds], overwrite=True, progress=False)
    for s in seeds:
        train(config(s, "alone"), overwrite=True, progress=False)
    report = []
    for s in seeds:
        a = load_tensors(Path(args.out) / "alone" / f"seed{s}" / "model.safetensors")[0]
        b = load_tensors(Path(args.out) / "batched" / f"seed{s}" / "model.safetensors")[0]
        rel = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)
        absolute = max((a[k] - b[k]).abs().max().item() for k in a)
        va, vb = _valid(Path(args.out) / "alone" / f"seed{s}"), _valid(Path(args.out) / "batched" / f"seed{s}")
        report.append(
            {"seed": s, "steps": args.steps, "max_abs_weight_diff": absolute, "max_rel_weight_diff": rel,
             "valid_alone": va, "valid_batched": vb, "valid_diff": vb - va}
        )  # fmt: skip
    print(json.dumps({"torch": torch.__version__, "runs": report}, indent=1))


if __name__ == "__main__":
    main()
