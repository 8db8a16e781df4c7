"""Tests for iwae.evaluate: chunked L_k, its memory budget, L_k growing with k, active units,
and evaluate() on a run directory."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import by_hand
import numpy as np
import pytest
import torch

import iwae
from iwae import evaluate as evaluate_module
from iwae import memory, objectives, rundir, runtime
from iwae.checkpoint import CheckpointError
from iwae.data import Splits, load_dataset
from iwae.data.registry import MNIST_SHA256
from iwae.errors import ConfigError
from iwae.evaluate import active_units, log_likelihood
from iwae.models import VAE, ModelConfig
from iwae.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shared_data_dir, mnist_splits) -> Path:
    """A trained-ish model: one epoch of IWAE(k=5) on 1,000 MNIST images (config points at the real data)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    splits = Splits("mnist", mnist_splits.train, mnist_splits.valid[:50], mnist_splits.test, True)
    cfg = TrainConfig(objective="iwae", k=5, epochs=1, train_subset=1000, data_dir=str(shared_data_dir), out=str(out))
    return train(cfg, progress=False, splits=splits)


@pytest.fixture(scope="module")
def trained_model(trained_run) -> VAE:
    return iwae.load(trained_run)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- chunking
def test_same_chunking_gives_identical_values(trained_model, mnist_splits):
    model, x = trained_model, mnist_splits.test[:6]
    bpr = memory.row_budget(model, torch.device("cpu"))  # the budget one sample row takes
    k = 40
    budgets = [bpr * k * 6, bpr * k * 10, bpr * k * 6 + bpr - 1]
    chunkings = {memory.chunking(model, k, 6, b, torch.device("cpu")) for b in budgets}
    assert chunkings == {(6, k)}  # all the images in one chunk, all the samples at once
    values = [log_likelihood(model, x, k, memory_budget=b, generator=gen(7)) for b in budgets]
    assert values[0].shape == (6,)
    assert torch.isfinite(values[0]).all() and (values[0] < 0).all()
    for v in values[1:]:
        assert torch.equal(v, values[0])
    # another seed gives other numbers
    assert not torch.equal(log_likelihood(model, x, k, memory_budget=budgets[0], generator=gen(8)), values[0])


def test_different_chunking_agrees_within_monte_carlo_error(trained_model, mnist_splits):
    model, x = trained_model, mnist_splits.test[:60]
    bpr = memory.row_budget(model, torch.device("cpu"))
    k = 40
    one_chunk = bpr * k * 60
    tiny = bpr * 7  # 1 image x 6 chunks of 7 (or fewer) samples
    assert memory.chunking(model, k, 60, one_chunk, torch.device("cpu")) == (60, 40)
    assert memory.chunking(model, k, 60, tiny, torch.device("cpu")) == (1, 7)
    a = log_likelihood(model, x, k, memory_budget=one_chunk, generator=gen(1)).double()
    b = log_likelihood(model, x, k, memory_budget=tiny, generator=gen(2)).double()
    d = a - b
    assert abs(d.mean().item()) < 4 * d.std().item() / math.sqrt(len(d)) + 1e-6
    # the same per-image quantity: across images the two estimates are almost perfectly correlated
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


def test_log_likelihood_draws_exactly_k_samples_per_image(trained_model, mnist_splits, monkeypatch):
    model, n, k = trained_model, 5, 23
    x = mnist_splits.test[:n]
    bpr = memory.row_budget(model, torch.device("cpu"))
    calls = []
    real = model.log_weights_from_posterior

    def recording(xb, loc, log_scale, num_samples, generator=None):
        out = real(xb, loc, log_scale, num_samples, generator)
        calls.append((xb.clone(), num_samples))
        return out

    monkeypatch.setattr(model, "log_weights_from_posterior", recording)
    for budget in (bpr * 5, bpr * 23, bpr * 50, bpr * 1000):
        calls.clear()
        out = log_likelihood(model, x, k, memory_budget=budget, generator=gen(0))
        assert out.shape == (n,) and torch.isfinite(out).all()
        per_image = torch.zeros(n, dtype=torch.long)
        for xb, s in calls:
            assert s * xb.shape[0] * bpr <= budget
            for row in xb:
                idx = [i for i in range(n) if torch.equal(x[i], row)]
                assert len(idx) == 1
                per_image[idx[0]] += s
        assert per_image.tolist() == [k] * n, budget


