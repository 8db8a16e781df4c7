"""Numbers that must not be wrong (issue 20, items 4, 5, 6 and 8): damaged or swapped weights, evaluations of
different test images or settings, data files replaced after training and a Bernoulli likelihood on grey levels
are each refused in one line (exit status 2, nothing written), and every JSON written is strict.

The damage is done as disks, copies and users do it (tests/damage.py); each refusal has a negative control
that the same command on an undamaged run succeeds."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from damage import copy_file, flip_exponent_bit, max_abs, nan_weight
from safetensors.torch import save_file

import iwae.cli.measure as cli_runs
import iwae.train.checks as checks
from iwae import strict_json
from iwae.checkpoint import load_tensors, tensors_sha256
from iwae.data import Splits, load_dataset
from iwae.data.registry import MNIST_SHA256
from iwae.errors import UncheckedWarning
from iwae.rundir import AIS_SETTINGS, comparable, images_sha256
from iwae.train import TrainConfig, train

SMALL = dict(k=2, latent_dims=[4], hidden_dims=[[16]], batch_size=20, valid_k=2)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strict(text: str):
    """Parses JSON refusing the NaN and Infinity tokens, as jq and JavaScript do."""

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def grey_mnist(shared_data_dir) -> Splits:
    """MNIST as stored: grey levels in every split (the fixture mnist_splits has binarized test images)."""
    return load_dataset("mnist", shared_data_dir, binarize="none")


@pytest.fixture(scope="module")
def grey_npz(tmp_path_factory, grey_mnist) -> Path:
    """40 training, 20 validation and 20 test MNIST images as grey levels in [0, 1] (a user's .npz)."""
    path = tmp_path_factory.mktemp("data") / "user.npz"
    s = grey_mnist
    np.savez(path, train=s.train[:40].numpy(), valid=s.valid[:20].numpy(), test=s.test[:20].numpy())
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, grey_npz) -> dict:
    """Two seeds of the same tiny run (binarized dynamically, Bernoulli) and one of grey levels (logistic256)."""
    root = tmp_path_factory.mktemp("integrity")
    out = {}
    for name, extra in (
        ("seed0", dict(seed=0)),
        ("seed1", dict(seed=1)),
        ("grey", dict(seed=0, binarize="none", likelihood="logistic256")),
    ):
        out[name] = root / name
        train(TrainConfig(**SMALL, **extra, dataset=f"npz:{grey_npz}", epochs=1, out=str(out[name])), progress=False)
    return out


@pytest.fixture
def run(tmp_path, runs) -> Path:
    """A copy of the seed-0 run, to damage."""
    shutil.copytree(runs["seed0"], tmp_path / "run")
    return tmp_path / "run"


def _evaluate(run: Path, *args):
    return invoke("evaluate", run, "--k", 2, "--quiet", *args)


# ----------------------------------------------------------------------------- item 4: weights
def test_a_flipped_exponent_bit_in_the_weights_is_refused(run):
    assert _evaluate(run, "--json").exit_code == 0  # negative control: the undamaged copy is measured
    for p in run.glob("eval_*"):
        p.unlink()
    flip_exponent_bit(run / "model.safetensors")
    assert max_abs(run / "model.safetensors") > 1e30  # the damage is the one the issue measured (NLL 6.25e33)
    before = snapshot(run)
    assert_one_line_error(_evaluate(run), "is corrupt: its tensors do not match the SHA-256")
    assert snapshot(run) == before


def test_a_flipped_bit_in_the_checkpoint_is_refused_on_resume(run):
    flip_exponent_bit(run / "checkpoint.safetensors")
    before = snapshot(run)
    assert_one_line_error(invoke("train", "--resume", run, "--epochs", 2, "--quiet"), "is corrupt")
    assert snapshot(run) == before


@pytest.mark.parametrize("consistent", [True, False], ids=["digest-of-nan", "patched-bytes"])
def test_a_nan_weight_is_refused(run, consistent):
    nan_weight(run / "model.safetensors", consistent)
    before = snapshot(run)
    phrase = "not finite" if consistent else "is corrupt"
    assert_one_line_error(_evaluate(run), phrase)
    assert_one_line_error(invoke("sample", run, "--out", run / "s.png"), phrase)  # a figure too
    assert snapshot(run) == before


