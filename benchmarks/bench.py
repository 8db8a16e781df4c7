"""Throughput of iwae against the machine's float32 GEMM peak.

    python benchmarks/bench.py                 # about a minute on 2 CPU cores
    IWAE_KEEP_MALLOC=1 python benchmarks/bench.py --impl plain   # the plain eager baseline
    python benchmarks/bench.py --eval-images 10000   # L_5000 on the whole MNIST test set
    python benchmarks/bench.py --device cuda --batches 20 --ks 1,50 --no-estimators   # as gpu_check.sh

Measures, in one run:
1. the float32 GEMM peak of torch.mm (best over square sizes), in GFLOP/s;
2. training steps/s (forward, backward, Adam) of Burda et al.'s 1-layer model with the IWAE
   objective at batch 20 and 100 and k = 1, 5, 50;
3. L_5000 images/s (iwae.evaluate.log_likelihood);
and prints each as a fraction of the GEMM peak. FLOPs are counted as 2*m*n*k per matrix product,
three products per layer for a training step (forward, and two in backward), one for evaluation.
A step's time is the median over repetitions of a block of steps. Last,
4. the cost of the encoder's gradient estimators: training steps/s of the same model with IWAE at
   batch 20, k = 50 for estimator reparam, stl, dreg and rws (iwae.estimators.accumulate_gradients,
   then Adam), and each one's time per step relative to reparam. ``--estimators`` runs this section
   alone; ``--impl plain`` leaves it out.

``--impl plain`` times the same model with PyTorch's ``nn.Tanh`` and
``binary_cross_entropy_with_logits`` instead of iwae's kernels; with ``IWAE_KEEP_MALLOC=1`` it also
keeps glibc's default allocator settings (see ``iwae.runtime``): the clean eager baseline.

5. ``--variants``: the same training step as ``iwae.train`` runs it (``accumulate_gradients``, fused
   Adam) in float32 eager, ``bf16-mixed`` (``iwae.precision``) and compiled (``iwae.compiled``), and
   batched members (``iwae.members``, where importable), side by side; with ``--peers`` also
   pythae's IWAE training step and its L_5000 (``get_nll``) when pythae is importable (it is not an
   iwae dependency: ``pip install --no-deps pythae`` with pydantic, cloudpickle, imageio; or put it
   on ``--peers-path``). Each measurement is its own process (a fresh allocator, no state carried
   from one implementation to the next), and the implementations alternate within each of
   ``--rounds`` rounds, so that a change in the machine's load hits them all alike; a rate is the
   median over the rounds. A table row gives each rate and its ratio to float32 eager (and to
   pythae and the JAX peer). ``--variants`` prints only this section. ``compiled-step`` is the whole
   step as one compiled program (``iwae.compiled.step``, ``--compile step``); with ``--peers`` the
   JAX peer (``../shared/peers/jax_iwae.py``: the same model, its whole step one jitted XLA program)
   runs too, by a Python that has jax and optax, given by ``--jax-python PATH`` or
   ``$IWAE_JAX_PYTHON`` (its own venv, see ``../shared/peers/README.md``; never an iwae dependency),
   pinned to as many CPUs as ``--threads``. ``--cli`` adds what a user gets: ``iwae train``'s own
   epoch rate, eager (``cli-eager``) and with ``--compile step`` (``cli-step``), from two runs of
   different sizes whose difference cancels start-up (``benchmarks/train_rate.py``; MNIST from
   ``--data-dir``; ``--cli-images 2000,50000`` for a window of seconds at the fast cells).
   ``gemm-floor`` replays only the step's matrix products (``benchmarks/gemm_floor.py``): no
   implementation that uses PyTorch's float32 GEMMs can beat its rate.

       python benchmarks/bench.py --variants --peers --rounds 3 --batches 20,100 --ks 1,5,50
       python benchmarks/bench.py --variants --peers --cli --jax-python JAXVENV/bin/python --threads 2 \
           --only fp32,compiled-step,cli-eager,cli-step,jax,pythae --batches 20,100 --ks 1,5,50 --json rates.json

``--device cuda`` runs everything on the GPU (the GEMM peak is then the GPU's, at torch's current
TF32 setting, which the header prints); every timed block ends with a CUDA synchronisation.
``benchmarks/kernels.py`` times the kernels iwae chooses by device, both variants of each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import iwae.models.likelihoods as likelihoods
import iwae.models.networks as networks
from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.evaluate import log_likelihood
from iwae.memory import CPU_ROWS_PER_CALL
from iwae.models import VAE, ModelConfig
from iwae.objectives import iwae
from iwae.runtime import tune_allocator

DEVICE = torch.device("cpu")  # set by --device


def _sync() -> None:
    """Waits for the GPU's queued work (a no-op on CPU): timings must end when the work does."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def gemm_peak(sizes=(1024, 2048, 3072), repeats: int = 5) -> float:
    """Best float32 torch.mm throughput over square sizes, GFLOP/s."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
        out = torch.empty(n, n, device=DEVICE)
        for _ in range(2):
            torch.mm(a, b, out=out)
        for _ in range(repeats):
            _sync()
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            _sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def matmul_flops(config: ModelConfig, rows_encoder: int, rows_decoder: int) -> int:
    """2*m*n*k summed over the 1-layer model's linear layers (forward only)."""
    d, (h1, h2), z = config.input_dim, config.hidden_dims[0], config.latent_dims[0]
    encoder = d * h1 + h1 * h2 + h2 * 2 * z
    decoder = z * h2 + h2 * h1 + h1 * d
    return 2 * (rows_encoder * encoder + rows_decoder * decoder)


