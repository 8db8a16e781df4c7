"""Member-steps/s of runs trained as one batched model (iwae.members) against single runs.

    python benchmarks/members.py --threads 2                  # 1, 4, 10 members x k = 1, 5, 50, batch 20
    python benchmarks/members.py --threads 2 --members 10 --ks 1 --seconds 5
    python benchmarks/members.py --threads 1 --rounds 3       # a busy machine: medians of alternating rounds
    python benchmarks/members.py --threads 2 --kernels        # also: the stacked MLP by bmm and by torch.func.vmap

Each measurement runs in a fresh process (so one cannot warm or fragment another's allocator), in
the order single, batched for each (members, k), and times the training step as the loops run it,
Burda et al.'s 1-layer MNIST model (784-200-200-50), IWAE, dynamic binarization:

- single: ``iwae.train.train``'s step: gather the batch, binarize, ``accumulate_gradients``, the
  nan/inf check, fused Adam;
- batched: ``iwae.members``' step for M members: each member's batch, binarization and eps from
  its own generator, the stacked model's one batched pass, the per-member nan/inf check, one fused
  Adam over the stacked weights.

member-steps/s = M x steps/s of the group; ``speed-up`` = that over the single run's steps/s. A rate
is the median of 5 blocks of about ``--seconds / 5`` each. ``--kernels`` adds the comparison that
chose bmm over vmap: forward and backward of the stacked encoder and decoder MLPs of M members, by
``torch.bmm``/``baddbmm`` and by ``torch.func.stack_module_state`` + ``vmap(functional_call)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def _rate(step, seconds: float, blocks: int = 5) -> float:
    """Steps/s of ``step()``: the median over ``blocks`` blocks, each about seconds/blocks long."""
    for _ in range(5):  # warm-up: allocator, first-call paths
        step()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.2:
        step()
        n += 1
    per_block = max(1, int(n / (time.perf_counter() - t0) * seconds / blocks))
    rates = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            step()
        rates.append(per_block / (time.perf_counter() - t0))
    return statistics.median(rates)


def _data(n: int = 2000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 784, generator=g)  # grey levels: the binarization draws as on MNIST


def measure_single(k: int, batch: int, seconds: float) -> float:
    import iwae.train.loop as train_module
    from iwae.data import binarize
    from iwae.estimators import accumulate_gradients

    config = train_module.TrainConfig(objective="iwae", k=k, batch_size=batch, epochs=1, out="unused")
    torch.manual_seed(0)
    model = train_module.build_model(config, 784)
    optimizer = train_module._make_optimizer(config, model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x_train = _data()
    order = torch.randperm(x_train.shape[0], generator=generator)
    position = [0]

    def step():
        i = position[0] = (position[0] + batch) % (x_train.shape[0] - batch)
        x = binarize(x_train[order[i : i + batch]], generator)
        optimizer.zero_grad(set_to_none=True)
        bound = accumulate_gradients(model, x, config.spec, generator)
        if train_module._nonfinite_now(bound, model):
            raise FloatingPointError("nan")
        optimizer.step()

    return _rate(step, seconds)


def measure_batched(members: int, k: int, batch: int, seconds: float) -> float:
    import iwae.members.loop as members_module
    import iwae.train.loop as train_module

    device = torch.device("cpu")
    group_members = []
    for seed in range(members):
        config = train_module.TrainConfig(objective="iwae", k=k, batch_size=batch, epochs=1, seed=seed, out="unused")
        torch.manual_seed(seed)
        model = train_module.build_model(config, 784)
        m = members_module._Member(
            config,
            None,
            model=model,
            optimizer=train_module._make_optimizer(config, model, device),
            generator=torch.Generator().manual_seed(seed),
        )
        group_members.append(m)
    group = members_module._Group(train_module, group_members, device)
    x_train = _data()
    for m in group.members:
        m.order = torch.randperm(x_train.shape[0], generator=m.generator)
    kinds = members_module._kinds(train_module, group.members, 0)
    position = [0]

    def step():
        i = position[0] = (position[0] + batch) % (x_train.shape[0] - batch)
        bound, bad = group.step(x_train, i, batch, k, group.latent_dims, True, kinds)
        if bad:
            raise FloatingPointError("nan")
        group.optimizer.step()

    return members * _rate(step, seconds)


def measure_kernels(members: int, k: int, batch: int, seconds: float) -> dict:
    """Forward + backward of M stacked tanh MLPs (the encoder on (B, 784), the decoder on (K*B, 50)):
    bmm against vmap over functional_call, steps/s each."""
    from torch import nn

    def mlp(sizes):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*layers[:-1])

    enc = [mlp([784, 200, 200, 100]) for _ in range(members)]
    dec = [mlp([50, 200, 200, 784]) for _ in range(members)]
    x = torch.rand(members, batch, 784)
    z = torch.randn(members, k * batch, 50)
    results = {}

    params_e, buffers_e = torch.func.stack_module_state(enc)
    params_d, buffers_d = torch.func.stack_module_state(dec)
    base_e, base_d = enc[0], dec[0]

    def run_vmap():
        out_e = torch.func.vmap(lambda p, b, h: torch.func.functional_call(base_e, (p, b), (h,)))(
            params_e, buffers_e, x
        )
        out_d = torch.func.vmap(lambda p, b, h: torch.func.functional_call(base_d, (p, b), (h,)))(
            params_d, buffers_d, z
        )
        (out_e.sum() + out_d.sum()).backward()

    def stacked(seq):
        return [
            (
                nn.Parameter(torch.stack([l.weight.detach() for l in ls])),
                nn.Parameter(torch.stack([l.bias.detach() for l in ls])),
            )
            for ls in zip(*[[m for m in s if isinstance(m, nn.Linear)] for s in seq])
        ]

    we, wd = stacked(enc), stacked(dec)

    def forward(weights, h):
        for j, (w, b) in enumerate(weights):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if j < len(weights) - 1:
                h = torch.tanh(h)
        return h

    def run_bmm():
        (forward(we, x).sum() + forward(wd, z).sum()).backward()

    results["bmm"] = _rate(run_bmm, seconds)
    results["vmap"] = _rate(run_vmap, seconds)
    return results


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from iwae.runtime import tune_allocator

    tune_allocator()
    if args.child == "single":
        out = measure_single(args.k, args.batch, args.seconds)
    elif args.child == "batched":
        out = measure_batched(args.m, args.k, args.batch, args.seconds)
    else:
        out = measure_kernels(args.m, args.k, args.batch, args.seconds)
    print(json.dumps(out))


def _run(kind: str, m: int, k: int, args: argparse.Namespace):
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--m",
        str(m),
        "--k",
        str(k),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--seconds",
        str(args.seconds),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="1,4,10", help="group sizes M (comma-separated)")
    parser.add_argument("--ks", default="1,5,50", help="samples per example (comma-separated)")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate single and batched this many times; report the medians (for a busy machine)",
    )
    parser.add_argument("--kernels", action="store_true", help="also time the stacked MLP by bmm and by vmap")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    ms = [int(v) for v in args.members.split(",")]
    ks = [int(v) for v in args.ks.split(",")]
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, Burda's 1-layer MNIST model, IWAE; "
        f"process per measurement"
    )
    print(f"{'k':>4} {'members':>8} {'single steps/s':>15} {'batched member-steps/s':>23} {'speed-up':>9}")
    for k in ks:
        singles, batched = [], {m: [] for m in ms}
        for _ in range(args.rounds):  # alternating, so that a change in the machine's load hits both
            singles.append(_run("single", 1, k, args))
            for m in ms:
                batched[m].append(_run("batched", m, k, args))
        single = statistics.median(singles)
        for m in ms:
            rate = statistics.median(batched[m])
            print(f"{k:>4} {m:>8} {single:>15.1f} {rate:>23.1f} {rate / single:>8.2f}x", flush=True)
    if args.kernels:
        print(f"\nstacked MLPs, forward + backward (steps/s): {'k':>4} {'members':>8} {'bmm':>8} {'vmap':>8}")
        for k in ks:
            for m in ms:
                r = _run("kernels", m, k, args)
                print(f"{'':44}{k:>4} {m:>8} {r['bmm']:>8.1f} {r['vmap']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
