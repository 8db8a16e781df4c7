"""Times both variants of each device-chosen kernel of iwae on the current device.

    python benchmarks/kernels.py                  # CPU, a few seconds
    python benchmarks/kernels.py --device cuda    # what benchmarks/gpu_check.sh prints

iwae picks some kernels by device (:func:`iwae.models.networks.tanh_kernel`,
:func:`iwae.models.networks.output_layer_kernel`); this prints, for each, both variants' time per
call, forward and backward, at the shapes of a training step of Burda et al.'s 1-layer model at
batch 20 and 100, k = 50 (K*B rows), and which variant iwae uses on this device:

1. tanh of the hidden layers, (K*B, 200): 2 sigmoid(2h) - 1 (one autograd function) vs torch.tanh;
2. the decoder's output layer, (K*B, 200) -> (K*B, 784): matmul then an in-place bias add vs
   F.linear (on CUDA its bias goes in the matrix product's epilogue);
3. the Bernoulli log-likelihood of the (K*B, 784) logits: iwae's fused autograd function
   (:mod:`iwae.models.likelihood`, used on every device) vs binary_cross_entropy_with_logits.

Each time is the median of 7 blocks of calls (CUDA: synchronised before and after each block).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from iwae.models import networks
from iwae.models.likelihood import bernoulli_log_prob_from_logits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn, device: torch.device, seconds: float = 0.5) -> float:
    """Seconds per call of ``fn``: the median of 7 timed blocks, after a warm-up that sizes them."""
    _sync(device)
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < 0.1 or n < 3:
        fn()
        n += 1
    _sync(device)
    block = max(1, int(n / (time.perf_counter() - t) * seconds / 7))
    times = []
    for _ in range(7):
        _sync(device)
        t = time.perf_counter()
        for _ in range(block):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t) / block)
    return statistics.median(times)


def _forward_backward(fn, *inputs: torch.Tensor):
    """A call of fn on ``inputs`` (leaves that need grad) and its backward pass, as a closure."""

    def step():
        for x in inputs:
            x.grad = None
        fn(*inputs).sum().backward()

    return step


def kernel_rows(device: torch.device, rows: int, seconds: float = 0.5) -> list[tuple[str, str, float, bool]]:
    """(kernel, variant, seconds per forward + backward call, used by iwae on ``device``) at ``rows`` rows."""
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(rows, 200, device=device, generator=g).requires_grad_(True)
    weight = (0.05 * torch.randn(784, 200, device=device, generator=g)).requires_grad_(True)
    bias = torch.zeros(784, device=device).requires_grad_(True)
    logits = torch.randn(rows, 784, device=device, generator=g).requires_grad_(True)
    x = torch.bernoulli(torch.full((rows, 784), 0.3, device=device), generator=g)

    def bce(logits_, x_=x):
        return -F.binary_cross_entropy_with_logits(logits_, x_, reduction="none").sum(-1)

    tanh_used, linear_used = networks.tanh_kernel(device), networks.output_layer_kernel(device)
    variants = [
        (
            "tanh (K*B, 200)",
            "2 sigmoid(2h) - 1",
            networks._tanh_via_sigmoid,
            (hidden,),
            tanh_used is networks._tanh_via_sigmoid,
        ),
        ("tanh (K*B, 200)", "torch.tanh", torch.tanh, (hidden,), tanh_used is torch.tanh),
        (
            "output layer 200 -> 784",
            "matmul + add_(bias)",
            networks._linear_then_bias,
            (hidden, weight, bias),
            linear_used is networks._linear_then_bias,
        ),
        ("output layer 200 -> 784", "F.linear", F.linear, (hidden, weight, bias), linear_used is F.linear),
        ("log p(x|z) (K*B, 784)", "iwae fused", lambda l: bernoulli_log_prob_from_logits(l, x), (logits,), True),
        ("log p(x|z) (K*B, 784)", "binary_cross_entropy_with_logits", bce, (logits,), False),
    ]
    return [
        (kernel, name, time_per_call(_forward_backward(fn, *inputs), device, seconds), used)
        for kernel, name, fn, inputs, used in variants
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--rows", default="1000,5000", help="K*B rows, comma-separated (default 1000,5000: batch 20 and 100 at k = 50)"
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "kernels.py: error: --device cuda, but CUDA is not available on this machine\n")
    try:
        rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        parser.exit(2, f"kernels.py: error: --rows wants comma-separated integers, got {args.rows!r}\n")
    if not rows or min(rows) < 1:
        parser.exit(2, f"kernels.py: error: --rows must be positive, got {args.rows!r}\n")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"# iwae kernel variants on {device} ({name}), torch {torch.__version__}, forward + backward per call\n")
    print("| kernel | rows | variant | us per call | vs the other | iwae uses it here |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        timed = kernel_rows(device, r, args.seconds)
        for kernel, variant, seconds, used in timed:
            other = next(s for k, v, s, _ in timed if k == kernel and v != variant)
            print(
                f"| {kernel} | {r} | {variant} | {seconds * 1e6:.1f} | {seconds / other:.2f}x | "
                f"{'yes' if used else ''} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
