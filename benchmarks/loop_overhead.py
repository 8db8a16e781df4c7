"""What iwae train's loop adds around the training step at B = 20 (issue 24: about 0.6 ms per step), and
what is left of it with the whole-step compiled program (iwae.compiled.step).

    python benchmarks/loop_overhead.py pieces    # each piece of the loop's step body, timed alone
    python benchmarks/loop_overhead.py loop      # the step body as iwae.train runs it, eager and compiled
    python benchmarks/loop_overhead.py cli       # iwae train's own epoch rate (metrics.csv) against the bare step

Burda et al.'s 1-layer model, IWAE, batch ``--batch`` (20), k ``--k`` (1), ``--threads`` torch threads (1),
``--images`` training images (3,000). Timings alternate between the variants in rounds (median over
``--rounds``), so that the machine's load hits them alike; each table says the load average.

``pieces`` times, per step: the minibatch's indexing (``x_train[order[i:i+B]]``), its dynamic
binarization (``torch.bernoulli``, iwae.data.binarize) and, for comparison, a binarization by
uniforms (``torch.rand(...) < x``, a different random stream), ``zero_grad``, the eager forward and
backward (``accumulate_gradients``), the per-step non-finite check (iwae.train's float32 sums of all
gradients), fused Adam, the bound's running sum, and the compiled step.

``loop`` runs the loop's step body as iwae.train does (index, binarize, step, non-finite check, running
sum, tqdm) with the eager step and with the compiled one, beside the bare steps on a resident minibatch.

``cli`` trains ``iwae train`` for two epochs of ``--images`` MNIST images (``--data-dir``, default
../shared/data) and reads the second epoch's examples/s from metrics.csv, alternating with a bare eager
step in its own process.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import iwae.data as data_module
import iwae.train.loop as train_module
from iwae.compiled.step import CompiledStep
from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.models import VAE, ModelConfig
from iwae.runtime import tune_allocator

ROOT = Path(__file__).resolve().parents[1]


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def _alternate(fns: dict, rounds: int, seconds: float = 0.2) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn over ``rounds`` rounds."""
    for fn in fns.values():
        for _ in range(10):
            fn()
    blocks = {name: max(5, int(seconds / max(1e-7, _time(fn, 5)))) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_time(fn, blocks[name]))
    return {name: statistics.median(t) for name, t in times.items()}


class _Setup:
    """A model, its Adam, a generator, grey-level training data and its epoch order, as iwae.train holds them."""

    def __init__(self, args: argparse.Namespace):
        torch.manual_seed(0)
        self.model = VAE(ModelConfig.burda(1))
        config = train_module.TrainConfig(k=args.k, batch_size=args.batch, out="unused")
        self.optimizer = train_module._make_optimizer(config, self.model, torch.device("cpu"))
        self.params = list(self.model.parameters())
        self.generator = torch.Generator().manual_seed(0)
        self.spec = ObjectiveSpec("iwae", args.k)
        self.x_train = torch.rand(args.images, 784, generator=torch.Generator().manual_seed(1))
        self.order = torch.randperm(args.images, generator=self.generator)
        self.batch = args.batch
        self.x = data_module.binarize(self.x_train[: args.batch], self.generator)
        self.position = 0

    def minibatch(self) -> torch.Tensor:
        i = self.next_index()
        return self.x_train[self.order[i : i + self.batch]]

    def next_index(self) -> int:
        i = self.position
        self.position = (i + self.batch) % (self.x_train.shape[0] - self.batch)
        return i


def pieces(args: argparse.Namespace) -> None:
    s = _Setup(args)
    compiled = _Setup(args)
    step = CompiledStep(compiled.model, compiled.optimizer, compiled.spec, args.batch)
    s.optimizer.zero_grad()
    bound = accumulate_gradients(s.model, s.x, s.spec, s.generator)
    bound_sum = torch.zeros(())

    def running_sum():
        nonlocal bound_sum
        bound_sum += bound.sum()

    fns = {
        "index x_train[order[i:i+B]]": lambda: s.minibatch(),
        "binarize (torch.bernoulli)": lambda: data_module.binarize(s.x, s.generator),
        "binarize by uniforms (rand < x)": lambda: (torch.rand(s.x.shape, generator=s.generator) < s.x).float(),
        "zero_grad": lambda: s.optimizer.zero_grad(set_to_none=False),
        "forward + backward (accumulate_gradients)": lambda: accumulate_gradients(s.model, s.x, s.spec, s.generator),
        "non-finite check (train._nonfinite_now)": lambda: train_module._nonfinite_now(bound, s.params),
        "fused Adam step": lambda: s.optimizer.step(),
        "bound_sum += bound.sum()": running_sum,
        "compiled step (all of the step)": lambda: step(compiled.x, compiled.generator),
    }
    rates = _alternate(fns, args.rounds)
    print(
        f"\nPieces of iwae.train's step body, B = {args.batch}, k = {args.k}: median of {args.rounds} alternating "
        f"rounds; {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| piece | us per step |")
    print("|---|---|")
    for name, t in rates.items():
        print(f"| {name} | {t * 1e6:.1f} |")


