"""iwae train's own training rate: what a user gets from the command line, start-up and first-epoch costs cancelled.

    python benchmarks/train_rate.py --k 1 --batch 20                         # eager, steps/s
    python benchmarks/train_rate.py --k 1 --batch 20 --compile step          # the compiled step
    python benchmarks/train_rate.py --k 1 --seeds 0,1,2,3 --batch-members    # member-steps/s, stacked
    python benchmarks/train_rate.py --k 1 --seeds 0,1,2,3 --no-batch-members # member-steps/s, one after another

Runs ``iwae train`` (one epoch, the constant schedule, Burda et al.'s 1-layer model, IWAE(k), MNIST from
``--data-dir``) twice, on the first ``--small`` and the first ``--large`` training images, each in a
process of its own, and reads the epoch's time from each run's ``metrics.csv`` (``epoch_time_s`` =
images / ``examples_per_s``: the minibatch loop, without the validation bound and the checkpoint). The
rate is the difference of the two runs' steps over the difference of their epoch times: what the loop
does once per run (start-up, the first optimizer step's imports, compiling, the allocator's first
growth) cancels, and what is left is the loop's steady rate, every per-step cost of ``iwae train``
included (indexing, binarization, the step, its non-finite check, bookkeeping).

With ``--seeds`` the run is ``iwae train --seeds ...`` and the rate is in member-steps/s: the members'
steps over the time they took (a batched group's epoch time is the group's; members one after another
add theirs). benchmarks/bench.py ``--variants --cli`` runs this beside the bare steps and the peers.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"  # the shared data folder beside the checkout
SMALL, LARGE = 2000, 12000  # training images of the two runs (multiples of 20 and 100: no short minibatch)


def _epoch_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["epoch_time_s"])


def run_seconds(
    images: int,
    k: int,
    batch: int,
    *,
    compile: str = "none",
    threads: int | None = None,
    data_dir: str | os.PathLike = DEFAULT_DATA,
    seeds: list[int] | None = None,
    batch_members: bool | None = None,
    extra: tuple[str, ...] = (),
) -> float:
    """Seconds of the minibatch loop of one ``iwae train`` epoch on ``images`` images (summed over the
    members run one after another; a batched group's once)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-c", "from iwae.cli import main; main()", "train", "--dataset", "mnist"]
        cmd += ["--data-dir", str(data_dir), "--train-subset", str(images), "--objective", "iwae", "--k", str(k)]
        cmd += ["--batch-size", str(batch), "--epochs", "1", "--schedule", "constant", "--compile", compile]
        cmd += ["--quiet", "--out", str(out), *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        if seeds is not None:
            cmd += ["--seeds", ",".join(map(str, seeds))]
            if batch_members is not None:
                cmd += ["--batch" if batch_members else "--no-batch"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"iwae train failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        if seeds is None or len(seeds) == 1:
            return _epoch_seconds(out)
        times = [_epoch_seconds(out / f"seed{s}") for s in seeds]
        return max(times) if batch_members or (batch_members is None and _batched_by_default()) else sum(times)


def _batched_by_default() -> bool:
    from iwae.members import batch_by_default  # deferred: the measurements run in their own processes

    return batch_by_default("cpu")


def train_rate(
    k: int,
    batch: int,
    *,
    small: int = SMALL,
    large: int = LARGE,
    seeds: list[int] | None = None,
    **settings,
) -> float:
    """Steps/s (member-steps/s with ``seeds``) of ``iwae train``'s loop: the steps of a ``large``-image
    epoch less those of a ``small``-image one, over the difference of their epoch times."""
    t_small = run_seconds(small, k, batch, seeds=seeds, **settings)
    t_large = run_seconds(large, k, batch, seeds=seeds, **settings)
    members = len(seeds) if seeds else 1
    if t_large <= t_small:
        raise RuntimeError(
            f"the {large}-image epoch took no longer than the {small}-image one: the machine is too busy"
        )
    return members * (large - small) / batch / (t_large - t_small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--compile", default="none", help="iwae train --compile (default none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=os.environ.get("IWAE_DATA_DIR", str(DEFAULT_DATA)))
    parser.add_argument("--small", type=int, default=SMALL)
    parser.add_argument("--large", type=int, default=LARGE)
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2,3: iwae train --seeds (member-steps/s)")
    members = parser.add_mutually_exclusive_group()
    members.add_argument("--batch-members", dest="batch_members", action="store_true", default=None)
    members.add_argument("--no-batch-members", dest="batch_members", action="store_false")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    rate = train_rate(
        args.k,
        args.batch,
        small=args.small,
        large=args.large,
        seeds=seeds,
        compile=args.compile,
        threads=args.threads,
        data_dir=args.data_dir,
        batch_members=args.batch_members,
    )
    print(f"RATE {rate}")


if __name__ == "__main__":
    main()
