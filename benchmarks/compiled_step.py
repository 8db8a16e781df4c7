"""The whole-step compiled program (iwae.compiled.step): how to compile a step, what compiling costs, where time goes.

    python benchmarks/compiled_step.py options        # ways to compile a training step, side by side
    python benchmarks/compiled_step.py compile-time   # cold and warm inductor caches, break-even in steps
    python benchmarks/compiled_step.py profile        # top operations of a B = 20, k = 1 step, eager and compiled

Burda et al.'s 1-layer model, IWAE, the cells of ``--cells`` (default 20:1,20:5, batch:k), ``--threads``
torch threads (default 2).

``options`` builds every way to run the step in one process and times them in turn, ``--rounds``
rounds of blocks of steps, each rate the median over its rounds (so that the machine's load hits them
alike), with its first call's seconds (tracing and compiling):

- ``eager``: iwae.train's step (``accumulate_gradients``, fused Adam);
- ``forward``: ``--compile default`` (iwae.compiled: the forward compiled, the backward by AOTAutograd,
  graph breaks at the generator's draws, the optimizer eager);
- ``compiled-autograd``: ``torch.compile`` of the whole eager step function with
  ``torch._dynamo.config.compiled_autograd`` (the backward captured by compiled autograd, the fused
  Adam step traced by Dynamo; graph breaks at the draws);
- ``dynamo-step``: Dynamo tracing iwae.compiled.step's step function itself (forward, ``torch.autograd.grad``
  with ``torch._dynamo.config.trace_autograd_ops``, Adam), guards and all;
- ``graph-guarded``: iwae.compiled.step's make_fx graph compiled by ``torch.compile`` (Dynamo's guards on
  every call) instead of ``standalone_compile``;
- ``compiled-step``: iwae.compiled.step (make_fx graph, ``standalone_compile``, no guards);
- ``func``: ``torch.func.grad`` of the loss under ``torch.compile(fullgraph=True)``: reported as failing
  where it does (iwae's fused likelihood kernel writes in place inside a custom autograd function).

``compile-time`` runs each cell in fresh processes: first with an empty ``TORCHINDUCTOR_CACHE_DIR``
(cold), then twice more with the cache it left (warm), and prints the seconds to the first step, the
step times of eager and compiled, and the break-even point (steps after which compiling has paid).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from iwae.compiled import compiled_forward
from iwae.compiled.step import CompiledStep
from iwae.estimators import ObjectiveSpec, accumulate_gradients, gradient_terms
from iwae.models import VAE, ModelConfig
from iwae.runtime import tune_allocator


def _setup(batch: int, k: int):
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4, fused=True)
    return model, optimizer, torch.Generator().manual_seed(0)


class _Unrecorded(list):
    """A list that records nothing (the step function reports the parameters it trains by appending)."""

    def append(self, item) -> None:
        pass


def make_step(option: str, batch: int, k: int, x: torch.Tensor):
    """``option``'s step function for one model, optimizer and generator of its own."""
    spec = ObjectiveSpec("iwae", k)
    model, optimizer, generator = _setup(batch, k)

    def eager_step(forward=None):
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, generator, **({"forward": forward} if forward else {}))
        optimizer.step()

    if option == "eager":
        return eager_step
    if option == "forward":
        forward = compiled_forward("default", "cpu")
        return lambda: eager_step(forward)
    if option == "compiled-autograd":
        compiled = torch.compile(eager_step)

        def step():
            with torch._dynamo.config.patch(compiled_autograd=True):
                compiled()

        return step
    if option in ("compiled-step", "graph-guarded", "dynamo-step"):
        graph_only = option != "compiled-step"
        step = CompiledStep(model, optimizer, spec, batch, compile=not graph_only)
        if option == "graph-guarded":
            step._program = torch.compile(step.graph, fullgraph=True, dynamic=False)
        elif option == "dynamo-step":
            function = step._step_function(_Unrecorded())  # a growing list would recompile every call
            compiled = torch.compile(function, fullgraph=True, dynamic=False)

            def program(*inputs):
                with torch._dynamo.config.patch(trace_autograd_ops=True):
                    return compiled(*inputs)

            step._program = program
        return lambda: step(x, generator)
    if option == "func":
        return _func_step(model, optimizer, spec, x, generator)
    raise ValueError(f"unknown option {option!r}")


class _Loss(torch.nn.Module):
    """The summed negative IWAE bound of given eps, as a module whose parameters functional_call swaps."""

    def __init__(self, model, spec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x, eps):
        parts = self.model.log_weight_parts(x, self.spec.k, eps=[eps])
        return -gradient_terms(self.model, parts, self.spec).terms[0][0].sum()


