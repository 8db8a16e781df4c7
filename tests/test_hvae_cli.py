"""The HVAE end to end, on tiny settings: ``iwae train --model hvae`` with every objective and estimator, resume
bit for bit (float32 and bf16-mixed, also killed in the middle of an epoch), ``iwae evaluate`` (L_k with active
units per layer, AIS), ``iwae analyze`` (ELBO surgery on z_2), ``iwae.load``, every likelihood (trained, loaded,
evaluated), the refusals of bad settings (exit status 2, one line), and ``--seeds`` (trained one after another:
the HVAE is not stacked)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from cli_helpers import assert_one_line_error, invoke, small_npz
from test_gradient_estimators import SUPPORTED

from iwae import load
from iwae.checkpoint import load_tensors
from iwae.config import TrainConfig
from iwae.data import Splits
from iwae.evaluate import log_likelihood
from iwae.models import HVAE
from iwae.rundir import read_metrics
from iwae.train import train

TINY = dict(
    model="hvae",
    layers=2,
    latent_dims=[4, 3],
    hidden_dims=[[16, 12], [12]],
    train_subset=40,
    batch_size=20,
    schedule="constant",
    lr=1e-3,
)


@pytest.fixture(scope="module")
def tiny(mnist_splits) -> Splits:
    s = mnist_splits
    return Splits("mnist", s.train[:60].clone(), s.valid[:20].clone(), s.test[:20].clone(), True)


@pytest.fixture(scope="module")
def npz(tmp_path_factory, mnist_splits) -> str:
    return small_npz(tmp_path_factory.mktemp("data"), mnist_splits, 60)


def assert_same_tensor_files(a, b) -> None:
    ta, _ = load_tensors(a)
    tb, _ = load_tensors(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{key} differs between {a} and {b}"


@pytest.mark.parametrize("objective,estimator", SUPPORTED, ids=[f"{o}-{e}" for o, e in SUPPORTED])
def test_every_objective_and_estimator_trains(tmp_path, tiny, objective, estimator):
    """One epoch of the hvae (mlp) for every objective with every estimator it takes: finite, negative training
    and validation bounds, config.yaml says model hvae, and the run loads back as an HVAE."""
    settings = dict(
        objective=objective,
        k=6 if objective in ("miwae", "piwae") else 3,
        m=2 if objective in ("miwae", "piwae") else 1,
    )
    config = TrainConfig(**TINY, **settings, estimator=estimator, epochs=1, out=str(tmp_path / "run"))
    run = train(config, progress=False, splits=tiny)
    rows = read_metrics(run)
    assert len(rows) == 1
    for key in ("train_bound", f"valid_L{settings['k']}"):
        assert math.isfinite(float(rows[0][key])) and float(rows[0][key]) < 0, (key, rows[0])
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == "hvae"
    assert isinstance(load(run), HVAE)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_resume_is_bit_exact(tmp_path, tiny, precision):
    """Gated hvae with the VampPrior, IWAE(3) with DReG: 1 epoch then resumed to 3 (the second invocation
    killed after the first step of epoch 3 and resumed from that mid-epoch checkpoint) ends with the same weights,
    Adam state and random streams, bit for bit, and the same metrics, as 3 uninterrupted epochs; in
    float32 and in bf16-mixed."""
    base = dict(
        TINY,
        network="gated",
        prior="vamp",
        components=5,
        objective="iwae",
        k=3,
        estimator="dreg",
        precision=precision,
        seed=2,
    )
    ref = train(TrainConfig(**base, epochs=3, out=str(tmp_path / "ref")), progress=False, splits=tiny)
    out = tmp_path / "run"
    train(TrainConfig(**base, epochs=1, out=str(out)), progress=False, splits=tiny)
    config = TrainConfig(**base, epochs=3, checkpoint_every=1, out=str(out))
    steps = {"n": 0}
    real = torch.optim.Adam.step

    def dying_step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 4:  # epoch 2's two steps, epoch 3's first (checkpointed), then the kill
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    torch.optim.Adam.step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, resume=True, progress=False, splits=tiny)
    finally:
        torch.optim.Adam.step = real
    assert load_tensors(out / "checkpoint.safetensors")[1].get("epoch_position") == 20  # in the middle of epoch 3
    train(config, resume=True, progress=False, splits=tiny)
    assert_same_tensor_files(ref / "model.safetensors", out / "model.safetensors")
    ta, _ = load_tensors(ref / "checkpoint.safetensors")
    tb, _ = load_tensors(out / "checkpoint.safetensors")
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    ra, rb = read_metrics(ref), read_metrics(out)
    assert [r["train_bound"] for r in ra] == [r["train_bound"] for r in rb] and len(ra) == 3


def test_train_evaluate_analyze_from_the_cli(tmp_path, npz):
    """``iwae train --model hvae --network gated --prior vamp`` (layers 2 by default for hvae) exits 0; ``iwae
    evaluate --json`` reports a finite NLL and active units for z_1 and z_2 (4 + 3 units); ``--method ais``
    runs AIS on p(x, z_1, z_2); ``iwae analyze --json`` gives ELBO surgery on z_2 with its identity."""
    out = tmp_path / "run"
    r = invoke(
        "train",
        "--model",
        "hvae",
        "--network",
        "gated",
        "--prior",
        "vamp",
        "--components",
        "4",
        "--latent-dims",
        "4,3",
        "--hidden-dims",
        "16,12/12",
        "--objective",
        "iwae",
        "--k",
        "3",
        "--estimator",
        "rws-dreg",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--dataset",
        npz,
        "--quiet",
        "--out",
        out,
    )
    assert r.exit_code == 0, (r.output, r.exception)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == "hvae" and config["layers"] == 2 and config["network"] == "gated"
    r = invoke("evaluate", out, "--k", "20", "--test-subset", "10", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    report = json.loads(r.output)
    assert math.isfinite(report["nll"]) and report["nll"] > 0
    assert len(report["active_units_per_layer"]) == 2 and [len(v) for v in report["unit_variances"]] == [4, 3]
    r = invoke("evaluate", out, "--method", "ais", "--steps", "5", "--chains", "2", "--test-subset", "3", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    assert math.isfinite(json.loads(r.output[r.output.index("{") :])["nll"])
    r = invoke("analyze", out, "--subset", "30", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    surgery = json.loads(r.output)
    assert abs(surgery["identity_residual"]) < 1e-9 and surgery["mutual_info"] <= surgery["log_n"] + 1e-12


@pytest.mark.parametrize(
    "args,phrase",
    [
        (["--layers", "1"], "use --layers 2"),
        (["--network", "conv"], "mlp or gated"),
        (["--latent-dims", "40"], "--latent-dims needs 2 entries"),
        (["--hidden-dims", "300/300"], "at least 2"),
    ],
    ids=["layers-1", "conv", "one-latent-layer", "one-coupled-width"],
)
def test_bad_hvae_settings_exit_2(tmp_path, args, phrase):
    """Settings the hvae cannot take: exit status 2 with one Error line that says why, and no run directory."""
    out = tmp_path / "run"
    r = invoke("train", "--model", "hvae", *args, "--epochs", "1", "--out", out)
    assert_one_line_error(r, phrase)
    assert not out.exists()


def test_seeds_train_one_after_another(tmp_path, npz):
    """``--seeds 0,1 --batch`` with the hvae says it cannot batch the runs and trains them one after another:
    each member is the run ``--seed`` alone would have made, bit for bit."""
    common = [
        "--model",
        "hvae",
        "--latent-dims",
        "4,3",
        "--hidden-dims",
        "16,12/12",
        "--k",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--dataset",
        npz,
    ]
    r = invoke("train", *common, "--seeds", "0,1", "--batch", "--out", tmp_path / "group")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "cannot batch runs with the hvae model" in r.output
    r = invoke("train", *common, "--seed", "1", "--quiet", "--out", tmp_path / "alone")
    assert r.exit_code == 0, (r.output, r.exception)
    group, alone = tmp_path / "group" / "seed1", tmp_path / "alone"
    assert_same_tensor_files(group / "model.safetensors", alone / "model.safetensors")


@pytest.fixture(scope="module")
def grey(mnist_splits) -> Splits:
    """100 MNIST training images as 8-bit grey levels, split 60 / 20 / 20, never binarized."""
    g = mnist_splits.train[:100].clone()
    return Splits("mnist", g[:60], g[60:80], g[80:], False, binarization="none")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "logistic256"])
def test_every_likelihood_trains_and_evaluates(tmp_path, tiny, grey, likelihood):
    """The gated hvae with the VampPrior, IWAE(3), one epoch with each likelihood (Bernoulli on binary images,
    the Gaussian and the discretized logistic on grey levels): finite training and validation bounds, the run
    loads back with its likelihood, and L_20 on the test images is finite (and below 0 for the Bernoulli and
    the logistic, probabilities of discrete pixels)."""
    splits = tiny if likelihood == "bernoulli" else grey
    config = TrainConfig(
        **dict(TINY, network="gated", prior="vamp", components=4, objective="iwae", k=3, likelihood=likelihood),
        binarize="auto",
        epochs=1,
        out=str(tmp_path / "run"),
    )
    run = train(config, progress=False, splits=splits)
    row = read_metrics(run)[0]
    assert math.isfinite(float(row["train_bound"])) and math.isfinite(float(row["valid_L3"])), row
    model = load(run)
    assert isinstance(model, HVAE) and model.config.likelihood == likelihood
    bound = log_likelihood(model, splits.test, 20, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(bound).all()
    if likelihood != "gaussian":  # a density of continuous pixels may exceed 1
        assert (bound < 0).all()