def _linear_shapes(config: ModelConfig, rows_encoder: int, rows_decoder: int) -> list[tuple[int, int, int]]:
    d, (h1, h2), z = config.input_dim, config.hidden_dims[0], config.latent_dims[0]
    return [(rows_encoder, i, o) for i, o in ((d, h1), (h1, h2), (h2, 2 * z))] + [
        (rows_decoder, i, o) for i, o in ((z, h2), (h2, h1), (h1, d))
    ]


def gemm_only_rate(shapes: list[tuple[int, int, int]], backward: bool, seconds: float = 1.0) -> float:
    """Calls/s of just the matrix products of a step (forward, and both backward products), with
    preallocated outputs: the ceiling a step could reach if nothing else took time."""
    ops = []
    for rows, i, o in shapes:
        x, w, y = (
            torch.randn(rows, i, device=DEVICE),
            torch.randn(o, i, device=DEVICE),
            torch.randn(rows, o, device=DEVICE),
        )
        ops.append((x, w.t(), torch.empty(rows, o, device=DEVICE)))  # forward: y = x W^T
        if backward:
            ops.append((y.t(), x, torch.empty(o, i, device=DEVICE)))  # dW = dy^T x
            ops.append((y, w, torch.empty(rows, i, device=DEVICE)))  # dx = dy W

    def run():
        for a, b, out in ops:
            torch.mm(a, b, out=out)

    for _ in range(5):
        run()
    n = max(5, int(seconds / max(1e-6, _time(run))))
    times = [_time(run, n) for _ in range(7)]
    return 1.0 / statistics.median(times)


def _time(fn, n: int = 1) -> float:
    _sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync()
    return (time.perf_counter() - t) / n


@contextlib.contextmanager
def plain_kernels():
    """Swap iwae's Tanh and Bernoulli log-likelihood for PyTorch's stock ones."""
    old_tanh, old_lik = networks.Tanh, likelihoods.Bernoulli.log_prob

    def stock_lik(self, logits, x):
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    networks.Tanh, likelihoods.Bernoulli.log_prob = nn.Tanh, stock_lik
    try:
        yield
    finally:
        networks.Tanh, likelihoods.Bernoulli.log_prob = old_tanh, old_lik


def train_step_rate(batch: int, k: int, seconds: float = 2.0) -> float:
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1)).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4, fused=True)
    x = torch.bernoulli(torch.rand(batch, 784)).to(DEVICE)

    def step():
        opt.zero_grad(set_to_none=True)
        (-iwae(model.log_weights(x, k)).sum()).backward()
        opt.step()

    return _step_rate(step, seconds)


