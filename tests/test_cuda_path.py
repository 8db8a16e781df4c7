"""Tests for the CUDA path (issue 14) that run on CPU: kernels chosen by device, the q_EW figure's
tensors on the model's device, sampling that leaves every global RNG alone; and, marked ``cuda``
(skipped where CUDA is absent, run by benchmarks/gpu_check.sh), the same on a real GPU.

Without a GPU the CUDA branches are reached through the meta device (tensors with a device and a
shape but no data) or by asking the selection functions about ``torch.device("cuda")``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from iwae.models import VAE, ModelConfig, networks
from iwae.models.networks import BernoulliMLP, Tanh, output_layer_kernel, tanh_kernel


def cuda(test):
    """Marks a test ``cuda`` and skips it where CUDA is absent (``pytest -m cuda`` selects them)."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))


# ----------------------------------------------------------------------------- item 3: kernels by device
def test_cpu_and_cuda_tanh_kernels_agree_in_value_and_gradient():
    """2 sigmoid(2h) - 1 (CPU's kernel) and torch.tanh (CUDA's), run both on CPU: same values and
    gradients to float32 rounding, including saturated inputs."""
    g = torch.Generator().manual_seed(0)
    h = torch.cat([4.0 * torch.randn(2000, generator=g), torch.tensor([-30.0, -10.0, 0.0, 10.0, 30.0])])
    cpu_kernel, cuda_kernel = tanh_kernel(torch.device("cpu")), tanh_kernel(torch.device("cuda"))
    assert cpu_kernel is not cuda_kernel
    h1, h2 = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    y1, y2 = cpu_kernel(h1), cuda_kernel(h2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=3e-7)
    upstream = torch.randn(h.shape, generator=g)
    (g1,), (g2,) = torch.autograd.grad(y1, h1, upstream), torch.autograd.grad(y2, h2, upstream)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-6)
    # negative control: the tolerance is tight enough to see a wrong formula
    assert not torch.allclose(torch.sigmoid(h), y2, atol=1e-3)


def test_cpu_and_cuda_output_layer_kernels_agree_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    h, w, b = torch.randn(3, 4, 20, generator=g), torch.randn(9, 20, generator=g), torch.randn(9, generator=g)
    args1 = [t.clone().requires_grad_(True) for t in (h, w, b)]
    args2 = [t.clone().requires_grad_(True) for t in (h, w, b)]
    y1, y2 = output_layer_kernel(torch.device("cpu"))(*args1), output_layer_kernel(torch.device("cuda"))(*args2)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(y1, h @ w.t() + b)  # both are the affine map
    upstream = torch.randn(y1.shape, generator=g)
    for a1, a2 in zip(torch.autograd.grad(y1, args1, upstream), torch.autograd.grad(y2, args2, upstream)):
        torch.testing.assert_close(a1, a2)


def test_cuda_selects_torch_tanh_and_f_linear_cpu_the_tuned_kernels():
    assert tanh_kernel(torch.device("cuda")) is torch.tanh
    assert tanh_kernel(torch.device("cuda:1")) is torch.tanh
    assert output_layer_kernel(torch.device("cuda")) is F.linear
    assert tanh_kernel(torch.device("cpu")) is networks._tanh_via_sigmoid
    assert output_layer_kernel(torch.device("cpu")) is networks._linear_then_bias