def test_k1_is_the_single_sample_log_weight(trained_model, mnist_splits):
    model, x = trained_model, mnist_splits.test[:4]
    ll = log_likelihood(model, x, 1, generator=gen(3))
    log_w = model.log_weights(x, 1, gen(3))
    torch.testing.assert_close(ll, objectives.iwae(log_w), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_chunking_respects_the_budget(device):
    dev = torch.device(device)  # only the device type matters; no CUDA needed
    for config in (ModelConfig.burda(1), ModelConfig.burda(2), ModelConfig(784, (2,), ((20,),))):
        model = VAE(config)
        bpr = memory.row_budget(model, dev)  # on the CPU, bytes_per_row times the C heap's factor
        assert bpr == memory.bytes_per_row(model) * (memory.CPU_HEAP_FACTOR if device == "cpu" else 1)
        for k in (1, 2, 5, 50, 999, 2500, 2501, 5000, 12345):
            for n in (1, 7, 100, 10000):
                for rows in (1, 2, 3, 10, 100, 2499, 2500, 2501, 10**6):
                    for budget in (rows * bpr, rows * bpr + bpr - 1):
                        images, samples = memory.chunking(model, k, n, budget, dev)
                        case = (config.latent_dims, device, k, n, budget)
                        assert 1 <= images <= n, case
                        assert 1 <= samples <= k, case
                        assert images * samples * bpr <= budget, case
                        if device == "cpu":
                            assert images * samples <= memory.CPU_ROWS_PER_CALL, case
                        # all k samples, in chunks no more numerous than needed
                        sizes = [min(samples, k - j) for j in range(0, k, samples)]
                        assert sum(sizes) == k, case
                        max_rows = min(rows, memory.CPU_ROWS_PER_CALL) if device == "cpu" else rows
                        assert len(sizes) == math.ceil(k / max_rows), case
                        if k <= max_rows:
                            assert images == min(n, max_rows // k), case


def test_bad_arguments_raise(trained_model, mnist_splits):
    x = mnist_splits.test[:2]
    bpr = memory.bytes_per_row(trained_model)
    with pytest.raises(ValueError, match=r"k must be >= 1, got 0"):
        log_likelihood(trained_model, x, 0)
    with pytest.raises(ValueError, match=r"k must be >= 1"):
        log_likelihood(trained_model, x, -5)
    with pytest.raises(ValueError, match=r"memory_budget"):
        log_likelihood(trained_model, x, 10, memory_budget=bpr - 1)
    with pytest.raises(ValueError, match=r"memory_budget"):
        log_likelihood(trained_model, x, 10, memory_budget=0)
    log_likelihood(trained_model, x, 3, memory_budget=bpr)  # exactly one row fits


def test_lk_increases_with_k(trained_model, mnist_splits):
    model, x = trained_model, mnist_splits.test[:100]
    l1, l10, l100 = (log_likelihood(model, x, k, generator=gen(k)).double() for k in (1, 10, 100))
    for lo, hi in ((l1, l10), (l10, l100)):
        d = hi - lo
        assert d.mean().item() > 3 * d.std().item() / math.sqrt(len(d)), (d.mean(), d.std())
    assert l1.mean() < l10.mean() < l100.mean()
    assert -l100.mean().item() < 300  # a trained-ish model


def test_log_likelihood_restores_training_mode(trained_model, mnist_splits):
    trained_model.train()
    try:
        log_likelihood(trained_model, mnist_splits.test[:2], 3)
        assert trained_model.training
    finally:
        trained_model.eval()


# ----------------------------------------------------------------------------- active units
def binary_inputs(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 1, generator=g) * torch.rand(1, 784, generator=g)  # varied images
    return torch.bernoulli(p, generator=g)


def test_constant_encoder_mean_has_no_active_units():
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1))
    head = model.encoder[0].head
    with torch.no_grad():
        head.weight[:50].zero_()
        head.bias[:50].normal_(0, 3)  # a constant, even a large one, is not activity
    units = active_units(model, binary_inputs())
    assert units.counts == [0]
    assert units.variances[0].shape == (50,)
    assert torch.all(units.variances[0] < 1e-10)