def estimator_step(estimator: str, batch: int = 20, k: int = 50):
    """One training step (sampling, the estimator's backward passes, Adam) of the 1-layer model on
    IWAE(k) with ``estimator``, through iwae.estimators.accumulate_gradients as iwae.train runs it."""
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1)).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4, fused=True)
    x = torch.bernoulli(torch.rand(batch, 784)).to(DEVICE)
    spec = ObjectiveSpec("iwae", k=k, estimator=estimator)
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, generator)
        opt.step()

    return step


def _step_rate(step, seconds: float) -> float:
    """Steps/s of ``step``: median over 7 timed blocks, after a warm-up that sizes the blocks."""
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < 0.3 or n < 5:  # warm-up, and size the blocks
        step()
        n += 1
    _sync()
    block = max(3, int(n / (time.perf_counter() - t) * seconds / 7))
    return 1.0 / statistics.median(_time(step, block) for _ in range(7))


def eval_rate(images: int, k: int = 5000) -> float:
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1)).to(DEVICE).eval()
    x = torch.bernoulli(torch.rand(images, 784)).to(DEVICE)
    log_likelihood(model, x[:1], k)  # warm-up
    return images / _time(lambda: log_likelihood(model, x, k))


def _with(ctx, fn, *args):
    with ctx():
        return fn(*args)


def estimator_table(
    seconds: float, batch: int = 20, k: int = 50, estimators: tuple[str, ...] = ("reparam", "stl", "dreg", "rws")
) -> None:
    """Prints the markdown table of section 4: steps/s per estimator and its time per step relative
    to reparam. The estimators' blocks of steps are timed in turn, 7 rounds, and each rate is the
    median of its 7 blocks, so that a change in the machine's load hits them all alike."""
    steps = {name: estimator_step(name, batch, k) for name in estimators}
    blocks = {}
    for name, step in steps.items():  # warm-up, and size the blocks
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 0.3 or n < 3:
            step()
            n += 1
        blocks[name] = max(2, int(n / (time.perf_counter() - t) * seconds / 7))
    times = {name: [] for name in estimators}
    for _ in range(7):
        for name, step in steps.items():
            times[name].append(_time(step, blocks[name]))
    rates = {name: 1.0 / statistics.median(t) for name, t in times.items()}
    print(f"\nEncoder gradient estimators: train steps of the 1-layer model, IWAE, batch {batch}, k = {k}\n")
    print("| estimator | steps/s | time per step vs reparam |")
    print("|---|---|---|")
    for name, rate in rates.items():
        relative = "(baseline)" if name == "reparam" else f"{rates['reparam'] / rate - 1.0:+.0%}"
        print(f"| {name} | {rate:.1f} | {relative} |", flush=True)


# ----------------------------------------------------------------------------- 5. variants, process per measurement
TRAIN_VARIANTS = (
    "fp32",
    "bf16-mixed",
    "compiled",
    "compiled-step",
    "compiled-step-nograph",
    "members-4",
    "members-10",
    "cli-eager",
    "cli-step",
    "pythae",
    "jax",
)
JAX_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "jax_iwae.py"  # ../shared/peers


def _members_available() -> bool:
    try:
        import iwae.members  # noqa: F401  (the members slice's batched trainer)
    except ImportError:
        return False
    return True