def test_modules_pick_their_kernel_from_the_tensor_s_device(monkeypatch):
    """On a non-CPU device (meta here: CUDA's branch, no data) the decoder runs torch.tanh and F.linear,
    never the CPU kernels; on CPU it runs the CPU kernels."""
    calls = []
    for name in ("_tanh_via_sigmoid", "_linear_then_bias"):
        real = getattr(networks, name)
        monkeypatch.setattr(networks, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    real_tanh, real_linear = torch.tanh, F.linear
    monkeypatch.setattr(torch, "tanh", lambda *a: calls.append("torch.tanh") or real_tanh(*a))
    monkeypatch.setattr(F, "linear", lambda *a: calls.append("F.linear") or real_linear(*a))

    decoder = BernoulliMLP(3, [5, 6], 7)
    logits = decoder.logits(torch.randn(4, 2, 3))
    assert logits.shape == (4, 2, 7)
    assert calls.count("_tanh_via_sigmoid") == 2 and calls.count("_linear_then_bias") == 1
    assert "torch.tanh" not in calls

    calls.clear()
    meta = decoder.to("meta")
    logits = meta.logits(torch.empty(4, 2, 3, device="meta"))
    assert logits.device.type == "meta" and logits.shape == (4, 2, 7)
    assert calls.count("torch.tanh") == 2 and calls.count("F.linear") == 3  # two hidden layers and the head
    assert "_tanh_via_sigmoid" not in calls and "_linear_then_bias" not in calls
    assert Tanh()(torch.empty(5, device="meta")).device.type == "meta"


@cuda
def test_cuda_decoder_matches_the_cpu_decoder_and_stays_on_the_gpu():
    torch.manual_seed(0)
    decoder = BernoulliMLP(50, [200, 200], 784)
    z = torch.randn(5, 20, 50)
    ref = decoder.logits(z)
    gpu = decoder.to("cuda")
    out = gpu.logits(z.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)  # TF32 may be on
    h = torch.randn(1000, device="cuda", requires_grad=True)
    y = Tanh()(h)
    y.sum().backward()
    torch.testing.assert_close(y, torch.tanh(h.detach()))
    assert h.grad.device.type == "cuda"


@cuda
def test_a_training_step_and_its_gradients_stay_on_the_gpu():
    from iwae.objectives import iwae

    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(2)).cuda()
    x = torch.bernoulli(torch.full((20, 784), 0.3, device="cuda"))
    generator = torch.Generator(device="cuda").manual_seed(0)
    log_w = model.log_weights(x, 50, generator)
    assert log_w.shape == (50, 20) and log_w.device.type == "cuda" and torch.isfinite(log_w).all()
    (-iwae(log_w).mean()).backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.parameters())


@cuda
def test_cuda_sampling_leaves_every_global_stream_alone():
    from iwae.analysis import sample_images

    model = VAE(ModelConfig(latent_dims=(6, 4), hidden_dims=((20,), (10,)))).cuda()
    cpu, gpus = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    a = sample_images(model, 8, seed=3, probabilities=False)
    assert torch.equal(a, sample_images(model, 8, seed=3, probabilities=False))
    assert a.device.type == "cpu" and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(torch.get_rng_state(), cpu)
    assert all(torch.equal(x, y) for x, y in zip(torch.cuda.get_rng_state_all(), gpus))


@cuda
def test_the_qew_figure_runs_with_a_model_on_the_gpu(tmp_path):
    """The q_EW report and figure of a CUDA model: the exact (sampling-free) columns agree with the
    CPU model's, and the figure is written."""
    from iwae.figures import qew_figure
    from iwae.qew import qew_report

    torch.manual_seed(1)
    model = VAE(ModelConfig(input_dim=8, latent_dims=(2,), hidden_dims=((16,),))).eval()
    x = torch.bernoulli(torch.full((2, 8), 0.5))
    ref = qew_report(model, x, ks=(1, 5), samples=2000, generator=torch.Generator().manual_seed(0), grid_size=31)
    gpu, xg = model.cuda(), x.cuda()
    rows = qew_figure(
        gpu,
        xg,
        (1, 5),
        tmp_path / "qew.png",
        samples=2000,
        generator=torch.Generator(device="cuda").manual_seed(0),
        grid_size=31,
    )
    assert (tmp_path / "qew.png").stat().st_size > 0
    for r, c in zip(rows, ref):
        assert (r["image"], r["k"]) == (c["image"], c["k"])
        for key in ("tv_q", "kl_q", "edge_mass", "half_width"):
            assert r[key] == pytest.approx(c[key], rel=1e-3, abs=1e-4), key


@cuda
def test_a_real_cuda_out_of_memory_is_a_device_failure():
    from iwae.experiments.engine import is_device_failure

    with pytest.raises(torch.OutOfMemoryError) as caught:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # a petabyte
    assert is_device_failure(caught.value)
    torch.cuda.empty_cache()
    assert torch.ones(3, device="cuda").sum().item() == 3.0  # out of memory leaves the context usable


# ----------------------------------------------------------------------------- benchmarks/gpu_check.sh
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_clearly_without_cuda():
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "gpu_check.sh: error: CUDA is not available" in done.stderr
    bad = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr


def test_the_kernel_benchmark_times_both_variants_and_names_the_one_in_use():
    spec = importlib.util.spec_from_file_location("iwae_kernels_bench", ROOT / "benchmarks" / "kernels.py")
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    rows = kernels.kernel_rows(torch.device("cpu"), 50, seconds=0.01)
    assert len(rows) == 6 and all(seconds > 0 for _, _, seconds, _ in rows)
    used = {variant for _, variant, _, in_use in rows if in_use}
    assert used == {"2 sigmoid(2h) - 1", "matmul + add_(bias)", "iwae fused"}  # CPU's choices
