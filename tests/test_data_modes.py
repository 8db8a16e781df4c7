"""Tests for the data's binarization modes, uniform dequantisation and user arrays of any image shape.

- ``binarize none`` gives MNIST and Fashion-MNIST as grey levels k/255 (train, valid and test),
  28 x 28 recorded; ``static`` binarizes the training set once with TRAIN_BINARIZATION_SEED;
  ``dynamic`` is today's (the first training batch of a default MNIST run is main's, bit for bit);
  binary data are the same in every mode;
- dequantisation: y = (k + u) / 256 in [k/256, (k+1)/256), fresh per training use, one fixed seeded
  draw for valid/test; refused on binary and on non-8-bit data and with a binarizing mode;
- npz user arrays: uint8 read as k/255, float in [0, 1], (N, H, W) and (N, C, H, W) shapes recorded;
  bad dtypes and values are one-line errors;
- the mode is part of a run's identity and evaluation uses the training's mode; figures draw a
  28 x 20 image the right way up.
"""

from __future__ import annotations

import hashlib
import tempfile

import numpy as np
import pytest
import torch

from iwae import rundir
from iwae.data import (
    TEST_DEQUANTIZATION_SEED,
    TRAIN_BINARIZATION_SEED,
    DataError,
    binarize,
    dequantize,
    fixed_binarization,
    fixed_dequantization,
    load_dataset,
)
from iwae.errors import ConfigError
from iwae.train import TrainConfig, train

# SHA-256 of the first training batch (20 x 784 float32) of TrainConfig(epochs=1) on MNIST, seed 0,
# captured at accumulate_gradients' input with the code before the binarize modes (commit e1c33b0)
MAIN_FIRST_BATCH_SHA256 = "033d4ce1b070cbe7dfae8b93b37889352cee7b8ba2b53be14050e035895a8712"


def _on_grid(x: torch.Tensor) -> bool:
    k = x.double() * 255
    return bool(((k - k.round()).abs() < 1e-4).all()) and bool(((x >= 0) & (x <= 1)).all())


def _binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


@pytest.fixture(scope="module")
def grey(shared_data_dir):
    return {
        name: load_dataset(name, shared_data_dir, download=False, binarize="none")
        for name in ("mnist", "fashion-mnist")
    }


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_grey_levels_on_the_8bit_grid(grey, mnist_splits, name):
    s = grey[name]
    assert s.image_shape == (28, 28) and not s.dynamic and not s.dequantize and s.binarization == "none"
    assert (s.train.shape, s.valid.shape, s.test.shape) == ((59600, 784), (400, 784), (10000, 784))
    for x in (s.train, s.valid, s.test):
        assert _on_grid(x)
        assert not _binary(x)  # grey: no binarization at all
        assert len(torch.unique(x[:200])) > 100
    if name == "mnist":  # the same grey images the dynamic mode binarizes
        torch.testing.assert_close(s.train, mnist_splits.train, rtol=0, atol=0)
        assert _binary(mnist_splits.test) and _binary(mnist_splits.valid)


def test_static_binarizes_the_training_set_once_with_its_seed(shared_data_dir, grey, mnist_splits):
    s = load_dataset("mnist", shared_data_dir, download=False, binarize="static")
    assert not s.dynamic and s.binarization == "static" and _binary(s.train)
    want = fixed_binarization(grey["mnist"].train.numpy(), TRAIN_BINARIZATION_SEED)
    np.testing.assert_array_equal(s.train.numpy(), want)
    # one draw: the mean pixel matches the grey mean, and the test set is the dynamic mode's
    assert abs(s.train.mean().item() - grey["mnist"].train.mean().item()) < 1e-3
    torch.testing.assert_close(s.test, mnist_splits.test, rtol=0, atol=0)
    torch.testing.assert_close(s.valid, mnist_splits.valid, rtol=0, atol=0)


def test_fixed_binarization_in_blocks_is_the_one_call_stream():
    x = np.random.default_rng(3).random((5000, 900)).astype(np.float32)  # several blocks of rows
    u = np.random.default_rng(11).random(x.shape, dtype=np.float64)
    np.testing.assert_array_equal(fixed_binarization(x, 11), (u < x).astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (15,), (17, 3), (20, 784), (400, 784)])