def _loop_body(s: _Setup, step: CompiledStep | None, uniform: bool = False):
    """iwae.train's per-step body (index, binarize, the step and its non-finite check, the running sum,
    the step counter, tqdm's iteration) for one minibatch; with ``step`` the compiled step in its place."""
    from tqdm.auto import tqdm

    state = {"bound_sum": torch.zeros(()), "step": 0}
    bar = iter(tqdm(range(10**12), disable=True))

    def body():
        next(bar)
        i = s.next_index()
        x = s.x_train[s.order[i : i + s.batch]]
        x = (
            (torch.rand(x.shape, generator=s.generator) < x).float()
            if uniform
            else data_module.binarize(x, s.generator)
        )
        if step is None:
            s.optimizer.zero_grad(set_to_none=True)
            bound = accumulate_gradients(s.model, x, s.spec, s.generator)
            if train_module._nonfinite_now(bound, s.params):
                raise FloatingPointError("nan")
            s.optimizer.step()
        else:
            bound, finite = step(x, s.generator)
            if not bool(finite):
                raise FloatingPointError("nan")
        state["bound_sum"] += bound.sum()
        state["step"] += 1
        _ = state["step"] % 50 == 0

    return body


def loop(args: argparse.Namespace) -> None:
    setups = {
        name: _Setup(args)
        for name in (
            "bare eager",
            "loop eager",
            "bare compiled",
            "loop compiled",
            "loop compiled, uniform binarization",
        )
    }
    steps = {
        name: CompiledStep(s.model, s.optimizer, s.spec, args.batch) for name, s in setups.items() if "compiled" in name
    }

    def bare_eager():
        s = setups["bare eager"]
        s.optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(s.model, s.x, s.spec, s.generator)
        s.optimizer.step()

    fns = {
        "bare eager": bare_eager,
        "loop eager": _loop_body(setups["loop eager"], None),
        "bare compiled": lambda: steps["bare compiled"](setups["bare compiled"].x, setups["bare compiled"].generator),
        "loop compiled": _loop_body(setups["loop compiled"], steps["loop compiled"]),
        "loop compiled, uniform binarization": _loop_body(
            setups["loop compiled, uniform binarization"], steps["loop compiled, uniform binarization"], uniform=True
        ),
    }
    t = _alternate(fns, args.rounds, seconds=0.3)
    print(
        f"\niwae.train's step body, B = {args.batch}, k = {args.k}: median of {args.rounds} alternating rounds; "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| variant | steps/s | ms per step | loop's addition, ms |")
    print("|---|---|---|---|")
    for name, seconds in t.items():
        bare = t["bare compiled" if "compiled" in name else "bare eager"]
        extra = f"{(seconds - bare) * 1e3:.3f}" if name.startswith("loop") else ""
        print(f"| {name} | {1 / seconds:.0f} | {seconds * 1e3:.3f} | {extra} |")


def cli(args: argparse.Namespace) -> None:
    """iwae train's second-epoch steps/s from its metrics.csv against the bare eager step, each in its own
    process, alternating over ``--rounds`` rounds."""
    data_dir = Path(args.data_dir or ROOT.parent / "shared" / "data")
    rates = {"iwae train (metrics.csv)": [], "bare eager step": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from iwae.cli import main; main()",
                    "train",
                    "--dataset",
                    "mnist",
                    "--data-dir",
                    str(data_dir),
                    "--train-subset",
                    str(args.images),
                    "--k",
                    str(args.k),
                    "--batch-size",
                    str(args.batch),
                    "--epochs",
                    "2",
                    "--schedule",
                    "constant",
                    "--threads",
                    str(args.threads),
                    "--valid-k",
                    "1",
                    "--quiet",
                    "--out",
                    f"{out}/run",
                ],
                check=True,
                capture_output=True,
            )
            with open(f"{out}/run/metrics.csv") as f:
                rows = list(csv.DictReader(f))
            rates["iwae train (metrics.csv)"].append(float(rows[-1]["examples_per_s"]) / args.batch)
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "bench.py"),
                "--measure",
                f"train:fp32:{args.batch}:{args.k}",
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rates["bare eager step"].append(float(done.stdout.split("RATE ")[1].split()[0]))
    print(
        f"\niwae train against the bare step, B = {args.batch}, k = {args.k}, {args.images} MNIST images, "
        f"{args.threads} threads, {args.rounds} alternating rounds, median; load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| what | steps/s | ms per step |")
    print("|---|---|---|")
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        print(f"| {name} | {rate:.0f} | {1e3 / rate:.3f} |")
    extra = 1e3 / medians["iwae train (metrics.csv)"] - 1e3 / medians["bare eager step"]
    print(f"\nthe loop adds {extra:.3f} ms per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["pieces", "loop", "cli"])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--data-dir", default=None, help="cli: the folder holding mnist/ (default ../shared/data)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    {"pieces": pieces, "loop": loop, "cli": cli}[args.what](args)


if __name__ == "__main__":
    main()
