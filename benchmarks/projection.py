"""Projected wall time of Burda et al.'s protocol from measured rates (benchmarks/gpu_check.sh prints it).

    python benchmarks/bench.py --variants --layers 1,2 --ks 1,5,50 --batches 20 --json rates.json
    python benchmarks/projection.py rates.json

The rates are those of ``bench.py --variants`` (``--cli`` adds ``iwae train``'s own rate, eager and
``--compile step``: the numbers a user's runs take; ``fp32`` and ``compiled-step`` are the bare steps;
``jax`` the JAX peer, whose L_5000 rate is iwae's here).

One run of the paper's protocol is 3,280 epochs of ceil(59,600 / 20) = 2,980 steps: 9,774,400
steps, then L_5000 on the 10,000 test images. Table 1's MNIST half is 10 runs: 1 and 2 stochastic
layers x VAE k = 1, 5, 50 and IWAE k = 5, 50 (at k = 1 the VAE and the IWAE are one algorithm,
trained once; iwae/experiments/table1.yaml). A run's time is steps / (its steps/s at its layers and
k, for each implementation measured) + 10,000 / (L_5000 images/s); the per-epoch validation bound
(400 images, under 1% of an epoch's decoder rows at every k) and checkpoints are left out. The IWAE
and VAE steps cost the same (the objective is a logsumexp over k, the rest is shared). Runs run
one after another on one device.
"""

from __future__ import annotations

import argparse
import json
import math

EPOCHS = 3280  # sum of 3^i, i = 0..7
TRAIN_IMAGES = 59_600  # 60,000 minus the 400 held out for validation
BATCH = 20
TEST_IMAGES = 10_000
# Table 1, MNIST: (layers, k) of each distinct run, VAE k = 1, 5, 50 and IWAE k = 5, 50 per layer count
TABLE1_MNIST = [(layers, k) for layers in (1, 2) for k in (1, 5, 5, 50, 50)]


def steps_per_run(epochs: int = EPOCHS, images: int = TRAIN_IMAGES, batch: int = BATCH) -> int:
    """Optimizer steps of one run: epochs * ceil(images / batch)."""
    return epochs * math.ceil(images / batch)


def run_hours(steps_per_s: float, images_per_s: float | None, steps: int | None = None) -> float:
    """Hours of one run: training at ``steps_per_s``, then L_5000 on the test set at ``images_per_s``."""
    seconds = (steps or steps_per_run()) / steps_per_s
    if images_per_s:
        seconds += TEST_IMAGES / images_per_s
    return seconds / 3600


def _rate(rates: dict, variant: str, layers: int, k: int) -> float | None:
    key = f"train:{variant}:{BATCH}:{k}" + (f":{layers}" if layers != 1 else "")
    value = rates.get(key)
    return value if isinstance(value, (int, float)) else None


def table(rates: dict) -> str:
    """The markdown table: hours per run for each (layers, k, implementation) measured, and Table 1's MNIST half."""
    order = ("cli-eager", "cli-step", "fp32", "compiled-step", "bf16-mixed", "compiled", "jax")
    variants = sorted(
        {key.split(":")[1] for key in rates if key.startswith("train:")} - {"pythae"},
        key=lambda v: order.index(v) if v in order else len(order),
    )
    images_per_s = rates.get("eval:iwae") if isinstance(rates.get("eval:iwae"), (int, float)) else None
    lines = [
        f"paper protocol: {EPOCHS} epochs x ceil({TRAIN_IMAGES} / {BATCH}) = {steps_per_run():,} steps per run, "
        f"then L_5000 on {TEST_IMAGES:,} test images "
        + (f"at {images_per_s:.1f} images/s" if images_per_s else "(not measured: left out)"),
        "",
        "| layers | k | " + " | ".join(f"{v}: steps/s, hours per run" for v in variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for layers in (1, 2):
        for k in (1, 5, 50):
            cells = []
            for v in variants:
                r = _rate(rates, v, layers, k)
                cells.append(f"{r:.0f}, {run_hours(r, images_per_s):.1f} h" if r else "not measured")
            lines.append(f"| {layers} | {k} | " + " | ".join(cells) + " |")
    totals = []
    for v in variants:
        hours = [
            run_hours(r, images_per_s) if (r := _rate(rates, v, layers, k)) else None for layers, k in TABLE1_MNIST
        ]
        totals.append(f"{sum(hours):.0f} h ({sum(hours) / 24:.1f} days)" if None not in hours else "not measured")
    lines.append(
        f"| Table 1, MNIST half ({len(TABLE1_MNIST)} runs, one after another) | | " + " | ".join(totals) + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rates", nargs="+", help="JSON files of bench.py --variants --json (later files win)")
    args = parser.parse_args()
    rates: dict = {}
    for path in args.rates:
        with open(path) as f:
            rates.update(json.load(f))
    print(table(rates))


if __name__ == "__main__":
    main()
