"""Tests for iwae.compare: the paired difference of two runs' NLLs, its refusals, and seeds."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from iwae.compare import compare_runs, load_bounds
from iwae.data import Splits
from iwae.evaluate import evaluate
from iwae.rundir import eval_name
from iwae.train import TrainConfig, train


def _write_eval(
    run: Path,
    bounds: np.ndarray,
    *,
    k: int = 5000,
    seed: int = 0,
    test_subset: int | None = None,
    dataset: str = "mnist",
    of: int = 10000,
) -> Path:
    """An evaluation's two files as iwae.evaluate.evaluate writes them (the fields compare reads); the
    test images' SHA-256 stands for the images the record describes (the same description, the same images)."""
    run.mkdir(parents=True, exist_ok=True)
    name = eval_name(k, seed, test_subset)
    np.save(run / f"{name}.npy", np.asarray(bounds, dtype=np.float64))
    images = {"dataset": dataset, "split": "test", "first": len(bounds), "of": of}
    meta = {
        "nll": float(-np.mean(bounds)),
        "method": "lk",
        "k": k,
        "seed": seed,
        "n_test": len(bounds),
        "test_images": {**images, "sha256": hashlib.sha256(json.dumps(images).encode()).hexdigest()},
    }
    (run / f"{name}.json").write_text(json.dumps(meta))
    return run


def test_paired_stderr_equals_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    image_effect = rng.normal(-90, 20, size=300)  # large spread over images, shared by both runs
    l_a = image_effect + rng.normal(0, 0.3, 300)
    l_b = image_effect - 0.5 + rng.normal(0, 0.3, 300)
    a, b = _write_eval(tmp_path / "a", l_a), _write_eval(tmp_path / "b", l_b)
    out = compare_runs(a, b)
    d = (-l_a) - (-l_b)  # NLL_A - NLL_B per image
    assert out["difference"] == pytest.approx(d.mean(), rel=1e-12)
    assert out["paired_stderr"] == pytest.approx(
        np.sqrt(np.sum((d - d.mean()) ** 2) / (len(d) - 1) / len(d)), rel=1e-12
    )
    assert out["nll_a"] == pytest.approx(-l_a.mean()) and out["nll_b"] == pytest.approx(-l_b.mean())
    # pairing is what makes the difference measurable: unpaired, the images' spread swamps it
    assert out["unpaired_stderr"] > 20 * out["paired_stderr"]
    assert out["difference"] < -3 * out["paired_stderr"]  # A (higher L_k) is better: lower NLL
    assert out["n_test"] == 300


def test_different_test_images_are_refused(tmp_path):
    a = _write_eval(tmp_path / "a", np.full(10, -90.0) + np.arange(10))
    b = _write_eval(tmp_path / "b", np.full(10, -91.0) + np.arange(10), dataset="fashion-mnist")
    with pytest.raises(ValueError, match="different test images"):
        compare_runs(a, b)
    # the same file stem with another N (a JSON that claims other images) is refused too
    c = _write_eval(tmp_path / "c", np.full(10, -91.0) + np.arange(10), of=5000)
    with pytest.raises(ValueError, match="different test images"):
        compare_runs(a, c)


def test_a_missing_evaluation_names_the_command_that_makes_it(tmp_path):
    a = _write_eval(tmp_path / "a", np.arange(5.0) - 90)
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match=r"iwae evaluate .*b --k 5000$") as e:
        compare_runs(a, tmp_path / "b")
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"--k 100 --test-subset 20 --seed 3"):
        compare_runs(a, tmp_path / "b", k=100, test_subset=20, seed=3)
    with pytest.raises(FileNotFoundError, match="run directory .* not found"):
        compare_runs(a, tmp_path / "nowhere")