def test_a_nan_weight_in_the_checkpoint_is_refused_on_resume(run):
    nan_weight(run / "checkpoint.safetensors", consistent=True)
    before = snapshot(run)
    assert_one_line_error(invoke("train", "--resume", run, "--epochs", 2, "--quiet"), "not finite")
    assert snapshot(run) == before


def test_another_seeds_weights_copied_in_are_refused(run, runs):
    copy_file(runs["seed1"] / "model.safetensors", run / "model.safetensors")
    before = snapshot(run)
    error = assert_one_line_error(_evaluate(run), "belongs to another run")
    assert "seed 1 there, 0 in config.yaml" in error
    assert_one_line_error(invoke("analyze", run, "--subset", 5), "belongs to another run")
    copy_file(runs["seed1"] / "checkpoint.safetensors", run / "checkpoint.safetensors")
    before = snapshot(run)
    assert_one_line_error(invoke("train", "--resume", run, "--epochs", 2, "--quiet"), "belongs to another run")
    assert snapshot(run) == before


def test_init_from_a_damaged_run_is_refused(tmp_path, run, grey_npz):
    flip_exponent_bit(run / "model.safetensors")
    result = invoke(
        "train", *("--k", 2, "--latent-dims", 4, "--hidden-dims", 16, "--batch-size", 20, "--valid-k", 2),
        *("--dataset", f"npz:{grey_npz}", "--epochs", 1, "--init-from", run, "--out", tmp_path / "new", "--quiet"),
    )  # fmt: skip
    assert_one_line_error(result, "is corrupt")
    assert not (tmp_path / "new").exists()


def test_the_digest_is_of_names_dtypes_shapes_and_bytes():
    """tensors_sha256 against hashlib over the same fields, written here; any change of one changes it."""
    t = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2)}
    by_hand = hashlib.sha256()
    for name in ("a", "b"):
        by_hand.update(f"{name}\0{t[name].dtype}\0{tuple(t[name].shape)}\0".encode())
        by_hand.update(t[name].numpy().tobytes())
    assert tensors_sha256(t) == by_hand.hexdigest()
    for changed in (
        {**t, "a": torch.ones(4)},  # the shape
        {**t, "a": torch.ones(2, 2, dtype=torch.float64)},  # the dtype
        {"c": t["b"], "a": t["a"]},  # a name
        {**t, "b": torch.tensor([0.0, 1.0, 2.0000002])},  # one value by one ulp
    ):
        assert tensors_sha256(changed) != tensors_sha256(t)


def test_weights_without_a_digest_are_read_with_a_warning_and_resaved_with_one(run):
    """An older run (no digest, no identity in its files): read with an UncheckedWarning, measured, and
    its weights checked once saved again."""
    for name in ("model.safetensors", "checkpoint.safetensors"):
        path = run / name
        tensors, meta = load_tensors(path)
        meta.pop("run_identity", None)
        meta.pop("data", None)
        save_file(tensors, str(path), metadata={"json": json.dumps(meta)})  # as an older iwae wrote it
    with pytest.warns(UncheckedWarning, match="carries no digest"):
        load_tensors(run / "model.safetensors")
    result = _evaluate(run, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(next(run.glob("eval_*.json")).read_text())
    assert record["data"]["changed"] is None  # nothing recorded to check the data against, and it says so
    assert invoke("train", "--resume", run, "--epochs", 2, "--quiet").exit_code == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncheckedWarning)
        load_tensors(run / "model.safetensors")  # saved again by the resume: with its digest now


def test_every_json_written_is_strict(run, tmp_path):
    """One test image: its standard error is undefined; written as null, never NaN."""
    result = _evaluate(run, "--test-subset", 1, "--json")
    assert result.exit_code == 0, result.output
    printed = _strict(result.output[result.output.index("{") :])
    written = _strict(next(run.glob("eval_*.json")).read_text())
    assert printed["nll_stderr"] is None and written["nll_stderr"] is None
    assert np.isfinite(written["nll"])
    # the writer itself: nan and inf at any depth become null, numpy scalars plain numbers
    value = {"a": float("nan"), "b": [np.float32("inf"), 1.5, {"c": -np.inf}], "d": np.int64(3)}
    assert _strict(strict_json.dumps(value)) == {"a": None, "b": [None, 1.5, {"c": None}], "d": 3}
    assert json.dumps(float("nan")) == "NaN"  # negative control: Python's json is not strict