def variant_step(variant: str, batch: int, k: int, layers: int = 1):
    """One training step of Burda et al.'s ``layers``-layer model on IWAE(k), batch ``batch``, as ``variant``
    runs it: ``fp32``, ``bf16-mixed``, ``compiled`` (iwae.train's step: accumulate_gradients, then
    fused Adam), ``compiled-step`` (the whole step one compiled program, iwae.compiled.step, its
    compile time not in the rate; on CUDA replayed as a CUDA graph, ``compiled-step-nograph`` not),
    ``members-N`` (N members as one batched model; rate in member-steps/s, so the
    step returned counts N), ``gemm-floor`` (only the step's matrix products, replayed:
    benchmarks/gemm_floor.py; the ceiling of any implementation that uses PyTorch's GEMMs) or
    ``pythae`` (pythae's IWAE with the same architecture, its forward, backward and torch's Adam as
    its trainer runs them)."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(batch, 784)).to(DEVICE)
    if variant == "pythae":
        if layers != 1:
            raise NotImplementedError("pythae's IWAE has one stochastic layer")
        return _pythae_step(x, k)
    if variant.startswith("members-"):
        return _members_step(x, k, int(variant.split("-")[1]))
    if variant == "gemm-floor":  # the step's matrix products alone: a ceiling on any implementation's rate
        from gemm_floor import floor_step

        return floor_step(batch, k, layers, DEVICE)
    from iwae.compiled import compiled_forward

    model = VAE(ModelConfig.burda(layers)).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4, fused=True)
    spec = ObjectiveSpec("iwae", k=k)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    if variant in ("compiled-step", "compiled-step-nograph"):  # on CUDA replayed as a CUDA graph, or not
        from iwae.compiled.step import CompiledStep

        compiled = CompiledStep(
            model, opt, spec, batch, cuda_graph=DEVICE.type == "cuda" and variant == "compiled-step"
        )
        return lambda: compiled(x, generator)
    precision = "bf16-mixed" if variant == "bf16-mixed" else "32"
    # on CUDA with CUDA graphs, as --compile reduce-overhead (on CPU it is the default mode)
    forward = compiled_forward("reduce-overhead", DEVICE) if variant == "compiled" else None

    def step():
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, generator, precision=precision, forward=forward)
        opt.step()

    return step


def _members_step(x: torch.Tensor, k: int, members: int):
    """One step of ``members`` seeds of this IWAE(k) model trained as one batched model (iwae.members:
    weights stacked on a member dimension, each member with its own generator and minibatch); the
    rate printed is steps/s of this function, so member-steps/s is ``members`` times it."""
    import iwae.members.loop as members_module
    import iwae.train.loop as train_module

    batch = x.shape[0]
    x_train = x.repeat(4, 1)  # a few minibatches to draw each member's own rows from
    group_members = []
    for seed in range(members):
        config = train_module.TrainConfig(objective="iwae", k=k, batch_size=batch, epochs=1, seed=seed, out="unused")
        torch.manual_seed(seed)
        model = train_module.build_model(config, x.shape[1]).to(DEVICE)
        group_members.append(
            members_module._Member(
                config,
                None,
                model=model,
                optimizer=train_module._make_optimizer(config, model, DEVICE),
                generator=torch.Generator(device=DEVICE).manual_seed(seed),
            )
        )
    group = members_module._Group(train_module, group_members, DEVICE)
    for m in group.members:
        m.order = torch.randperm(x_train.shape[0], generator=m.generator, device=DEVICE)
    kinds = members_module._kinds(train_module, group.members, 0)
    position = [0]

    def step():
        i = position[0] = (position[0] + batch) % (x_train.shape[0] - batch + 1)
        group.step(x_train, i, batch, k, group.latent_dims, True, kinds)
        group.optimizer.step()

    return step


def _pythae_models():
    from pythae.models import IWAE, IWAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):  # Burda et al.'s 784-200-200-50 tanh encoder
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh())
            self.mu, self.log_var = nn.Linear(200, 50), nn.Linear(200, 50)

        def forward(self, x):
            h = self.body(x.reshape(x.shape[0], -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784), nn.Sigmoid()
            )

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    def make(k: int):
        config = IWAEConfig(input_dim=(784,), latent_dim=50, number_samples=k, reconstruction_loss="bce")
        return IWAE(config, encoder=Encoder(), decoder=Decoder()).to(DEVICE)

    return make


def _pythae_step(x: torch.Tensor, k: int):
    model = _pythae_models()(k)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # pythae's trainer: torch's Adam, defaults

    def step():
        opt.zero_grad(set_to_none=True)
        model({"data": x}).loss.backward()
        opt.step()

    return step


def variant_eval_rate(variant: str, images: int, k: int = 5000) -> float:
    """L_5000 images/s of iwae (``iwae.evaluate.log_likelihood``) or pythae (``get_nll`` with its default
    of 100 samples per decoder call: 2,500, iwae's CPU chunk, was no faster, 4.3-4.6 against 4.6-4.75
    images/s on 1 core)."""
    if variant == "iwae":
        return eval_rate(images, k)
    torch.manual_seed(0)
    model = _pythae_models()(1).eval()
    x = torch.bernoulli(torch.rand(images, 784)).to(DEVICE)
    with torch.no_grad():
        model.get_nll(x[:1], n_samples=k)  # warm-up
        return images / _time(lambda: model.get_nll(x, n_samples=k))


def _measure(
    what: str, seconds: float, eval_images: int, data_dir: str | None = None, cli_images: str | None = None
) -> float:
    """The child process's one measurement: ``train:VARIANT:B:K[:LAYERS]`` (steps/s) or ``eval:VARIANT`` (images/s)."""
    kind, variant, *rest = what.split(":")
    if kind == "eval":
        return variant_eval_rate(variant, eval_images)
    batch, k, *layers = map(int, rest)
    if variant.startswith("cli-"):  # iwae train's own rate, in processes of its own (benchmarks/train_rate.py)
        from train_rate import DEFAULT_DATA, train_rate

        compile = {"cli-eager": "none", "cli-step": "step"}[variant]
        threads = torch.get_num_threads()
        data_dir = data_dir or os.environ.get("IWAE_DATA_DIR") or DEFAULT_DATA
        extra = ("--layers", str(layers[0])) if layers else ()
        sizes = dict(zip(("small", "large"), map(int, cli_images.split(",")))) if cli_images else {}
        return train_rate(k, batch, compile=compile, threads=threads, data_dir=data_dir, extra=extra, **sizes)
    return _step_rate(variant_step(variant, batch, k, *layers), seconds)