def test_inconsistent_or_broken_files_are_refused(tmp_path):
    a = _write_eval(tmp_path / "a", np.arange(5.0) - 90)
    b = _write_eval(tmp_path / "b", np.arange(5.0) - 91)
    np.save(b / f"{eval_name(5000, 0)}.npy", np.arange(4.0))  # 4 bounds for a JSON of 5 images
    with pytest.raises(ValueError, match="n_test = 5"):
        compare_runs(a, b)
    (b / f"{eval_name(5000, 0)}.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="cannot read"):
        compare_runs(a, b)
    one = _write_eval(tmp_path / "one", np.array([-90.0]))
    two = _write_eval(tmp_path / "two", np.array([-91.0]))
    with pytest.raises(ValueError, match="at least 2"):
        compare_runs(one, two)


def test_over_seeds(tmp_path):
    rng = np.random.default_rng(1)
    runs_a, runs_b, per_seed = [], [], []
    for s in range(4):
        image_effect = rng.normal(-90, 20, size=50)
        l_a = image_effect + rng.normal(0.2 * s, 0.3, 50)  # run-to-run noise: each seed's shift differs
        l_b = image_effect + rng.normal(0, 0.3, 50)
        runs_a.append(_write_eval(tmp_path / f"a{s}", l_a))
        runs_b.append(_write_eval(tmp_path / f"b{s}", l_b))
        d = l_b - l_a
        per_seed.append((d.mean(), d.std(ddof=1) / math.sqrt(len(d))))
    out = compare_runs(runs_a, runs_b)
    means = np.array([m for m, _ in per_seed])
    assert out["seeds"] == 4 and len(out["pairs"]) == 4
    assert out["difference"] == pytest.approx(means.mean())
    assert out["stderr_across_seeds"] == pytest.approx(means.std(ddof=1) / 2)
    assert out["pooled_paired_stderr"] == pytest.approx(math.sqrt(sum(se**2 for _, se in per_seed)) / 4)
    with pytest.raises(ValueError, match="got 4 and 3 runs"):
        compare_runs(runs_a, runs_b[:3])


def test_compare_reads_what_evaluate_writes(tmp_path, shared_data_dir, mnist_splits):
    """End to end: two tiny trained runs, evaluated by iwae.evaluate.evaluate, compared."""
    splits = Splits("mnist", mnist_splits.train[:200], mnist_splits.valid[:20], mnist_splits.test, True)
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(
            objective="iwae",
            k=2,
            epochs=1,
            train_subset=200,
            latent_dims=(2,),
            hidden_dims=((16,),),
            data_dir=str(shared_data_dir),
            seed=seed,
            out=str(tmp_path / f"run{seed}"),
        )
        run = train(cfg, progress=False, splits=splits)
        evaluate(run, splits=splits, k=20, test_subset=30, seed=0)
        runs.append(run)
    out = compare_runs(runs[0], runs[1], k=20, test_subset=30)
    _, l_a = load_bounds(runs[0], k=20, test_subset=30)
    _, l_b = load_bounds(runs[1], k=20, test_subset=30)
    assert out["n_test"] == 30 and out["difference"] == pytest.approx(np.mean(l_b - l_a))
    evaluate(runs[1], splits=splits, k=20, test_subset=31, seed=0)
    # run1 has the evaluation on 31 images, run0 has not: the message names run0's command
    with pytest.raises(FileNotFoundError, match=r"run0 --k 20 --test-subset 31$"):
        compare_runs(runs[0], runs[1], k=20, test_subset=31)
    # AIS evaluations (iwae.ais.ais_evaluate) pair the same way, by their file stem
    from iwae.ais import ais_eval_name, ais_evaluate

    for run in runs:
        result = ais_evaluate(run, steps=5, chains=2, leapfrog=2, test_subset=30, seed=0)
        assert result["n_test"] == 30 and result["files"]["bounds"] == f"{ais_eval_name(5, 2, 2, 0, 30)}.npy"
    stem = ais_eval_name(5, 2, 2, 0, 30)
    out = compare_runs(runs[0], runs[1], evaluation=stem)
    _, a_ais = load_bounds(runs[0], evaluation=stem)
    _, b_ais = load_bounds(runs[1], evaluation=stem)
    assert out["difference"] == pytest.approx(np.mean(b_ais - a_ais))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ais_evaluate(runs[0], steps=0)


def test_the_ais_compare_and_bdmc_commands(tmp_path, shared_data_dir, mnist_splits):
    """`iwae evaluate --method ais`, `iwae compare` and `iwae bdmc` make the library's calls and write
    its files: the AIS JSON/.npy pair as ais_evaluate names them, compare's difference equal to the
    per-image bounds' mean difference, BDMC's rows with upper - lower = gap, and one-line errors."""
    from cli_helpers import assert_one_line_error, invoke, small_npz

    from iwae.ais import ais_eval_name

    dataset = small_npz(tmp_path, mnist_splits, 200, 30)
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        assert (
            invoke(
                "train",
                "--objective",
                "iwae",
                "--k",
                2,
                "--epochs",
                1,
                "--latent-dims",
                2,
                "--hidden-dims",
                16,
                "--dataset",
                dataset,
                "--seed",
                seed,
                "--out",
                run,
                "--quiet",
            ).exit_code
            == 0
        )
        runs.append(run)
        result = invoke(
            "evaluate",
            run,
            "--method",
            "ais",
            "--steps",
            4,
            "--chains",
            2,
            "--leapfrog",
            2,
            "--test-subset",
            30,
            "--json",
        )
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        stem = ais_eval_name(4, 2, 2, 0, 30)
        assert out["files"] == {"json": f"{stem}.json", "bounds": f"{stem}.npy"} and out["n_test"] == 30
        assert json.loads((run / f"{stem}.json").read_text())["nll"] == out["nll"]
    result = invoke("compare", runs[0], runs[1], "--evaluation", stem, "--json")
    assert result.exit_code == 0, result.output
    _, a = load_bounds(runs[0], evaluation=stem)
    _, b = load_bounds(runs[1], evaluation=stem)
    assert json.loads(result.output)["difference"] == pytest.approx(np.mean(b - a))
    text = invoke("compare", runs[0], runs[1], "--evaluation", stem).output
    assert "A - B" in text and "paired s.e. over 30 test images" in text
    assert_one_line_error(invoke("compare", runs[0], runs[1]), "iwae evaluate")  # no L_5000 evaluation yet

    result = invoke("bdmc", runs[0], "--n", 3, "--steps", "2,20", "--chains", 2, "--leapfrog", 2, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["steps"] for r in out["rows"]] == [2, 20]
    assert all(r["gap"] == pytest.approx(r["upper"] - r["lower"]) for r in out["rows"])
    assert Path(out["figure"]).is_file() and json.loads(Path(out["json"]).read_text())["rows"] == out["rows"]
    assert_one_line_error(invoke("bdmc", runs[0], "--steps", "0,10"), "--steps")
    assert_one_line_error(invoke("evaluate", tmp_path / "missing", "--method", "ais"), "not found")