def test_no_module_writes_json_around_the_strict_writer():
    """Every json.dump(s) in the package's source goes through iwae.strict_json (or writes settings,
    which are finite by construction: the model config digest and the comparison of identities)."""
    src = Path(__file__).resolve().parents[1] / "src" / "iwae"
    allowed = {"strict_json.py", "integrity.py", "weights.py"}
    found = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        if p.name not in allowed
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "json.dump" in line and "strict_json.dump" not in line
    ]
    assert found == []


# ----------------------------------------------------------------------------- item 5: the test tensor, the settings
def test_compare_refuses_binarized_against_grey_images(runs, tmp_path):
    a, b, c = (shutil.copytree(runs[n], tmp_path / n) for n in ("seed0", "grey", "seed1"))
    for r in (a, b, c):
        assert _evaluate(r).exit_code == 0
    records = {r.name: json.loads(next(r.glob("eval_*.json")).read_text()) for r in (a, b, c)}
    # the issue's case: both describe "the first 20 of 20" images, and only the digest tells them apart
    assert {k: v for k, v in records["seed0"]["test_images"].items() if k not in ("sha256", "binarization")} == {
        k: v for k, v in records["grey"]["test_images"].items() if k not in ("sha256", "binarization")
    }
    error = assert_one_line_error(invoke("compare", a, b, "--k", 2), "they measured different test images")
    assert "binarization none" in error and "binarized once with seed" in error
    # negative control: two seeds of the binarized run measured the same tensor and are paired
    result = invoke("compare", a, c, "--k", 2)
    assert result.exit_code == 0, result.output


def test_the_test_images_digest_is_of_the_tensor_measured():
    x = torch.bernoulli(torch.full((3, 5), 0.5), generator=torch.Generator().manual_seed(0))
    by_hand = hashlib.sha256(b"torch.float32\0(3, 5)\0" + x.numpy().astype(np.float32).tobytes()).hexdigest()
    assert images_sha256(x) == by_hand
    assert images_sha256(x.flip(0)) != by_hand  # the same images in another order are not paired
    assert images_sha256(x.double()) == by_hand  # a dtype of the same values is the same tensor measured


def _record(**change) -> dict:
    base = {
        "method": "ais",
        "k": None,
        "steps": 10,
        "chains": 2,
        "leapfrog": 5,
        "schedule": "sigmoid",
        "initial": "encoder",
        "likelihood": "bernoulli",
        "code_length": True,
        "n_test": 4,
        "test_images": {"first": 4, "of": 20, "dataset": "d", "sha256": "ab" * 32},
        "data": {"files": {"d.npz": "cd" * 32}, "changed": []},
        "model": {"run_dir": "runs/a"},
    }
    return {**base, **change}


@pytest.mark.parametrize("setting", AIS_SETTINGS)
def test_comparable_refuses_ais_evaluations_of_other_settings(setting):
    other = {"steps": 11, "chains": 3, "leapfrog": 6, "schedule": "linear", "initial": "prior"}[setting]
    assert comparable(_record(), _record()) is None  # negative control
    why = comparable(_record(), _record(**{setting: other}))
    assert why is not None and "different settings" in why and setting in why


def test_comparable_refuses_other_methods_units_images_and_unrecorded_digests():
    lk = _record(method="lk", k=5)
    assert "different methods" in comparable(_record(), lk)
    assert "different settings (k 5 vs 6)" in comparable(lk, {**lk, "k": 6})
    assert "not in the same units" in comparable(_record(), _record(likelihood="gaussian", code_length=False))
    other_images = _record(test_images={**_record()["test_images"], "sha256": "ef" * 32})
    assert "different test images" in comparable(_record(), other_images)
    old = _record(test_images={"first": 4, "of": 20, "dataset": "d"})
    assert "older iwae" in comparable(old, _record())
    changed = _record(data={"files": {}, "changed": ["d.npz"]})
    assert "--accept-changed-data" in comparable(_record(), changed)
    assert comparable(_record(), changed, accept_changed_data=True) is None