def _jax_python(args: argparse.Namespace) -> tuple[str | None, str]:
    """The Python that runs the JAX peer (``--jax-python`` or ``$IWAE_JAX_PYTHON``) if it imports jax and
    optax and the peer script is there, else None; and a line saying which, or why not."""
    import os
    import subprocess

    python = args.jax_python or os.environ.get("IWAE_JAX_PYTHON")
    setup = "see ../shared/peers/README.md for its venv"
    if not python:
        return None, f"JAX peer: skipped, no Python with jax given (--jax-python PATH or IWAE_JAX_PYTHON; {setup})"
    if not JAX_SCRIPT.is_file():
        return None, f"JAX peer: skipped, {JAX_SCRIPT} not found"
    try:
        done = subprocess.run(
            [python, "-c", "import jax, optax; print(jax.__version__, optax.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"JAX peer: skipped, {python} does not run ({e})"
    if done.returncode:
        return None, f"JAX peer: skipped, {python} cannot import jax and optax ({setup})"
    jax_version, optax_version = done.stdout.split()
    return python, f"JAX peer: {JAX_SCRIPT.name}, jax {jax_version}, optax {optax_version}, run by {python}"


def _jax_child(what: str, args: argparse.Namespace) -> float | str:
    """One measurement of the JAX peer in its own process (``jax_iwae.py --one``, pinned to as many CPUs
    as iwae's threads, 2 by default): steps/s or images/s."""
    import subprocess

    kind, _, *rest = what.split(":")
    if kind == "train" and len(rest) > 2 and rest[2] != "1":
        return "skipped: the JAX peer has one stochastic layer"
    sizes = rest[:2] if kind == "train" else [str(args.eval_images), "5000"]
    cmd = [args.jax_python, str(JAX_SCRIPT), "--one", kind, *sizes, "--cpus", str(args.threads or 2)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"failed: {(done.stderr.strip().splitlines() or ['no output'])[-1][:120]}"


def _child(what: str, args: argparse.Namespace) -> float | str:
    """Runs one measurement in a fresh process; its rate, or the reason it has none."""
    import os
    import subprocess
    import sys

    if what.split(":")[1] == "jax":
        return _jax_child(what, args)
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        what,
        "--seconds",
        str(args.seconds),
        "--device",
        args.device,
        "--eval-images",
        str(args.eval_images),
    ] + (["--threads", str(args.threads)] if args.threads else [])
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--cli-images", args.cli_images] if args.cli_images else []
    env = dict(os.environ)
    if args.peers_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), args.peers_path]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RATE "):
            return float(line.split()[1])
        if line.startswith("SKIP "):
            return line[5:]
    return f"failed: {(done.stderr.strip().splitlines() or ['no output'])[-1][:120]}"