def test_exactly_three_active_units():
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(1))
    head = model.encoder[0].head
    width = head.weight.shape[1]
    active = [3, 17, 42]
    with torch.no_grad():
        head.weight[:50].zero_()
        for u in active:
            head.weight[u] = torch.randn(width) * 2.0
        head.weight[5] = torch.randn(width) * 1e-4  # varies, but far below the threshold
    x = binary_inputs()
    units = active_units(model, x)
    assert units.counts == [3]
    assert (units.variances[0] > 0.01).nonzero().flatten().tolist() == active
    assert units.variances[0][active].min() > 0.1  # strongly, not marginally
    # the variance is over x of q's mean, without Bessel's correction
    loc, _ = model.encoder[0].loc_log_scale(x)
    torch.testing.assert_close(units.variances[0], loc.detach().var(0, unbiased=False))
    # a higher threshold counts fewer
    assert active_units(model, x, threshold=1e6).counts == [0]


def test_two_layer_model_gives_two_counts():
    torch.manual_seed(0)
    model = VAE(ModelConfig.burda(2))
    x = binary_inputs(100)
    units = active_units(model, x, generator=gen(0))
    assert len(units.counts) == 2
    assert [v.shape[0] for v in units.variances] == [100, 50]
    with torch.no_grad():
        model.encoder[1].head.weight[:50].zero_()
    units = active_units(model, x, generator=gen(0))
    assert len(units.counts) == 2 and units.counts[1] == 0


# ----------------------------------------------------------------------------- evaluate()
def test_evaluate_run_dir(trained_run, trained_model, mnist_splits):
    report = evaluate_module.evaluate(trained_run, k=20, test_subset=30)
    for key in ("nll", "nll_stderr", "k", "n_test", "active_units", "active_units_per_layer"):
        assert key in report, key
    assert report["k"] == 20 and report["n_test"] == 30
    # the NLL is -L_20 averaged over the first 30 test images: L_20 by hand from model.log_weights,
    # within the Monte Carlo spread of the estimate
    lk, spread = by_hand.mean_lk(trained_model, mnist_splits.test[:30], 20)
    assert abs(report["nll"] + lk) < max(0.3, 8 * spread), (report["nll"], lk, spread)
    assert math.isfinite(report["nll_stderr"]) and report["nll_stderr"] > 0
    assert len(report["active_units_per_layer"]) == 1
    assert report["active_units"] == sum(report["active_units_per_layer"])
    assert report["active_units"] == by_hand.active_units_one_layer(trained_model, mnist_splits.train)

    # deterministic: fixed test binarization, fixed seed
    again = evaluate_module.evaluate(trained_run, k=20, test_subset=30)
    for key in ("nll", "nll_stderr", "k", "n_test", "active_units", "active_units_per_layer", "unit_variances"):
        assert again[key] == report[key], key

    # nll = -mean L_k over load_dataset(...).test[:n], same seed
    x = mnist_splits.test[:30]
    ll = log_likelihood(trained_model, x, 20, generator=gen(0)).double()
    assert report["nll"] == pytest.approx(-ll.mean().item(), rel=1e-12, abs=1e-9)
    assert report["nll_stderr"] == pytest.approx(ll.std().item() / math.sqrt(30), rel=1e-9)

    # another seed, other samples
    other = evaluate_module.evaluate(
        trained_run, model=trained_model, splits=mnist_splits, k=20, test_subset=30, seed=1
    )
    assert other["nll"] != report["nll"]
    assert abs(other["nll"] - report["nll"]) < 5


