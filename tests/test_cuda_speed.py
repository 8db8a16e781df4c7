"""CUDA-only tests of training and evaluation on a real GPU (issue 13): every tensor a run builds on
the device, its generators there, checkpoint/resume on CUDA, evaluation's chunking under the memory
budget, bf16-mixed and compiled steps on CUDA (--compile step: inductor's program, called and replayed
as a CUDA graph). Marked ``cuda``; they skip where CUDA is absent
(``pytest -m cuda`` and benchmarks/gpu_check.sh run them).

Written without a GPU to run them on: they were checked by reading, and each one's CPU counterpart
runs in tests/test_train.py, test_precision.py, test_compiled.py and test_memory_budget.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from iwae import rundir
from iwae.compiled.step import CompiledStep
from iwae.data import Splits
from iwae.estimators import ObjectiveSpec, accumulate_gradients
from iwae.evaluate import log_likelihood
from iwae.models import VAE, ModelConfig
from iwae.train import TrainConfig, train


def cuda(test):
    """Marks a test ``cuda`` and skips it where CUDA is absent (``pytest -m cuda`` selects them)."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))


def _splits(n_train: int = 60) -> Splits:
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.bernoulli(torch.rand(n, 784, generator=g) * 0.6, generator=g)  # noqa: E731
    return Splits("mnist", torch.rand(n_train, 784, generator=g), images(20), images(20), True)


@cuda
def test_every_tensor_of_a_cuda_run_lives_on_the_gpu(tmp_path, monkeypatch):
    """The model's parameters and buffers, Adam's state and the training generator are on the GPU;
    the files of the run are device-independent (loaded on the CPU by default)."""
    seen = {}
    real_step = accumulate_gradients

    def spy(model, x, spec, generator=None, *args, **kwargs):
        seen["x"], seen["generator"] = x.device, generator.device
        seen["params"] = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
        return real_step(model, x, spec, generator, *args, **kwargs)

    import iwae.train.loop as train_module

    monkeypatch.setattr(train_module, "accumulate_gradients", spy)
    opt = {}
    real_adam = torch.optim.Adam

    def adam(*args, **kwargs):
        opt["adam"] = real_adam(*args, **kwargs)
        return opt["adam"]

    monkeypatch.setattr(train_module.torch.optim, "Adam", adam)
    config = TrainConfig(
        layers=2,
        prior="vamp",
        components=5,
        k=3,
        epochs=1,
        schedule="constant",
        device="cuda",
        out=str(tmp_path / "run"),
    )
    train(config, progress=False, splits=_splits())
    assert seen["x"].type == seen["generator"].type == "cuda" and seen["params"] == {"cuda"}
    states = [t for s in opt["adam"].state.values() for t in s.values() if torch.is_tensor(t)]
    assert states and all(t.device.type == "cuda" for t in states)
    assert rundir.read_checkpoint(config.out)[1]  # readable on a machine without the GPU's state
    assert all(p.device.type == "cpu" for p in rundir.load_model(config.out).parameters())


@cuda
def test_a_cuda_run_resumed_ends_as_the_uninterrupted_run(tmp_path):
    """2 epochs straight against 1 epoch, then resumed for the second, on the GPU. The kernels of
    this model (matmul, elementwise, sums over fixed shapes) are deterministic for one device and
    one shape, so the parameters must agree bit for bit; a difference here names a kernel that is not."""
    splits = _splits()
    straight = TrainConfig(k=5, epochs=2, schedule="constant", device="cuda", out=str(tmp_path / "straight"))
    train(straight, progress=False, splits=splits)
    first = TrainConfig(k=5, epochs=1, schedule="constant", device="cuda", out=str(tmp_path / "resumed"))
    train(first, progress=False, splits=splits)
    train(TrainConfig(**{**first.to_dict(), "epochs": 2}), resume=True, progress=False, splits=splits)
    a, b = rundir.load_model(straight.out).state_dict(), rundir.load_model(first.out).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@cuda
def test_cuda_evaluation_stays_under_its_memory_budget():
    """L_5000 of 8 images with a 64 MiB budget: the peak memory the evaluation adds stays under the
    budget (plus the images and the model's weights), and L_k agrees with a 4 GiB, few-call run within
    the Monte Carlo noise of 5000 samples."""
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1)).cuda().eval()
    x = torch.bernoulli(torch.full((8, 784), 0.3)).cuda()
    budget = 64 << 20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    small = log_likelihood(model, x, 5000, memory_budget=budget, generator=torch.Generator("cuda").manual_seed(0))
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= budget
    large = log_likelihood(model, x, 5000, memory_budget=4 << 30, generator=torch.Generator("cuda").manual_seed(1))
    assert small.device.type == "cuda" and small.dtype == torch.float32
    torch.testing.assert_close(small, large, rtol=0, atol=1.0)