def variants_table(args: argparse.Namespace, batches: list[int], ks: list[int]) -> None:
    """Section 5: each implementation's rate, median over ``args.rounds`` alternating rounds of
    one process per measurement, and its ratio to float32 eager (and to pythae)."""
    import importlib.util
    import sys

    if args.peers_path:
        sys.path.append(args.peers_path)
    have_pythae = args.peers and importlib.util.find_spec("pythae") is not None
    args.jax_python, jax_note = _jax_python(args) if args.peers else (None, None)
    have_jax = args.jax_python is not None
    variants = (
        ["fp32", "bf16-mixed", "compiled", "compiled-step"]
        + (["compiled-step-nograph"] if DEVICE.type == "cuda" else [])
        + (["members-4", "members-10"] if _members_available() else [])
        + (["cli-eager", "cli-step"] if args.cli and DEVICE.type == "cpu" else [])
        + (["pythae"] if have_pythae else [])
        + (["jax"] if have_jax else [])
        + ["gemm-floor"]
    )
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    layer_counts = [int(v) for v in args.layers.split(",")]
    cell_name = lambda v, b, k, l: f"train:{v}:{b}:{k}" + (f":{l}" if l != 1 else "")  # noqa: E731
    cells = [
        cell_name(v, b, k, l)
        for l in layer_counts
        for b in batches
        for k in ks
        for v in variants
        if v not in ("pythae", "jax") or l == 1
    ]
    if not args.no_eval:
        cells += ["eval:iwae"] + (["eval:pythae"] if have_pythae else []) + (["eval:jax"] if have_jax else [])
    results = {cell: [] for cell in cells}
    for r in range(args.rounds):
        for cell in cells:  # alternating: every implementation once per round, in turn
            results[cell].append(_child(cell, args))
            print(f"# round {r + 1}/{args.rounds} {cell}: {results[cell][-1]}", file=sys.stderr, flush=True)

    def rate(cell: str) -> float | str:
        numbers = [v for v in results[cell] if isinstance(v, float)]
        return statistics.median(numbers) if numbers else results[cell][-1]

    notes = [] if _members_available() else ["batched members: skipped, iwae.members is not importable"]
    if args.peers and not have_pythae:
        notes.append("pythae: not importable (pip install --no-deps pythae, or --peers-path DIR)")
    if jax_note:
        notes.append(jax_note)
    if args.cli:
        notes.append(
            "cli-eager, cli-step: iwae train's own rate (metrics.csv's epoch time, runs of "
            "2,000 and 12,000 MNIST images differenced: start-up and compiling cancel)"
        )
    print(f"\nSide by side: one process per measurement, {args.rounds} alternating rounds, median\n")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({cell: rate(cell) for cell in cells}, indent=1) + "\n")
    print("| what | layers | batch | k | implementation | rate | vs fp32 eager | vs pythae | vs JAX |")
    print("|---|---|---|---|---|---|---|---|---|")
    for l, b, k in ((l, b, k) for l in layer_counts for b in batches for k in ks):
        cell = lambda v: cell_name(v, b, k, l)  # noqa: E731
        base = rate(cell("fp32")) if "fp32" in variants else None
        peer = rate(cell("pythae")) if have_pythae and l == 1 and "pythae" in variants else None
        jax = rate(cell("jax")) if have_jax and l == 1 and "jax" in variants else None
        for v in variants:
            if cell(v) not in results:
                continue
            value = rate(cell(v))
            if isinstance(value, float) and v.startswith("members-"):
                value *= int(v.split("-")[1])  # member-steps/s
            unit = "member-steps/s" if v.startswith("members-") else "steps/s"
            shown = f"{value:.1f} {unit}" if isinstance(value, float) else value
            ratio = f"{value / base:.2f}x" if isinstance(value, float) and isinstance(base, float) else ""
            vs_peer, vs_jax = (
                f"{value / other:.2f}x"
                if isinstance(value, float) and isinstance(other, float) and v != name and v not in ("pythae", "jax")
                else ""
                for name, other in (("pythae", peer), ("jax", jax))
            )
            what = "iwae train" if v.startswith("cli-") else "train step"
            print(f"| {what} | {l} | {b} | {k} | {v} | {shown} | {ratio} | {vs_peer} | {vs_jax} |", flush=True)
    if args.no_eval:
        return
    iw = rate("eval:iwae")
    py = rate("eval:pythae") if have_pythae else None
    jx = rate("eval:jax") if have_jax else None
    for name, value in (("iwae", iw), ("pythae", py), ("jax", jx)):
        if value is None:
            continue
        shown = f"{value:.2f} images/s" if isinstance(value, float) else value
        vs_peer, vs_jax = (
            f"{value / other:.2f}x" if name == "iwae" and isinstance(value, float) and isinstance(other, float) else ""
            for other in (py, jx)
        )
        print(f"| L_5000 | 1 | {args.eval_images} images | 5000 | {name} | {shown} | | {vs_peer} | {vs_jax} |")
    for note in notes:
        print(f"\n{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--eval-images", type=int, default=40, help="images for the L_5000 rate")
    parser.add_argument(
        "--impl",
        choices=["iwae", "plain"],
        default="iwae",
        help="iwae's kernels, or PyTorch's stock ones (the plain eager baseline)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    parser.add_argument(
        "--estimators",
        action="store_true",
        help="run only the gradient estimators' section (steps/s of reparam, stl, dreg, rws)",
    )
    parser.add_argument("--no-estimators", action="store_true", help="leave the gradient estimators' section out")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batches", default="20,100", help="training batch sizes, comma-separated (default 20,100)")
    parser.add_argument("--ks", default="1,5,50", help="training k, comma-separated (default 1,5,50)")
    parser.add_argument(
        "--gemm-sizes",
        default=None,
        help="square sizes for the GEMM peak (default 1024,2048,3072; on CUDA 2048,4096,8192)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="run only section 5: fp32 / bf16-mixed / compiled (/ members) side by side",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="with --variants: also time pythae, if importable, and the JAX peer (--jax-python)",
    )
    parser.add_argument("--peers-path", default=None, help="a folder to import pythae from (appended to sys.path)")
    parser.add_argument(
        "--jax-python",
        default=None,
        help="with --peers: a Python with jax and optax (its own venv) to run the JAX peer "
        "../shared/peers/jax_iwae.py (default: $IWAE_JAX_PYTHON; none: no JAX rows)",
    )
    parser.add_argument(
        "--cli",
        action="store_true",
        help="with --variants: also iwae train's own epoch rate, eager and --compile step (CPU; MNIST from --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="with --cli: the folder holding mnist/ (default $IWAE_DATA_DIR, ../shared/data)",
    )
    parser.add_argument(
        "--cli-images",
        default=None,
        help="with --cli: training images of the two runs differenced, SMALL,LARGE (default 2000,12000; a fast "
        "cell wants a larger LARGE, e.g. 2000,50000, so that the difference lasts seconds)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --variants: alternating rounds (default 3)")
    parser.add_argument("--only", default=None, help="with --variants: these implementations only, e.g. fp32,compiled")
    parser.add_argument("--layers", default="1", help="with --variants: stochastic layers, e.g. 1,2 (default 1)")
    parser.add_argument("--no-eval", action="store_true", help="with --variants: leave L_5000 out")
    parser.add_argument("--json", default=None, help="with --variants: also write the rates to this JSON file")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child process of --variants
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench.py: error: --device cuda, but CUDA is not available on this machine\n")
    try:
        default_sizes = "2048,4096,8192" if DEVICE.type == "cuda" else "1024,2048,3072"
        batches, ks, sizes = (
            [int(v) for v in value.split(",")] for value in (args.batches, args.ks, args.gemm_sizes or default_sizes)
        )
    except ValueError:
        parser.exit(2, "bench.py: error: --batches, --ks and --gemm-sizes want comma-separated integers\n")
    if not batches or not ks or not sizes or min(batches + ks + sizes) < 1:
        parser.exit(2, "bench.py: error: --batches, --ks and --gemm-sizes must be positive integers\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_allocator()  # as iwae.train and iwae.evaluate do
    if DEVICE.type == "cuda":
        where = (
            f"{torch.cuda.get_device_name(DEVICE)}, CUDA {torch.version.cuda}, "
            f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
        )
    else:
        where = (
            f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
        )
    if args.measure:
        if args.peers_path:
            import sys

            sys.path.append(args.peers_path)
        try:
            print(f"RATE {_measure(args.measure, args.seconds, args.eval_images, args.data_dir, args.cli_images)}")
        except (ImportError, NotImplementedError) as e:
            print(f"SKIP {e}")
        return
    if args.variants:
        print(f"# iwae benchmark: torch {torch.__version__}, {where}")
        variants_table(args, batches, ks)
        return
    if args.estimators:
        print(f"# iwae benchmark: torch {torch.__version__}, {where}")
        estimator_table(args.seconds)
        return

    cfg = ModelConfig.burda(1)
    gemm_peak(sizes, repeats=10)  # warm-up: wakes the cores and threads before anything is timed
    peak = gemm_peak(sizes)
    print(f"# iwae benchmark: torch {torch.__version__}, {where}")
    print(f"float32 GEMM peak (torch.mm on {DEVICE}): {peak:.0f} GFLOP/s\n")
    variants = [("iwae", contextlib.nullcontext)] if args.impl == "iwae" else [("plain eager", plain_kernels)]
    print("| what | batch | k | implementation | rate | GFLOP/s | of GEMM peak |")
    print("|---|---|---|---|---|---|---|")
    for batch in batches:
        for k in ks:
            flops = 3 * matmul_flops(cfg, batch, batch * k)
            rates = [(name, _with(ctx, train_step_rate, batch, k, args.seconds)) for name, ctx in variants]
            rates.append(
                (
                    "its matrix products alone",
                    gemm_only_rate(_linear_shapes(cfg, batch, batch * k), True, min(1.0, args.seconds)),
                )
            )
            for name, rate in rates:
                print(
                    f"| train step | {batch} | {k} | {name} | {rate:.1f} steps/s | {rate * flops / 1e9:.0f} | "
                    f"{rate * flops / 1e9 / peak:.0%} |",
                    flush=True,
                )
    flops_img = matmul_flops(cfg, 1, 5000)
    rates = [(name, _with(ctx, eval_rate, args.eval_images)) for name, ctx in variants]
    rows = CPU_ROWS_PER_CALL if DEVICE.type == "cpu" else 5000  # one decoder call of L_5000, forward only
    rates.append(
        (
            "its matrix products alone",
            gemm_only_rate(_linear_shapes(cfg, 1, rows), False, min(1.0, args.seconds)) * rows / 5000,
        )
    )
    for name, rate in rates:
        gflops = rate * flops_img / 1e9
        full = 10000 / rate
        ideal = 10000 * flops_img / 1e9 / peak
        print(
            f"| L_5000 | {args.eval_images} images | 5000 | {name} | {rate:.2f} images/s | {gflops:.0f} | "
            f"{gflops / peak:.0%} (10,000 images: {full:.0f} s, {full / ideal:.2f}x the {ideal:.0f} s "
            "the peak allows) |",
            flush=True,
        )
    if args.impl == "iwae" and not args.no_estimators:  # the estimators' section times iwae's own kernels
        estimator_table(args.seconds)


if __name__ == "__main__":
    main()