def test_ais_files_name_every_setting_and_do_not_overwrite_each_other(run):
    args = ("--method", "ais", "--steps", 3, "--chains", 2, "--leapfrog", 1, "--test-subset", 4, "--quiet")
    assert invoke("evaluate", run, *args, "--initial", "encoder").exit_code == 0
    assert invoke("evaluate", run, *args, "--initial", "prior", "--schedule", "linear").exit_code == 0
    names = sorted(p.name for p in run.glob("ais_*.json"))
    assert names == ["ais_T3_C2_L1_linear_prior_n4_seed0.json", "ais_T3_C2_L1_sigmoid_encoder_n4_seed0.json"]
    for name in names:
        record = json.loads((run / name).read_text())
        assert record["method"] == "ais" and record["test_images"]["sha256"]
        assert {record["initial"], record["schedule"]} <= set(name.split("_"))


def test_an_evaluation_without_a_test_images_digest_is_refused(run, tmp_path, runs):
    other = shutil.copytree(runs["seed1"], tmp_path / "other")
    for r in (run, other):
        assert _evaluate(r).exit_code == 0
    path = next(run.glob("eval_*.json"))
    record = json.loads(path.read_text())
    del record["test_images"]["sha256"]  # as an older iwae wrote it
    path.write_text(json.dumps(record))
    assert_one_line_error(invoke("compare", run, other, "--k", 2), "make it again with: iwae evaluate")


# ----------------------------------------------------------------------------- item 6: the data files
def test_data_replaced_after_training_is_refused_unless_accepted(tmp_path, grey_npz, grey_mnist):
    data = tmp_path / "user.npz"
    shutil.copy(grey_npz, data)
    a, b = tmp_path / "a", tmp_path / "b"
    for r, seed in ((a, 0), (b, 1)):
        train(TrainConfig(**SMALL, seed=seed, dataset=f"npz:{data}", epochs=1, out=str(r)), progress=False)
        assert _evaluate(r).exit_code == 0  # negative control: the files it was trained on
    flat = tmp_path / "flat"  # a 2-D latent, for iwae qew
    train(TrainConfig(**{**SMALL, "latent_dims": [2]}, dataset=f"npz:{data}", epochs=1, out=str(flat)), progress=False)
    weights = load_tensors(a / "model.safetensors")[1]["data"]["files"]
    assert weights == {"user.npz": hashlib.sha256(data.read_bytes()).hexdigest()}
    s = grey_mnist  # other images of the same shape
    np.savez(data, train=s.train[40:80].numpy(), valid=s.valid[20:40].numpy(), test=s.test[20:40].numpy())
    before = snapshot(a)
    assert_one_line_error(_evaluate(a, "--seed", 1), "changed since it was trained: user.npz")
    assert_one_line_error(invoke("train", "--resume", a, "--epochs", 2, "--quiet"), "--accept-changed-data")
    assert_one_line_error(invoke("analyze", a, "--subset", 5), "changed since it was trained")
    figures = tmp_path / "figures"
    plot = ("plot", a, "--what", "activity", "--out", figures)
    assert_one_line_error(invoke(*plot), "changed since it was trained")
    qew = ("qew", flat, "--images", 1, "--k", 1, "--samples", 50, "--grid-size", 8, "--out", figures / "qew.png")
    assert_one_line_error(invoke(*qew), "changed since it was trained")
    assert snapshot(a) == before and not figures.exists()
    for command in (plot, qew):
        accepted = invoke(*command, "--accept-changed-data")
        assert accepted.exit_code == 0, accepted.output
    assert {p.name for p in figures.iterdir()} >= {"activity.png", "qew.png"}
    analyzed = invoke("analyze", a, "--subset", 5, "--accept-changed-data")
    assert analyzed.exit_code == 0, analyzed.output
    (a / "surgery_n5.json").unlink()
    for r in (a, b):
        assert _evaluate(r, "--seed", 1, "--accept-changed-data").exit_code == 0
    record = json.loads((a / "eval_k2_seed1.json").read_text())
    assert record["data"]["changed"] == ["user.npz"]
    assert_one_line_error(invoke("compare", a, b, "--k", 2, "--seed", 1), "changed since the run was trained")
    assert invoke("compare", a, b, "--k", 2, "--seed", 1, "--accept-changed-data").exit_code == 0
    resumed = invoke("train", "--resume", a, "--epochs", 2, "--quiet", "--accept-changed-data")
    assert resumed.exit_code == 0, resumed.output
    history = load_tensors(a / "model.safetensors")[1]["data"]["changed_during_training"]
    assert history == [{"epoch": 1, "files": ["user.npz"]}]


