"""BDMC on images simulated from a trained run: the sandwich of log p(x) against the AIS steps T.

    python benchmarks/ais_bdmc.py RUN_DIR --images 10 --steps 10,100,1000 --chains 4 --leapfrog 5 --plot bdmc.png

Prints one JSON row per T (iwae.ais.bdmc): the forward (lower) and reverse (upper) AIS bounds, their
gap, the acceptance rates and the seconds. One thread unless --threads.
"""

from __future__ import annotations

import argparse
import json

import torch

from iwae.ais import bdmc
from iwae.figures import plot_bdmc
from iwae.rundir import open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", default="10,100,1000")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--initial", default="encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="write the sandwich figure here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = open_run(args.run_dir).model
    rows = bdmc(
        model,
        args.images,
        steps_list=[int(s) for s in args.steps.split(",")],
        chains=args.chains,
        leapfrog=args.leapfrog,
        initial=args.initial,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for row in rows:
        print(json.dumps(row))
    if args.plot:
        plot_bdmc(rows, args.plot)


if __name__ == "__main__":
    main()