def test_evaluate_test_set_matches_a_fresh_load(shared_data_dir, mnist_splits):
    fresh = load_dataset("mnist", shared_data_dir, download=False)
    assert torch.equal(fresh.test, mnist_splits.test)  # the test binarization is fixed


def test_evaluate_errors(trained_run, trained_model, mnist_splits, tmp_path):
    with pytest.raises(ValueError, match="test_subset"):
        evaluate_module.evaluate(model=trained_model, splits=mnist_splits, k=5, test_subset=0)
    with pytest.raises(ValueError, match="run directory or a model"):
        evaluate_module.evaluate(k=5)
    with pytest.raises(CheckpointError, match="not found"):
        evaluate_module.evaluate(tmp_path / "missing", k=5)


# ----------------------------------------------------------------------------- which weights, which files
def untrained_copy(trained_run: Path, tmp_path: Path) -> Path:
    """The run as it is when killed before its first epoch ended: config.yaml and the model.safetensors
    training writes at epoch 0 (the initial weights), no checkpoint, no metrics."""
    from iwae.rundir import save_model

    run = tmp_path / "untrained"
    run.mkdir()
    (run / "config.yaml").write_bytes((trained_run / "config.yaml").read_bytes())
    save_model(run, iwae.load(trained_run), 0)
    return run


