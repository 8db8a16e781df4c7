"""The fastest a training step could go with PyTorch's matrix products: the time of its GEMMs alone.

    python benchmarks/gemm_floor.py                          # B = 20 and 100, k = 1, 5, 50, 1 layer
    python benchmarks/gemm_floor.py --batches 100 --ks 50 --layers 1,2 --threads 2

Runs one real IWAE(k) training step of Burda et al.'s model (``accumulate_gradients``) under a
``TorchDispatchMode`` that records every matrix product the step calls (``mm``, ``addmm``,
``bmm``, ``baddbmm``: the forward pass and both products of each layer's backward pass), with
their operands' shapes and strides, then times replaying only those products on fresh tensors of
the same layout. The replay's rate is a ceiling on the steps/s of any implementation of that step
that does its products with this PyTorch's GEMMs (MKL or oneDNN on the CPU): eager, compiled,
or pythae's, whose products are the same (its encoder runs once per image, its decoder on k*B rows).
Dividing the ceiling by a peer's measured rate bounds how far ahead of it iwae can get in float32.

``bench.py --variants --only gemm-floor,...`` runs the same replay as a variant (``gemm-floor``),
side by side with the implementations, one process per measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.models import VAE, ModelConfig

PRODUCTS = ("mm", "addmm", "bmm", "baddbmm")


class _RecordProducts(TorchDispatchMode):
    """Records (op name, [(shape, stride) of each tensor argument]) of every matrix product dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.products: list[tuple[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in PRODUCTS:
            operands = [(tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, torch.Tensor)]
            self.products.append((name, operands))
        return func(*args, **(kwargs or {}))


def step_products(batch: int, k: int, layers: int = 1, device: str | torch.device = "cpu") -> list:
    """The matrix products of one IWAE(k) training step of the ``layers``-layer model at ``batch``."""
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(layers)).to(device)
    x = torch.bernoulli(torch.rand(batch, 784)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    recorder = _RecordProducts()
    with recorder:
        accumulate_gradients(model, x, ObjectiveSpec("iwae", k=k), generator)
    return recorder.products


def floor_step(batch: int, k: int, layers: int = 1, device: str | torch.device = "cpu"):
    """A function that does the step's matrix products only, on tensors laid out as the step's were."""
    products = step_products(batch, k, layers, device)
    calls = []
    for name, operands in products:
        tensors = [torch.empty_strided(shape, stride, device=device).normal_() for shape, stride in operands]
        calls.append((getattr(torch, name), tensors))

    def step() -> None:
        for op, tensors in calls:
            op(*tensors)

    return step


def flops(batch: int, k: int, layers: int = 1) -> int:
    """2*m*n*p summed over the step's products (the bias of addmm not counted)."""
    total = 0
    for name, operands in step_products(batch, k, layers):
        (a, _), (b, _) = operands[-2], operands[-1]
        batch_dims = a[0] if name in ("bmm", "baddbmm") else 1
        total += 2 * batch_dims * a[-2] * a[-1] * b[-1]
    return total


def seconds_per_call(fn, seconds: float = 1.0) -> float:
    """Median over 7 blocks of calls, after a warm-up that sizes the blocks."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        fn()
        calls += 1
    per_block = max(1, int(calls * seconds / 7 / 0.2))
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(per_block):
            fn()
        times.append((time.perf_counter() - start) / per_block)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="20,100")
    parser.add_argument("--ks", default="1,5,50")
    parser.add_argument("--layers", default="1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| layers | batch | k | products | GFLOP | floor ms/step | ceiling steps/s | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for layers in map(int, args.layers.split(",")):
        for batch in map(int, args.batches.split(",")):
            for k in map(int, args.ks.split(",")):
                n = len(step_products(batch, k, layers))
                gflop = flops(batch, k, layers) / 1e9
                dt = seconds_per_call(floor_step(batch, k, layers))
                cells = (layers, batch, k, n, f"{gflop:.3f}", f"{dt * 1e3:.2f}", f"{1 / dt:.1f}", f"{gflop / dt:.0f}")
                print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