def _func_step(model, optimizer, spec, x, generator):
    """torch.func.grad of the loss through functional_call under torch.compile(fullgraph=True), then a
    plain gradient step (enough to see whether it compiles and how fast its gradient is)."""
    loss = _Loss(model, spec)
    grad = torch.compile(
        torch.func.grad(lambda params, eps: torch.func.functional_call(loss, params, (x, eps))), fullgraph=True
    )
    params = {f"model.{name}": p.detach() for name, p in model.named_parameters()}

    def step():
        eps = torch.randn((spec.k, x.shape[0], 50), generator=generator)
        grads = grad(params, eps)
        with torch.no_grad():
            torch._foreach_add_(list(params.values()), list(grads.values()), alpha=-1e-3)

    return step


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def options(args: argparse.Namespace) -> None:
    chosen = args.options.split(",")
    for batch, k in args.cells:
        x = torch.bernoulli(torch.rand(batch, 784, generator=torch.Generator().manual_seed(1)))
        steps, first = {}, {}
        for option in chosen:
            t = time.perf_counter()
            try:
                step = make_step(option, batch, k, x)
                step()
                steps[option] = step
            except Exception as e:  # report the option as failing, time the others
                first[option] = f"fails: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"
                continue
            first[option] = f"{time.perf_counter() - t:.1f} s"
        for step in steps.values():
            for _ in range(10):
                step()
        block = max(3, int(0.25 / _time(steps.get("eager") or next(iter(steps.values())), 5)))
        times = {option: [] for option in steps}
        for _ in range(args.rounds):
            for option, step in steps.items():
                times[option].append(_time(step, block))
        base = statistics.median(times["eager"]) if "eager" in times else None
        print(
            f"\nB = {batch}, k = {k}: {args.rounds} alternating rounds of {block} steps, median; "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n"
        )
        print("| option | steps/s | vs eager | first call (trace + compile) |")
        print("|---|---|---|---|")
        for option in chosen:
            if option not in times:
                print(f"| {option} | | | {first[option]} |")
                continue
            median = statistics.median(times[option])
            ratio = f"{base / median:.2f}x" if base else ""
            print(f"| {option} | {1 / median:.0f} | {ratio} | {first[option]} |", flush=True)


# ----------------------------------------------------------------------------- compile time
def _one_process(batch: int, k: int, threads: int, steps: int) -> dict:
    """In this process: seconds to build the compiled step and run its first call, then the step times
    (median of 7 blocks) of eager and compiled."""
    torch.set_num_threads(threads)
    x = torch.bernoulli(torch.rand(batch, 784, generator=torch.Generator().manual_seed(1)))
    t = time.perf_counter()
    compiled = make_step("compiled-step", batch, k, x)
    compiled()
    build = time.perf_counter() - t
    eager = make_step("eager", batch, k, x)
    for _ in range(10):
        eager(), compiled()
    te, tc = [], []
    for _ in range(7):
        te.append(_time(eager, steps))
        tc.append(_time(compiled, steps))
    return {"build": build, "eager": statistics.median(te), "compiled": statistics.median(tc)}


def compile_time(args: argparse.Namespace) -> None:
    print(f"\nCompile time: a fresh process each, {args.threads} threads, load average {os.getloadavg()[0]:.1f}\n")
    print("| B | k | cache | seconds to the first step | eager ms/step | compiled ms/step | break-even (steps) |")
    print("|---|---|---|---|---|---|---|")
    for batch, k in args.cells:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            for label in ("cold", "warm", "warm"):
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "one-process",
                        "--cells",
                        f"{batch}:{k}",
                        "--threads",
                        str(args.threads),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                line = [row for row in done.stdout.splitlines() if row.startswith("RESULT ")]
                if not line:
                    print(
                        f"| {batch} | {k} | {label} | failed: {(done.stderr.strip().splitlines() or [''])[-1][:100]} |"
                    )
                    continue
                r = {key: float(v) for key, v in (item.split("=") for item in line[0].split()[1:])}
                gain = r["eager"] - r["compiled"]
                even = f"{r['build'] / gain:,.0f}" if gain > 0 else "never"
                print(
                    f"| {batch} | {k} | {label} | {r['build']:.1f} | {r['eager'] * 1e3:.2f} | "
                    f"{r['compiled'] * 1e3:.2f} | {even} |",
                    flush=True,
                )


# ----------------------------------------------------------------------------- profile
def profile(args: argparse.Namespace) -> None:
    """Top operations (self CPU time) of 200 steps at the first cell, eager and compiled (inductor's
    kernels named by ``cpp.enable_kernel_profile``)."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    inductor_config.cpp.enable_kernel_profile = True
    batch, k = args.cells[0]
    x = torch.bernoulli(torch.rand(batch, 784, generator=torch.Generator().manual_seed(1)))
    for option in ("eager", "compiled-step"):
        step = make_step(option, batch, k, x)
        for _ in range(50):
            step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(200):
                step()
        print(
            f"\n{option}, B = {batch}, k = {k}, 200 steps, {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f}\n"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["options", "compile-time", "profile", "one-process"])
    parser.add_argument("--cells", default="20:1,20:5", help="batch:k pairs, comma-separated (default 20:1,20:5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=9, help="options: alternating rounds (default 9)")
    parser.add_argument(
        "--options",
        default="eager,forward,compiled-autograd,dynamo-step,graph-guarded,compiled-step,func",
        help="options: which ways, comma-separated",
    )
    parser.add_argument("--steps", type=int, default=100, help="compile-time: steps per timed block (default 100)")
    parser.add_argument("--rows", type=int, default=25, help="profile: operations listed (default 25)")
    args = parser.parse_args()
    try:
        args.cells = [tuple(int(v) for v in cell.split(":")) for cell in args.cells.split(",")]
    except ValueError:
        parser.exit(2, "compiled_step.py: error: --cells wants batch:k pairs, e.g. 20:1,20:5\n")
    torch.set_num_threads(args.threads)
    tune_allocator()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.what == "one-process":
        batch, k = args.cells[0]
        r = _one_process(batch, k, args.threads, args.steps)
        print("RESULT " + " ".join(f"{key}={value}" for key, value in r.items()))
    else:
        {"options": options, "compile-time": compile_time, "profile": profile}[args.what](args)


if __name__ == "__main__":
    main()