def test_dynamic_binarization_draws_torch_bernoulli_s_numbers(dtype, shape):
    """binarize compares uniforms with x where torch.bernoulli would be called: the same pixels and the
    generator left in the same state, bit for bit (what a run's numbers and its resumes rest on); 0 and 1
    stay as they are. Negative control: another seed gives other pixels."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    x.view(-1)[:2] = torch.tensor([0.0, 1.0], dtype=dtype)[: x.numel()]
    for seed in (0, 1):
        g, g_ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        pixels = binarize(x, g)
        assert pixels.dtype == torch.float32
        assert torch.equal(pixels, torch.bernoulli(x, generator=g_ref).to(torch.float32))
        assert torch.equal(g.get_state(), g_ref.get_state())
        assert pixels.view(-1)[0] == 0 and (x.numel() < 2 or pixels.view(-1)[1] == 1)
    if x.numel() > 100:
        assert not torch.equal(
            binarize(x, torch.Generator().manual_seed(0)), binarize(x, torch.Generator().manual_seed(1))
        )


def test_binary_data_are_the_same_in_every_mode(tmp_path):
    x = np.random.default_rng(0).random((30, 16)) < 0.3
    np.savez(tmp_path / "b.npz", train=x, test=x[:5])
    loaded = [load_dataset(f"npz:{tmp_path / 'b.npz'}", binarize=m) for m in ("dynamic", "static", "none")]
    for s in loaded:
        assert not s.dynamic
        np.testing.assert_array_equal(s.train.numpy(), loaded[0].train.numpy())
    with pytest.raises(DataError, match="holds binary images .* dequantize applies to 8-bit grey levels"):
        load_dataset(f"npz:{tmp_path / 'b.npz'}", binarize="none", dequantize=True)


def test_default_run_first_batch_is_mains(shared_data_dir, monkeypatch):
    import iwae.train.loop as train_module

    seen = []

    class Stop(Exception):
        pass

    def capture(model, x, spec, generator, *args, **kwargs):
        seen.append(x.clone())
        raise Stop

    monkeypatch.setattr(train_module, "accumulate_gradients", capture)
    with tempfile.TemporaryDirectory() as d, pytest.raises(Stop):
        train(TrainConfig(epochs=1, data_dir=str(shared_data_dir), out=d + "/r"), progress=False)
    assert hashlib.sha256(seen[0].numpy().tobytes()).hexdigest() == MAIN_FIRST_BATCH_SHA256
    # negative control: binarize none trains on the grey batch itself (with a likelihood of grey levels:
    # bernoulli refuses them)
    with tempfile.TemporaryDirectory() as d, pytest.raises(Stop):
        config = TrainConfig(
            epochs=1, binarize="none", likelihood="logistic256", data_dir=str(shared_data_dir), out=d + "/r"
        )
        train(config, progress=False)
    assert not _binary(seen[1]) and _on_grid(seen[1])


# ----------------------------------------------------------------------------- dequantisation
def _grey_npz(tmp_path, shape=(40, 6, 5), seed=0):
    k = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    np.savez(tmp_path / "g.npz", train=k, test=k[:10], valid=k[10:20])
    return f"npz:{tmp_path / 'g.npz'}", k


def test_dequantisation_in_its_bin_fresh_for_training_fixed_for_test(tmp_path):
    name, k = _grey_npz(tmp_path)
    s = load_dataset(name, binarize="none", dequantize=True)
    assert s.dequantize and not s.dynamic and s.image_shape == (6, 5)
    kt = torch.from_numpy(k[:10].reshape(10, -1).astype(np.float64))
    test = s.test.double()
    assert bool(((test >= kt / 256) & (test < (kt + 1) / 256)).all())
    # the fixed draw is the seeded numpy stream, the same at every load
    u = np.random.default_rng(TEST_DEQUANTIZATION_SEED).random((10, 30))
    np.testing.assert_allclose(s.test.numpy(), ((k[:10].reshape(10, -1) + u) / 256).astype(np.float32), rtol=0, atol=0)
    np.testing.assert_array_equal(load_dataset(name, binarize="none", dequantize=True).test.numpy(), s.test.numpy())
    # training: grey levels kept, dequantised afresh at each use, each value inside its bin
    assert _on_grid(s.train)
    g = torch.Generator().manual_seed(0)
    a, b = dequantize(s.train, g), dequantize(s.train, g)
    ktrain = (s.train.double() * 255).round()
    for y in (a, b):
        assert bool(((y.double() >= ktrain / 256) & (y.double() < (ktrain + 1) / 256)).all())
    assert (a != b).float().mean() > 0.99
    u = (a.double() * 256 - ktrain).flatten()  # the uniforms: mean 1/2, variance 1/12
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    np.testing.assert_array_equal(
        fixed_dequantization(k[:10].reshape(10, -1) / np.float32(255), 5),
        fixed_dequantization(k[:10].reshape(10, -1) / np.float32(255), 5),
    )


def test_dequantisation_refusals(tmp_path, shared_data_dir):
    name, _ = _grey_npz(tmp_path)
    with pytest.raises(
        DataError, match="dequantize applies to grey levels \\(binarize none\\), not to binarize dynamic"
    ):
        load_dataset(name, dequantize=True)
    np.savez(tmp_path / "f.npz", train=np.full((20, 4), 0.3), test=np.full((5, 4), 0.3))
    with pytest.raises(DataError, match="is not 8-bit data \\(values k/255\\)"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}", binarize="none", dequantize=True)
    with pytest.raises(DataError, match="binarized-mnist is binary"):
        load_dataset("binarized-mnist", shared_data_dir, download=False, binarize="none", dequantize=True)
    # the config: the Bernoulli (and logistic256) model the 8-bit values themselves
    with pytest.raises(ConfigError, match="dequantize applies to continuous likelihoods .*not to bernoulli") as e:
        TrainConfig(dequantize=True, binarize="none", out="x")
    assert "dequantize" in e.value.fields
    with pytest.raises(ConfigError, match="unknown binarize mode 'sometimes'"):
        TrainConfig(binarize="sometimes", out="x")


# ----------------------------------------------------------------------------- user arrays
def test_npz_uint8_and_any_image_shape(tmp_path):
    name, k = _grey_npz(tmp_path, shape=(40, 28, 20))
    s = load_dataset(name, binarize="none")
    assert s.image_shape == (28, 20)
    np.testing.assert_array_equal(s.train.numpy(), k.reshape(40, -1).astype(np.float32) / np.float32(255))
    assert s.train[5].reshape(28, 20)[3, 7].item() == np.float32(k[5, 3, 7]) / np.float32(255)
    # channels first
    x = np.random.default_rng(1).random((30, 3, 8, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", train=x, test=x[:4])
    c = load_dataset(f"npz:{tmp_path / 'c.npz'}", binarize="none")
    assert c.image_shape == (3, 8, 4) and c.dim == 96
    np.testing.assert_array_equal(c.test.numpy(), x[:4].reshape(4, -1))
    # flat, not square: unknown
    np.savez(tmp_path / "flat.npz", train=x.reshape(30, -1)[:, :10], test=x.reshape(30, -1)[:4, :10])
    assert load_dataset(f"npz:{tmp_path / 'flat.npz'}", binarize="none").image_shape is None


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.full((5, 4), 300, np.int64), r"values in \[300, 300\], outside \[0, 1\]; rescale"),
        (
            np.full((5, 4), 2, np.int64),
            r"values in \[2, 2\], outside \[0, 1\]; these look like 8-bit grey levels: save them as uint8",
        ),
        (np.full((5, 4), 1.5, np.float32), r"values in \[1.5, 1.5\], outside \[0, 1\]"),
        (np.array([[0.5, np.nan, 0, 0]] * 5), r"contains NaN or infinite values"),
        (np.zeros((5, 4), np.complex64), r"has dtype complex64; expected uint8 grey levels"),
    ],
)
def test_npz_bad_values_are_one_line_errors(tmp_path, arr, message):
    np.savez(tmp_path / "bad.npz", train=arr, test=np.zeros((2, 4)))
    with pytest.raises(DataError, match=message) as e:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- identity, evaluation, figures
def test_binarization_is_part_of_the_run_identity():
    base = TrainConfig(epochs=1, out="a")
    assert base.binarization == "dynamic"
    old = {k: v for k, v in base.to_dict().items() if k not in ("binarize", "dequantize", "network")}
    assert rundir.run_identity(base) == rundir.run_identity(old)  # a config.yaml from before the fields
    for other in (dict(binarize="static"), dict(binarize="none"), dict(network="gated")):
        changed = TrainConfig(epochs=1, out="a", **other)
        assert rundir.changed_settings(base, changed) == sorted(other)


def test_evaluation_and_the_run_use_the_training_mode(tmp_path):
    name, _ = _grey_npz(tmp_path, shape=(60, 8, 12))
    config = TrainConfig(
        dataset=name,
        binarize="none",
        likelihood="logistic256",  # of 8-bit grey levels (bernoulli refuses them)
        network="conv",
        hidden_dims=[[4, 8]],
        latent_dims=[3],
        epochs=1,
        batch_size=10,
        k=2,
        objective="iwae",
        out=str(tmp_path / "run"),
    )
    train(config, progress=False)
    run = rundir.open_run(tmp_path / "run")
    assert run.model.config.image_shape == (8, 12) and run.model.config.network == "conv"
    assert run.splits.binarization == "none" and not _binary(run.splits.test)
    from iwae.evaluate import evaluate

    result = evaluate(tmp_path / "run", k=3, progress=False)
    assert np.isfinite(result["nll"])
    # the figures draw the recorded shape: 8 rows of 12 pixels
    from iwae.figures import plot_samples
    from iwae.figures._base import model_image_shape

    assert model_image_shape(run.model) == (8, 12)
    assert plot_samples(run.model, tmp_path / "s.png", n=4).is_file()


def test_tile_draws_a_28_by_20_image_the_right_way_up():
    from iwae.figures._base import tile

    img = np.zeros((28, 20), np.float32)
    img[0, :] = 1.0  # the top row black
    img[:, 19] = 0.5  # the right column grey
    grid = tile(img.reshape(1, -1), (28, 20), pad=1)
    assert grid.shape == (30, 22)
    np.testing.assert_array_equal(grid[1:29, 1:21], img)
    np.testing.assert_array_equal(tile(img.reshape(1, -1), (1, 28, 20)), grid)
    with pytest.raises(ValueError, match=r"cannot draw images of shape \(3, 28, 20\) in grey levels"):
        tile(np.zeros((1, 3 * 560)), (3, 28, 20))


def test_the_grey_experiment_resolves():
    """grey.yaml: 12 runs, {mlp, gated} x {normal, vamp} x {VAE k=1, IWAE k=5, IWAE k=50}, all on grey
    Fashion-MNIST with logistic256. Where this installation has no ``likelihood`` setting (the netdata
    branch before the likelihoods land) the file is resolved without it; once TrainConfig has the
    field, the file is resolved as shipped."""
    from importlib import resources

    import yaml

    from iwae.experiments.spec import experiment_from_dict

    raw = yaml.safe_load(resources.files("iwae").joinpath("experiments/grey.yaml").read_text())
    assert raw["defaults"]["likelihood"] == "logistic256" and raw["defaults"]["binarize"] == "none"
    exp = experiment_from_dict(raw, "grey.yaml")
    runs = exp.resolve("short")
    assert len(runs) == 12 == len({r.name for r in runs})
    combos = {(r.config["network"], r.config["prior"], r.config["objective"], r.config["k"]) for r in runs}
    assert combos == {
        (n, p, o, k)
        for n in ("mlp", "gated")
        for p in ("normal", "vamp")
        for o, k in (("vae", 1), ("iwae", 5), ("iwae", 50))
    }
    for r in runs:
        config = r.train_config("somewhere/" + r.name)
        assert config.binarization == "none" and config.dataset == "fashion-mnist"
        assert (config.epochs, config.train_subset, r.eval["test_subset"], r.eval["k"]) == (5, 5000, 500, 5000)
        assert config.components == (100 if config.prior == "vamp" else 1)