def test_a_run_without_a_completed_epoch_is_refused(trained_run, tmp_path):
    run = untrained_copy(trained_run, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(CheckpointError, match="has not completed an epoch"):
        evaluate_module.evaluate(run, k=2, test_subset=3)
    assert sorted(p.name for p in run.iterdir()) == before  # no evaluation file written
    with pytest.raises(CheckpointError, match="has not completed an epoch"):
        rundir.load_trained(run)


def test_evaluate_records_the_weights_seed_images_and_device(trained_run, mnist_splits, tmp_path):
    from iwae.rundir import model_sha256

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first = evaluate_module.evaluate(run, k=5, test_subset=20, seed=0)
    second = evaluate_module.evaluate(run, k=5, test_subset=20, seed=1)
    # a second seed is a second file, not an overwrite of the first
    a, b = run / "eval_k5_n20_seed0.json", run / "eval_k5_n20_seed1.json"
    assert json.loads(a.read_text()) == first and json.loads(b.read_text()) == second
    assert first["nll"] != second["nll"]
    for result, seed in ((first, 0), (second, 1)):
        assert result["seed"] == seed and result["k"] == 5 and result["n_test"] == 20
        # the exact tensor measured: its SHA-256 (float32 bytes after the fixed binarization, computed here
        # with numpy and hashlib) and how it was binarized
        x = mnist_splits.test[:20].numpy().astype(np.float32)
        digest = hashlib.sha256(b"torch.float32\0(20, 784)\0" + x.tobytes()).hexdigest()
        assert result["test_images"] == {
            "dataset": "mnist",
            "split": "test",
            "first": 20,
            "of": 10000,
            "binarization": {"mode": "dynamic", "test": "test images binarized once with seed 20160201"},
            "sha256": digest,
        }
        assert result["method"] == "lk" and result["code_length"] is True
        assert result["data"] == {"files": MNIST_SHA256, "changed": []}  # the published checksums, checked
        assert result["model"] == {"run_dir": str(run), "epoch": 1, "epochs_planned": 1, "sha256": model_sha256(run)}
        assert result["runtime"]["device"] == "cpu" and result["runtime"]["torch"] == torch.__version__
        # the per-image bounds: L_k of test images 0..19, whose mean is -nll
        bounds = np.load(run / result["files"]["bounds"])
        assert bounds.shape == (20,) and bounds.dtype == np.float64
        assert -bounds.mean() == pytest.approx(result["nll"], rel=1e-12)
        assert bounds.std(ddof=1) / math.sqrt(20) == pytest.approx(result["nll_stderr"], rel=1e-9)
    assert not list(run.glob(".*tmp"))  # atomic writes leave no temporary files
    # all test images (here a split of 7): no _n in the name
    seven = Splits("mnist", mnist_splits.train, mnist_splits.valid, mnist_splits.test[:7], True)
    evaluate_module.evaluate(run, k=1, seed=3, splits=seven)
    assert json.loads((run / "eval_k1_seed3.json").read_text())["test_images"]["of"] == 7


def test_a_model_passed_in_writes_no_file_and_records_no_weights(trained_run, trained_model, mnist_splits, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in run.iterdir())
    result = evaluate_module.evaluate(run, model=trained_model, splits=mnist_splits, k=2, test_subset=3)
    assert result["model"]["sha256"] is None and result["files"] is None
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_run_given_splits_checks_them_as_its_own_data(trained_run, mnist_splits, tmp_path):
    """Splits passed in beside a run go through the run's one data check (rundir.Run.check_splits):
    images of another size are a ConfigError naming the dataset; the run's own images pass, with the
    data files' record. (Splits built in memory name no files: what tells them apart is the SHA-256
    of the test tensor in the evaluation, which compare checks.)"""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    small = Splits("small", mnist_splits.train[:, :10], mnist_splits.valid[:, :10], mnist_splits.test[:, :10], True)
    with pytest.raises(ConfigError, match="has images of 10 pixels") as refused:
        evaluate_module.evaluate(run, splits=small, k=1, test_subset=2, save=False)
    assert refused.value.fields == ("dataset",)
    own = evaluate_module.evaluate(run, splits=mnist_splits, k=1, test_subset=2, save=False)
    assert own["data"] == {"files": MNIST_SHA256, "changed": []}


def test_a_test_subset_beyond_the_data_is_refused(trained_model, mnist_splits):
    with pytest.raises(ConfigError, match="test_subset 10001 is more than the 10000 test images of mnist") as e:
        evaluate_module.evaluate(model=trained_model, splits=mnist_splits, k=2, test_subset=10001)
    assert e.value.fields == ("test_subset",)
    assert evaluate_module.evaluate(model=trained_model, splits=mnist_splits, k=1, test_subset=10000)["n_test"] == 10000


def test_paired_difference_against_numpy(trained_model, mnist_splits, tmp_path):
    x = mnist_splits.test[:40]
    a = log_likelihood(trained_model, x, 10, generator=gen(0)).double().numpy()
    b = log_likelihood(trained_model, x, 1, generator=gen(1)).double().numpy()
    np.save(tmp_path / "a.npy", a)
    mean, stderr = evaluate_module.paired_difference(tmp_path / "a.npy", b)
    d = [ai - bi for ai, bi in zip(a.tolist(), b.tolist())]
    m = sum(d) / len(d)
    assert mean == pytest.approx(m, rel=1e-12)
    assert stderr == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d)), rel=1e-12)
    assert mean > 0  # L_10 >= L_1 on average
    # pairing removes the images' own spread: far below the unpaired error of the difference
    unpaired = math.sqrt(a.var(ddof=1) / 40 + b.var(ddof=1) / 40)
    assert stderr < unpaired / 3
    with pytest.raises(ValueError, match="same N"):
        evaluate_module.paired_difference(a, b[:-1])


# ----------------------------------------------------------------------------- timing on CUDA
def test_synchronize_waits_for_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    runtime.synchronize("cpu")
    assert calls == []
    runtime.synchronize("cuda:0")
    assert calls == [torch.device("cuda:0")]


def test_evaluate_reads_the_clock_only_after_synchronizing(trained_model, mnist_splits, monkeypatch):
    """The L_k pass is timed between two synchronizations of the model's device, so on CUDA the
    clock does not stop before the queued kernels have run."""
    events = []
    monkeypatch.setattr(evaluate_module, "synchronize", lambda device: events.append(("sync", torch.device(device))))
    real = evaluate_module.time.perf_counter

    class Clock:
        @staticmethod
        def perf_counter():
            events.append(("clock",))
            return real()

    monkeypatch.setattr(evaluate_module, "time", Clock)
    original = evaluate_module.log_likelihood
    monkeypatch.setattr(
        evaluate_module, "log_likelihood", lambda *a, **kw: events.append(("L_k",)) or original(*a, **kw)
    )
    evaluate_module.evaluate(model=trained_model, splits=mnist_splits, k=2, test_subset=3)
    cpu = torch.device("cpu")
    # the cost estimate's two timing calls (lk_cost), then the pass measured: each between two synchronizations
    assert events == [("sync", cpu), ("clock",), ("L_k",), ("sync", cpu), ("clock",)] * 3