@cuda
def test_bf16_mixed_on_cuda_keeps_float32_parameters_and_trains_close_to_float32(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    splits = _splits(n_train=200)
    models = {}
    for precision in ("32", "bf16-mixed"):
        config = TrainConfig(
            k=5, epochs=3, schedule="constant", device="cuda", precision=precision, out=str(tmp_path / precision)
        )
        train(config, progress=False, splits=splits)
        models[precision] = rundir.load_model(config.out, "cuda")
    start = VAE(ModelConfig.burda(1)).state_dict()
    for name, p32 in models["32"].state_dict().items():
        pbf = models["bf16-mixed"].state_dict()[name]
        assert pbf.dtype == torch.float32
        moved = (p32.cpu() - start[name]).norm()
        assert (pbf - p32).norm().cpu() <= 0.2 * moved + 1e-6, name
    model = models["bf16-mixed"]
    x = splits.test.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        log_w = model.log_weights(x, 5, torch.Generator("cuda").manual_seed(0))
    assert log_w.dtype == torch.float32  # distribution parameters leave the network in float32


@cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_cuda_step_computes_the_eager_step(mode):
    from iwae.compiled import compiled_forward

    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (8,), ((32,),))).cuda()
    x = torch.bernoulli(torch.full((20, 784), 0.3, device="cuda"))
    spec = ObjectiveSpec("iwae", 5)
    forward = compiled_forward(mode, "cuda")
    results = []
    for fwd in (None, forward, forward):  # the compiled one twice: CUDA graphs replay on the second call
        model.zero_grad(set_to_none=True)
        bound = accumulate_gradients(model, x, spec, torch.Generator("cuda").manual_seed(0), forward=fwd)
        results.append((bound.clone(), [p.grad.clone() for p in model.parameters()]))
    (b0, g0), *compiled = results
    for b, g in compiled:
        torch.testing.assert_close(b, b0, rtol=1e-4, atol=1e-3)
        for a, e in zip(g, g0):
            torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-4)


@cuda
@pytest.mark.parametrize("graph", [False, True], ids=["program", "cuda-graph"])
def test_the_compiled_cuda_step_takes_the_eager_step(graph, monkeypatch):
    """--compile step on CUDA: inductor's program for the GPU, replayed as a CUDA graph or called, takes the
    eager step (accumulate_gradients, fused Adam) from the same weights and generator: the bounds and
    the updated weights to float rounding (TF32 off), the generator's state exactly; a short batch and a
    new learning rate between steps, and the whole state in place (the optimizer's own tensors)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (8,), ((32,),))).cuda()
    twin = copy.deepcopy(model)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, eps=1e-4, fused=True) for m in (model, twin)]
    x = torch.bernoulli(torch.full((20, 784), 0.3, device="cuda"))
    spec = ObjectiveSpec("iwae", 5, estimator="dreg")
    step = CompiledStep(model, opts[0], spec, 20, cuda_graph=graph)
    g, g_ref = torch.Generator("cuda").manual_seed(3), torch.Generator("cuda").manual_seed(3)
    for rows, lr in ((20, 1e-3), (20, 1e-3), (7, 3e-4), (20, 3e-4)):
        for opt in opts:
            opt.param_groups[0]["lr"] = lr
        bound, finite = step(x[:rows], g)
        opts[1].zero_grad(set_to_none=True)
        bound_ref = accumulate_gradients(twin, x[:rows], spec, g_ref)
        opts[1].step()
        assert bool(finite) and torch.equal(g.get_state(), g_ref.get_state())
        torch.testing.assert_close(bound, bound_ref, rtol=1e-5, atol=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
        assert opts[0].state[p]["step"].device.type == "cuda" and int(opts[0].state[p]["step"]) == 4


@cuda
def test_a_cuda_run_with_the_compiled_step_resumes_bit_exactly(tmp_path):
    """iwae train --compile step --device cuda: two epochs straight against one and a resume, bit for bit."""
    splits = _splits()
    settings = dict(latent_dims=[4], hidden_dims=[[16]], k=3, batch_size=10, schedule="constant", device="cuda")
    straight = train(TrainConfig(**settings, epochs=2, compile="step", out=str(tmp_path / "a")), splits=splits)
    train(TrainConfig(**settings, epochs=1, compile="step", out=str(tmp_path / "b")), splits=splits)
    resumed = train(
        TrainConfig(**settings, epochs=2, compile="step", out=str(tmp_path / "b")), resume=True, splits=splits
    )
    a, b = rundir.read_checkpoint(straight)[0], rundir.read_checkpoint(resumed)[0]
    assert sorted(a) == sorted(b) and all(torch.equal(a[key], b[key]) for key in a)
