"""How the AIS estimate of log p(x) moves with the number of annealing steps T, and what it costs.

    python benchmarks/ais_steps.py RUN_DIR --images 50 --steps 100,300,1000,3000 --chains 16 --leapfrog 10

On the first N test images of the run's dataset: AIS (iwae.ais.ais_log_likelihood) for each T with C
and L fixed, then L_5000 (iwae.evaluate.log_likelihood) on the same images; prints the mean log p-hat,
its change from the previous T, the mean per-image s.e. and ESS, the acceptance rate, images/s, and
the paired difference AIS - L_5000 with its standard error. One thread unless --threads.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from iwae.ais import ais_cost, ais_log_likelihood
from iwae.evaluate import log_likelihood, paired_difference
from iwae.rundir import open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--steps", default="100,300,1000,3000")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--initial", default="encoder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = open_run(args.run_dir, data_dir=args.data_dir)
    model, splits = run.model, run.splits
    x = splits.test[: args.images]
    t0 = time.perf_counter()
    l_k = log_likelihood(model, x, 5000, generator=torch.Generator().manual_seed(0))
    lk_seconds = time.perf_counter() - t0
    print(f"L_5000: mean {l_k.mean().item():.3f} on {len(x)} images, {len(x) / lk_seconds:.2f} images/s")
    rows = []
    previous = None
    for steps in [int(s) for s in args.steps.split(",")]:
        cost = ais_cost(model, x, steps=steps, chains=args.chains, leapfrog=args.leapfrog)
        result = ais_log_likelihood(
            model,
            x,
            steps=steps,
            chains=args.chains,
            leapfrog=args.leapfrog,
            initial=args.initial,
            generator=torch.Generator().manual_seed(1),
        )
        s = result.summary()
        diff, diff_se = paired_difference(result.log_likelihood.numpy(), l_k.double().numpy())
        mean = -s["nll"]
        row = {
            "steps": steps,
            "mean_log_p": mean,
            "change": None if previous is None else mean - previous,
            "mean_chain_stderr": s["mean_chain_stderr"],
            "mean_ess": s["mean_ess"],
            "acceptance": s["acceptance"],
            "images_per_s": s["images_per_s"],
            "predicted_seconds": cost["seconds"],
            "seconds": s["seconds"],
            "ais_minus_l5000": diff,
            "ais_minus_l5000_stderr": diff_se,
            "l5000_images_per_s": len(x) / lk_seconds,
        }
        rows.append(row)
        previous = mean
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
