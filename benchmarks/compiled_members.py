"""Could iwae.members' stacked step be one compiled program too, and would it beat single runs on CPU?

    python benchmarks/compiled_members.py --members 4 --ks 1 --threads 1

A prototype for measurement, not a training path: the stacked step (each member's eps from its own
generator, ``iwae.members._accumulate`` on a ``StackedVAE``, the per-member non-finite check, Adam over
the stacked weights) traced with make_fx as iwae.compiled.step traces the single step, and compiled by
inductor. Timed against, in turn (``--rounds`` alternating rounds, median; member-steps/s):

- ``single eager``: M runs one after another, each iwae.train's eager step;
- ``single compiled``: M runs one after another, each its own iwae.compiled.step program;
- ``stacked eager``: iwae.members' step as its loop runs it (one batched model, fused Adam);
- ``stacked compiled``: this prototype.

Each variant draws its minibatches' binarization and eps per member; all use resident grey-level data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.fx.experimental.proxy_tensor import make_fx

import iwae.data as data_module
import iwae.members.loop as members_module
import iwae.train.loop as train_module
from iwae.compiled.program import INDUCTOR_OPTIONS
from iwae.compiled.step import CompiledStep
from iwae.compiled.trace import adam_update as _adam
from iwae.estimators import accumulate_gradients
from iwae.runtime import tune_allocator


def _members(count: int, k: int, batch: int):
    out = []
    for seed in range(count):
        config = train_module.TrainConfig(objective="iwae", k=k, batch_size=batch, epochs=1, seed=seed, out="unused")
        torch.manual_seed(seed)
        model = train_module.build_model(config, 784)
        out.append(
            members_module._Member(
                config,
                None,
                model=model,
                optimizer=train_module._make_optimizer(config, model, torch.device("cpu")),
                generator=torch.Generator().manual_seed(seed),
            )
        )
    return out


class _StackedProgram:
    """The stacked members' step as one make_fx graph compiled by inductor (a prototype: one KL weight,
    members at the same Adam step, no member leaves)."""

    def __init__(self, group, k: int, batch: int):
        self.group, self.k, self.batch = group, k, batch
        model = group.model
        self.names = list(model.names)
        self.params = [model.param(n) for n in self.names]
        opt = group.optimizer
        for p in self.params:  # Adam's state as torch creates it
            if not opt.state[p]:
                opt.state[p].update(
                    step=torch.zeros((), dtype=torch.float32),
                    exp_avg=torch.zeros_like(p),
                    exp_avg_sq=torch.zeros_like(p),
                )
        self.state = [opt.state[p] for p in self.params]
        self.hyper = torch.zeros(2, dtype=torch.float64)
        self.kinds = members_module._kinds(train_module, group.members, 0)
        m = len(group.members)
        self.dims = group.latent_dims
        example = (
            [p.detach() for p in self.params]
            + [s["exp_avg"] for s in self.state]
            + [s["exp_avg_sq"] for s in self.state]
            + [self.hyper, torch.zeros(m, batch, 784)]
            + [torch.zeros(m, k, batch, d) for d in self.dims]
        )
        graph = make_fx(self._function(), tracing_mode="fake")(*example)
        from torch._inductor import standalone_compile

        self.program = standalone_compile(
            graph, example, dynamic_shapes="from_example_inputs", options=INDUCTOR_OPTIONS
        )

    def _function(self):
        n, template, names, kinds = len(self.params), self.group.members[0].model, self.names, self.kinds
        beta1, beta2 = self.group.optimizer.param_groups[0]["betas"]
        adam_eps = self.group.optimizer.param_groups[0]["eps"]
        layers = len(self.dims)

        def step(*inputs):
            params, exp_avg, exp_avg_sq = inputs[:n], inputs[n : 2 * n], inputs[2 * n : 3 * n]
            hyper, x, eps = inputs[3 * n], inputs[3 * n + 1], list(inputs[3 * n + 2 : 3 * n + 2 + layers])
            with torch.enable_grad():
                model = members_module.StackedVAE(template, dict(zip(names, params)))
                bound = members_module._accumulate(model, x, eps, kinds)  # (M, B)
            grads = [model.param(name).grad for name in names]
            finite = torch.isfinite(bound).all(1)  # (M,): each member's own flag
            for g in grads:
                finite = finite & torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
            for p, m, v, g in zip(params, exp_avg, exp_avg_sq, grads):
                ok = finite.reshape((-1,) + (1,) * (p.dim() - 1))
                new = _adam(p, m, v, g, hyper[0].float(), hyper[1].float(), beta1, beta2, adam_eps)
                for target, value in zip((p, m, v), new):
                    target.copy_(torch.where(ok, value, target))
            return bound.detach(), finite

        return step

    def __call__(self, x_train: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, eps = [], [[] for _ in self.dims]
        for m in self.group.members:  # each member's draws in its single run's order
            x = data_module.binarize(x_train[m.order[i : i + self.batch]], m.generator)
            xs.append(x)
            for layer, d in enumerate(self.dims):
                eps[layer].append(torch.randn((self.k, x.shape[0], d), generator=m.generator))
        t = int(self.state[0]["step"]) + 1
        beta1, beta2 = self.group.optimizer.param_groups[0]["betas"]
        lr = self.group.optimizer.param_groups[0]["lr"]
        self.hyper.numpy()[:] = (lr / (1 - beta1**t), (1 - beta2**t) ** 0.5)
        inputs = (
            [p.detach() for p in self.params]
            + [s["exp_avg"] for s in self.state]
            + [s["exp_avg_sq"] for s in self.state]
            + [self.hyper, torch.stack(xs)]
            + [torch.stack(e) for e in eps]
        )
        bound, finite = self.program(*inputs)
        for s in self.state:
            s["step"] += 1
        return bound, finite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--ks", default="1")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    x_train = torch.rand(2000, 784, generator=torch.Generator().manual_seed(0))
    count, batch = args.members, args.batch
    for k in (int(v) for v in args.ks.split(",")):
        fns, first = {}, {}

        positions = {"i": 0}

        def next_i():
            positions["i"] = (positions["i"] + batch) % (x_train.shape[0] - batch)
            return positions["i"]

        singles = _members(count, k, batch)
        for m in singles:
            m.order = torch.randperm(x_train.shape[0], generator=m.generator)

        def single_eager():
            i = next_i()
            for m in singles:
                x = data_module.binarize(x_train[m.order[i : i + batch]], m.generator)
                m.optimizer.zero_grad(set_to_none=True)
                bound = accumulate_gradients(m.model, x, m.config.spec, m.generator)
                if train_module._nonfinite_now(bound, list(m.model.parameters())):
                    raise FloatingPointError
                m.optimizer.step()

        fns["single eager"] = single_eager

        compiled = _members(count, k, batch)
        t = time.perf_counter()
        steps = [CompiledStep(m.model, m.optimizer, m.config.spec, batch) for m in compiled]
        first["single compiled"] = time.perf_counter() - t
        for m in compiled:
            m.order = torch.randperm(x_train.shape[0], generator=m.generator)

        def single_compiled():
            i = next_i()
            for m, step in zip(compiled, steps):
                x = data_module.binarize(x_train[m.order[i : i + batch]], m.generator)
                _, finite = step(x, m.generator)
                if not bool(finite):
                    raise FloatingPointError

        fns["single compiled"] = single_compiled

        stacked = members_module._Group(train_module, _members(count, k, batch), torch.device("cpu"))
        for m in stacked.members:
            m.order = torch.randperm(x_train.shape[0], generator=m.generator)
        kinds = members_module._kinds(train_module, stacked.members, 0)

        def stacked_eager():
            bound, bad = stacked.step(x_train, next_i(), batch, k, stacked.latent_dims, True, kinds)
            if bad:
                raise FloatingPointError
            stacked.optimizer.step()

        fns["stacked eager"] = stacked_eager

        group = members_module._Group(train_module, _members(count, k, batch), torch.device("cpu"))
        for m in group.members:
            m.order = torch.randperm(x_train.shape[0], generator=m.generator)
        t = time.perf_counter()
        program = _StackedProgram(group, k, batch)
        first["stacked compiled"] = time.perf_counter() - t

        def stacked_compiled():
            _, finite = program(x_train, next_i())
            if not bool(finite.all()):
                raise FloatingPointError

        fns["stacked compiled"] = stacked_compiled

        for fn in fns.values():
            for _ in range(5):
                fn()
        block = max(3, int(0.3 / max(1e-6, min(_time(fn, 3) for fn in fns.values()))))
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(_time(fn, block))
        base = statistics.median(times["single eager"])
        print(
            f"\n{count} members, B = {batch}, k = {k}: {args.rounds} alternating rounds, median; "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n"
        )
        print("| variant | member-steps/s | vs single eager | build (s) |")
        print("|---|---|---|---|")
        for name, t in times.items():
            median = statistics.median(t)
            print(f"| {name} | {count / median:.0f} | {base / median:.2f}x | {first.get(name, 0.0):.1f} |", flush=True)


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


if __name__ == "__main__":
    main()