def test_a_run_records_the_checksums_of_the_benchmark_files(tmp_path, shared_data_dir):

    out = tmp_path / "r"
    train(TrainConfig(**SMALL, train_subset=40, data_dir=str(shared_data_dir), epochs=1, out=str(out)), progress=False)
    assert load_tensors(out / "model.safetensors")[1]["data"] == {"dataset": "mnist", "files": MNIST_SHA256}


# ----------------------------------------------------------------------------- item 8: Bernoulli on grey levels
def test_a_bernoulli_likelihood_on_grey_levels_is_refused(tmp_path, grey_npz):
    args = ("--k", 2, "--latent-dims", 4, "--hidden-dims", 16, "--batch-size", 20, "--epochs", 1, "--quiet")
    out = tmp_path / "r"
    error = assert_one_line_error(
        invoke("train", *args, "--dataset", f"npz:{grey_npz}", "--binarize", "none", "--out", out), "is not binary"
    )
    assert "logistic256" in error
    assert not out.exists()
    # negative controls: binarized, or with a likelihood of grey levels, the same data train
    assert invoke("train", *args, "--dataset", f"npz:{grey_npz}", "--out", out).exit_code == 0
    grey = invoke(
        "train", *args, "--dataset", f"npz:{grey_npz}", "--binarize", "none", "--likelihood", "logistic256",
        "--out", tmp_path / "g",
    )  # fmt: skip
    assert grey.exit_code == 0, grey.output


def test_every_evaluation_says_how_its_test_images_were_binarized(runs, tmp_path):
    binarized, grey = (shutil.copytree(runs[n], tmp_path / n) for n in ("seed0", "grey"))
    text = _evaluate(binarized).output
    assert "binarization dynamic, test images binarized once with seed" in text
    assert "binarization none, test images as stored" in _evaluate(grey).output
    record = json.loads(next(grey.glob("eval_*.json")).read_text())
    assert record["test_images"]["binarization"] == {"mode": "none", "test": "test images as stored"}
    assert record["likelihood"] == "logistic256" and record["code_length"] is True


# ----------------------------------------------------------------------------- item 9: long passes say so first
def test_a_long_evaluation_prints_its_cost_first(run, monkeypatch):
    quick = _evaluate(run, "--test-subset", 4)
    assert quick.exit_code == 0 and "importance samples" not in quick.output  # negative control: a short one
    monkeypatch.setattr(cli_runs, "LONG_SECONDS", -1)  # every pass counts as long
    result = _evaluate(run, "--test-subset", 4, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "L_2 on 4 images: about 0 s (8 importance samples)" in result.output
    assert result.output.index("importance samples") < result.output.index("test NLL")


def test_a_long_validation_bound_is_announced_before_training(tmp_path, grey_npz, monkeypatch):
    monkeypatch.setattr(checks, "ANNOUNCE_SECONDS", -1)
    out = tmp_path / "r"
    args = ("--k", 2, "--latent-dims", 4, "--hidden-dims", 16, "--batch-size", 20, "--valid-k", 3, "--epochs", 1)
    result = invoke("train", *args, "--dataset", f"npz:{grey_npz}", "--out", out)
    assert result.exit_code == 0, result.output
    assert "the validation bound L_3 on 20 images takes about" in result.output
    assert "per epoch (set by --valid-k)" in result.output