def test_evaluation_records_the_chunking_its_samples_were_drawn_in(trained_model, mnist_splits):
    """With one seed, L_k's samples depend on how they are chunked (the budget, the device), so the
    result says how: a small budget splits the 50 samples of each image, the default does not."""
    small = 10 * memory.row_budget(trained_model, torch.device("cpu"))  # 10 rows a call
    wide = evaluate_module.evaluate(model=trained_model, splits=mnist_splits, k=50, test_subset=4)
    narrow = evaluate_module.evaluate(
        model=trained_model, splits=mnist_splits, k=50, test_subset=4, memory_budget=small
    )
    assert wide["chunking"] == {"images": 4, "samples": 50, "memory_budget": memory.DEFAULT_MEMORY_BUDGET}
    assert narrow["chunking"] == {"images": 1, "samples": 10, "memory_budget": small}
    assert wide["nll"] != narrow["nll"]  # the same seed, other draws: why the chunking is recorded


def test_a_prior_without_a_memory_count_is_counted_as_a_gaussian(trained_model):
    """A prior module of the user's (forward and log_prob only) still gets a memory estimate."""

    class Plain(torch.nn.Module):
        def log_prob(self, z):
            return -0.5 * z.square().sum(-1)

    model = VAE(trained_model.config)
    expected = memory.bytes_per_row(model)  # the built-in N(0, I) counts dim + 1 floats
    model.prior_module = Plain()
    assert memory.bytes_per_row(model) == expected


def test_summary_text_formats_a_result():
    """What `iwae evaluate` prints, from the result dict alone: aligned rows, 2-layer units summed."""
    from iwae.evaluate import summary_text

    result = {
        "nll": 87.1234,
        "nll_stderr": 0.4321,
        "k": 5000,
        "seed": 2,
        "active_units": 25,
        "active_units_per_layer": [20, 5],
        "seconds": 12.34,
        "images_per_s": 81.0,
        "test_images": {
            "dataset": "mnist",
            "split": "test",
            "first": 1000,
            "of": 10000,
            "binarization": {"mode": "dynamic", "test": "test images binarized once with seed 20160201"},
            "sha256": "0123456789abcdef" * 4,
        },
        "data": {"files": {"t10k-images-idx3-ubyte.gz": "cd" * 32}, "changed": []},
        "model": {"run_dir": "runs/a", "epoch": 3, "epochs_planned": 9, "sha256": "ab" * 32},
        "runtime": {"device": "cuda", "gpu": "H200", "torch": "2.13", "cuda": "12.8"},
        "files": {"json": "eval.json", "bounds": "eval.npy"},
    }
    lines = summary_text(result).splitlines()
    assert lines[0] == "test NLL (nats)  87.12 ± 0.43  (-mean L_5000 ± s.e., seed 2)"
    # how the test images were binarized, and which they are, on every printout (issue 20, item 8)
    assert lines[1] == (
        "test images      the first 1000 of 10000 (mnist); binarization dynamic, test images binarized once "
        "with seed 20160201; sha256 0123456789abcdef"
    )
    assert lines[2] == "data files       t10k-images-idx3-ubyte.gz: as trained on (SHA-256 checked)"
    assert lines[3] == "active units     20 + 5 = 25"
    assert lines[5] == "device           cuda (H200), torch 2.13, built for CUDA 12.8"
    assert lines[-1] == f"written          {Path('runs/a') / 'eval.json'}, {Path('runs/a') / 'eval.npy'}"
    one_layer = dict(result, active_units_per_layer=[7], active_units=7, files=None)
    assert "active units     7" in summary_text(one_layer).splitlines() and "nothing" in summary_text(one_layer)
