"""Tests for iwae.compare: the paired difference of two runs' NLLs, its refusals, and seeds."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from iwae.compare import ais_gaps, compare_runs, compare_text, evaluation_gap, gap_text, load_bounds
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
    of: int | None = None,
    sha256: str | None = None,
) -> Path:
    """An evaluation's two files as iwae.evaluate.evaluate writes them (the fields compare reads): on
    the first ``test_subset`` of ``of`` test images, or on all of them (``of`` = N) without a subset; the
    test images' SHA-256 stands for the images the record describes (the same description, the same images)."""
    run.mkdir(parents=True, exist_ok=True)
    name = eval_name(k, seed, test_subset)
    np.save(run / f"{name}.npy", np.asarray(bounds, dtype=np.float64))
    images = {"dataset": dataset, "split": "test", "first": len(bounds), "of": of or len(bounds)}
    meta = {
        "nll": float(-np.mean(bounds)),
        "method": "lk",
        "k": k,
        "seed": seed,
        "n_test": len(bounds),
        "test_images": {**images, "sha256": hashlib.sha256(json.dumps(images).encode()).hexdigest()},
        "model": {"sha256": sha256 or f"model-of-{run.relative_to(run.parents[1])}"},
    }
    (run / f"{name}.json").write_text(json.dumps(meta))
    return run


def _write_ais(
    run: Path, values: np.ndarray, *, steps: int = 10, initial: str = "encoder", seed: int = 0, of: int = 10000
) -> str:
    """An AIS evaluation's two files (the fields compare reads) on the first len(values) of ``of`` images."""
    run.mkdir(parents=True, exist_ok=True)
    name = f"ais_T{steps}_C2_L2_n{len(values)}_seed{seed}" + ("" if initial == "encoder" else f"_{initial}")
    np.save(run / f"{name}.npy", np.asarray(values, dtype=np.float64))
    images = {"dataset": "mnist", "split": "test", "first": len(values), "of": of}
    meta = {
        "nll": float(-np.mean(values)),
        "steps": steps,
        "chains": 2,
        "leapfrog": 2,
        "schedule": "sigmoid",
        "initial": initial,
        "seed": seed,
        "n_test": len(values),
        "method": "ais",
        "test_images": {**images, "sha256": hashlib.sha256(json.dumps(images).encode()).hexdigest()},
        "model": {"sha256": f"model-of-{run.relative_to(run.parents[1])}"},
    }
    (run / f"{name}.json").write_text(json.dumps(meta))
    return name


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
    assert "\n" not in str(e.value) and "eval_k5000_seed0 (L_5000 on all 5 mnist test images, seed 0)" in str(e.value)
    # asked for an evaluation neither has: the commands that make it, for both
    with pytest.raises(
        FileNotFoundError, match=r"a --k 100 --test-subset 20 --seed 3 and .*b --k 100 --test-subset 20"
    ):
        compare_runs(a, tmp_path / "b", k=100, test_subset=20, seed=3)
    with pytest.raises(FileNotFoundError, match="run directory .* not found"):
        compare_runs(a, tmp_path / "nowhere")
    # a subset evaluation that B lacks: its command has the subset
    _write_eval(tmp_path / "c", np.arange(5.0) - 90, test_subset=5, of=10000)
    with pytest.raises(FileNotFoundError, match=r"iwae evaluate .*b --k 5000 --test-subset 5$"):
        compare_runs(tmp_path / "c", tmp_path / "b")


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


def _image_effects(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-90, 20, size=n)  # the images' own spread, shared by runs


def test_the_evaluation_both_runs_have_is_used(tmp_path):
    """The issue's case: both runs were evaluated with --test-subset 500 only; compare finds that
    evaluation rather than asking for L_5000 on all images."""
    x = _image_effects(500)
    a = _write_eval(tmp_path / "a", x + 0.1, test_subset=500, of=10000)
    b = _write_eval(tmp_path / "b", x - 0.2, test_subset=500, of=10000)
    out = compare_runs(a, b)
    assert out["evaluation"]["a"] == out["evaluation"]["b"] == "eval_k5000_n500_seed0"
    assert out["evaluation"]["description"] == "L_5000 on the first 500 of 10000 mnist test images, seed 0"
    assert out["difference"] == pytest.approx(-0.3) and out["k"] == 5000 and out["method"] == "lk"
    # an evaluation only one of them has is no candidate
    _write_eval(a, x[:100], k=100, test_subset=100, of=10000)
    assert compare_runs(a, b)["evaluation"]["a"] == "eval_k5000_n500_seed0"


def test_several_fitting_evaluations_are_listed_with_how_to_choose(tmp_path):
    x = _image_effects(1000)
    a, b = tmp_path / "a", tmp_path / "b"
    for n in (500, 1000):
        _write_eval(a, x[:n], test_subset=n, of=10000)
        _write_eval(b, x[:n] - 1, test_subset=n, of=10000)
    with pytest.raises(ValueError, match="2 evaluations fit") as e:
        compare_runs(a, b)
    message = str(e.value)
    assert "eval_k5000_n500_seed0 (L_5000 on the first 500" in message and "eval_k5000_n1000_seed0" in message
    assert "--evaluation NAME" in message and "--test-subset" in message and "\n" not in message
    assert compare_runs(a, b, test_subset=1000)["n_test"] == 1000
    assert compare_runs(a, b, evaluation="eval_k5000_n500_seed0")["n_test"] == 500
    with pytest.raises(FileNotFoundError, match="no L_k evaluation with k 50"):
        compare_runs(a, b, k=50)
    # the same through the command line: one line, exit status 2, then the choice
    from cli_helpers import assert_one_line_error, invoke

    assert_one_line_error(invoke("compare", a, b), "2 evaluations fit")
    result = invoke("compare", a, b, "--test-subset", 500)
    assert result.exit_code == 0 and "eval_k5000_n500_seed0" in result.output, result.output


def test_ais_and_lk_evaluations_are_chosen_by_method(tmp_path):
    x = _image_effects(50)
    a = _write_eval(tmp_path / "a", x, test_subset=50, of=10000)
    b = _write_eval(tmp_path / "b", x - 1, test_subset=50, of=10000)
    stem = _write_ais(a, x[:20] + 1)
    _write_ais(b, x[:20] - 1)
    assert compare_runs(a, b)["evaluation"]["a"] == "eval_k5000_n50_seed0"
    out = compare_runs(a, b, method="ais")
    assert out["evaluation"]["a"] == stem and out["k"] is None and out["method"] == "ais"
    assert out["difference"] == pytest.approx(-2.0)  # NLL_A - NLL_B = -(x + 1) + (x - 1)
    # AIS of other settings does not pair: B's AIS from the prior is not A's from the encoder
    c = _write_eval(tmp_path / "c", x - 1, test_subset=50, of=10000)
    _write_ais(c, x[:20], initial="prior")
    with pytest.raises(
        FileNotFoundError, match=r"make it with: iwae evaluate .*c --method ais --steps 10 .*--test-subset 20$"
    ):
        compare_runs(a, c, method="ais")
    with pytest.raises(ValueError, match="unknown method"):
        compare_runs(a, b, method="bdmc")


def test_a_run_compared_with_itself_is_refused(tmp_path):
    x = _image_effects(20)
    a = _write_eval(tmp_path / "a", x)
    for same in (a, tmp_path / "a" / ".." / "a"):
        with pytest.raises(ValueError, match="the same run"):
            compare_runs(a, same)
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    with pytest.raises(ValueError, match="the same run"):
        compare_runs(tmp_path / "link", a)
    # a copy of the run's folder: another path, the same model (its evaluations record its sha256)
    sha = json.loads((a / "eval_k5000_seed0.json").read_text())["model"]["sha256"]
    copy = _write_eval(tmp_path / "copy", x, sha256=sha)
    with pytest.raises(ValueError, match="hold the same model"):
        compare_runs(a, copy)
    # negative control: another model with the same numbers is compared
    other = _write_eval(tmp_path / "other", x)
    assert compare_runs(a, other)["difference"] == 0.0


def _seed_folder(folder: Path, seeds: list[int], shift: float, x: np.ndarray) -> Path:
    """A folder of seeds as iwae train --seeds writes it (seed<N>/config.yaml), each evaluated."""
    for s in seeds:
        run = _write_eval(folder / f"seed{s}", x + shift + 0.1 * s, test_subset=len(x), of=10000)
        (run / "config.yaml").write_text(f"seed: {s}\n")
    return folder


def test_folders_of_seeds_are_paired_seed_by_seed(tmp_path):
    x = _image_effects(40)
    a = _seed_folder(tmp_path / "a", [0, 1, 2], 0.0, x)
    b = _seed_folder(tmp_path / "b", [0, 1, 3], -1.0, x + np.random.default_rng(3).normal(0, 0.5, 40))
    out = compare_runs(a, b)
    per_seed = []
    for s in (0, 1):
        _, l_a = load_bounds(a / f"seed{s}", "eval_k5000_n40_seed0")
        _, l_b = load_bounds(b / f"seed{s}", "eval_k5000_n40_seed0")
        per_seed.append(np.mean(l_b - l_a))  # NLL_A - NLL_B
    assert out["seed_numbers"] == [0, 1] and out["seeds"] == 2
    assert out["unmatched"] == {"a": [2], "b": [3]}
    assert out["difference"] == pytest.approx(np.mean(per_seed))
    assert out["stderr_across_seeds"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(2))
    assert out["range"] == pytest.approx([min(per_seed), max(per_seed)])
    text = compare_text(out)
    assert "seed 0" in text and "seeds 2 of A" in text and "s.e. across 2 seed pairs" in text
    # refusals: a folder against one run, a folder against itself, no seed in common
    with pytest.raises(ValueError, match="A is a folder of seeds and B is one run"):
        compare_runs(a, b / "seed0")
    with pytest.raises(ValueError, match="the same folder of seeds"):
        compare_runs(a, tmp_path / "a")
    c = _seed_folder(tmp_path / "c", [7], 0.0, x)
    with pytest.raises(ValueError, match="no seed in common"):
        compare_runs(a, c)
    # a member without the evaluation: the command evaluates the whole folder
    (b / "seed1" / "eval_k5000_n40_seed0.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"make it with: iwae evaluate \S*b --k 5000 --test-subset 40$"):
        compare_runs(a, b)


def test_the_verdict_says_which_is_lower_and_whether_it_is_resolved(tmp_path):
    x = _image_effects(400)
    noise = np.random.default_rng(5).normal(0, 1, 400)
    a = _write_eval(tmp_path / "a", x + noise)
    b = _write_eval(tmp_path / "b", x + noise + 1.0)  # B's bound is higher: B has the lower NLL
    v = compare_runs(a, b)["verdict"]
    assert v["lower"] == "B" and v["resolved"] and v["by"] == pytest.approx(1.0)
    assert v["text"].startswith(f"B ({b}) has the lower NLL, by 1 nats") and "resolved at 2 s.e." in v["text"]
    assert "evaluation noise only" in v["note"] and "--seeds" in v["note"]
    c = _write_eval(tmp_path / "c", x + np.random.default_rng(6).normal(0, 1, 400) - 0.01)
    v = compare_runs(a, c)["verdict"]
    d = -(x + noise) + (x + np.random.default_rng(6).normal(0, 1, 400) - 0.01)  # NLL_A - NLL_C per image
    ratio = abs(d.mean()) / (d.std(ddof=1) / np.sqrt(400))
    assert v["ratio"] == pytest.approx(ratio) and ratio < 2  # an independent computation of the ratio
    assert not v["resolved"] and "not resolved at 2 s.e." in v["text"]
    assert v["lower"] == ("A" if d.mean() < 0 else "B")
    # over 3 seed pairs: 2 s.e. under a t with 2 degrees of freedom covers 2 / sqrt(6), not 95%
    fa = _seed_folder(tmp_path / "fa", [0, 1, 2], 0.0, x)
    fb = _seed_folder(tmp_path / "fb", [0, 1, 2], 0.5, x + noise)
    v = compare_runs(fa, fb)["verdict"]
    assert v["stderr_kind"] == "s.e. across 3 seed pairs"
    assert f"covers only {2 / np.sqrt(6):.0%}" in v["note"] and "±4.30 s.e." in v["note"]
    assert "verdict" in compare_text(compare_runs(fa, fb))
    # every image differs by the same amount: the s.e. is 0, the ratio None (JSON has no infinity)
    same_a = _write_eval(tmp_path / "same-a", np.full(400, -90.0))
    same_b = _write_eval(tmp_path / "same-b", np.full(400, -90.5))  # exactly 0.5 lower bound on every image
    v = compare_runs(same_a, same_b)["verdict"]
    assert v["lower"] == "A" and v["stderr"] == 0 and v["resolved"] and v["by"] == 0.5
    assert v["ratio"] is None and json.loads(json.dumps(v, allow_nan=False)) == v


def test_ais_minus_lk_on_the_same_images_against_numpy(tmp_path):
    """AIS - L_k of one run, image by image: the named result against a numpy computation, its sign,
    an L_k of more images paired on its first ones, and the refusals."""
    rng = np.random.default_rng(7)
    x = _image_effects(10)
    l_5000 = x[:6] + rng.normal(0, 0.2, 6)
    l_100 = x + rng.normal(-0.5, 0.2, 10)  # an L_100 of the first 10 images
    ais = x[:6] + 1.0 + rng.normal(0, 0.2, 6)
    run = _write_eval(tmp_path / "run", l_5000, test_subset=6, of=10000)
    _write_eval(run, l_100, k=100, test_subset=10, of=10000)
    stem = _write_ais(run, ais)
    gaps = ais_gaps(run)
    assert [g.b for g in gaps] == ["eval_k5000_n6_seed0", "eval_k100_n10_seed0"]  # the largest k first
    for g, l_k in zip(gaps, (l_5000, l_100[:6])):
        d = ais - l_k
        assert g.a == stem and g.n_test == 6
        assert g.gap == pytest.approx(d.mean(), rel=1e-12)
        assert g.stderr == pytest.approx(np.sqrt(np.sum((d - d.mean()) ** 2) / 5 / 6), rel=1e-12)
    assert gaps[0].gap > 0 and not gaps[0].prefix and gaps[1].prefix  # AIS lies above L_k
    # the sign follows the order: b - a is the negative
    back = evaluation_gap(run, "eval_k5000_n6_seed0", stem)
    assert back.gap == pytest.approx(-gaps[0].gap) and back.stderr == pytest.approx(gaps[0].stderr)
    assert "positive: L_5000 lies below" in gap_text(gaps) and "has not converged" not in gap_text(gaps)
    # an AIS resolved below an L_k is said to be the looser bound (here the order stands in for it)
    assert "AIS lies below an L_k by more than 2 s.e.: this AIS has not converged" in gap_text([back])
    # refused: evaluations of other images (L_k of fewer images than AIS), the same evaluation twice
    _write_eval(run, x[:3], k=7, test_subset=3, of=10000)
    with pytest.raises(ValueError, match="b must cover a's images; swap a and b"):
        evaluation_gap(run, stem, "eval_k7_n3_seed0")
    swapped = evaluation_gap(run, "eval_k7_n3_seed0", stem)  # L_7 - AIS on AIS's first 3 images
    assert swapped.prefix and swapped.n_test == 3
    assert swapped.gap == pytest.approx(np.mean(x[:3] - ais[:3]), rel=1e-12)
    _write_eval(run, x[:6], k=9, test_subset=6, of=10000, dataset="fashion-mnist")  # other images: no order pairs
    with pytest.raises(ValueError, match="not of the same test images"):
        evaluation_gap(run, stem, "eval_k9_n6_seed0")
    assert "eval_k7_n3_seed0" not in [g.b for g in ais_gaps(run, stem)]
    with pytest.raises(ValueError, match="two different evaluations"):
        evaluation_gap(run, stem, stem)
    _write_ais(run, ais, steps=20)
    with pytest.raises(ValueError, match="2 AIS evaluations"):
        ais_gaps(run)
    with pytest.raises(FileNotFoundError, match="no AIS evaluations"):
        ais_gaps(_write_eval(tmp_path / "lk-only", x))


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
    assert "verdict" in text and "evaluation noise only" in text
    assert (
        json.loads(invoke("compare", runs[0], runs[1], "--method", "ais", "--json").output)["evaluation"]["a"] == stem
    )

    # AIS - L_k, printed by evaluate --method ais once an L_k of the same images exists
    ais_args = ("--method", "ais", "--steps", 4, "--chains", 2, "--leapfrog", 2, "--test-subset", 30)
    text = invoke("evaluate", runs[0], *ais_args, "--quiet").output
    # its cost first: a short AIS is a fraction of L_5000's passes, not "0x"
    assert re.search(r"AIS on 30 images: (about \d+ s|under 1 s) \(0\.\d+x the passes of L_5000\)", text), text
    assert f"no L_k evaluation of these 30 images yet: iwae evaluate {runs[0]} --test-subset 30" in text
    assert invoke("evaluate", runs[0], "--k", 50, "--test-subset", 30, "--quiet").exit_code == 0
    text = invoke("evaluate", runs[0], *ais_args, "--quiet").output
    d = np.load(runs[0] / f"{stem}.npy") - np.load(runs[0] / "eval_k50_n30_seed0.npy")
    line = next(line for line in text.splitlines() if line.startswith("AIS - L_50"))
    assert f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(30):.3f} nats" in line and "same 30 images" in line
    gaps = json.loads(invoke("evaluate", runs[0], *ais_args, "--quiet", "--json").output)["gaps"]
    assert [g["b"] for g in gaps] == ["eval_k50_n30_seed0"] and gaps[0]["gap"] == pytest.approx(d.mean())

    result = invoke("bdmc", runs[0], "--n", 3, "--steps", "2,20", "--chains", 2, "--leapfrog", 2, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["steps"] for r in out["rows"]] == [2, 20]
    assert all(r["gap"] == pytest.approx(r["upper"] - r["lower"]) for r in out["rows"])
    assert Path(out["figure"]).is_file() and json.loads(Path(out["json"]).read_text())["rows"] == out["rows"]
    assert_one_line_error(invoke("bdmc", runs[0], "--steps", "0,10"), "--steps")
    assert_one_line_error(invoke("evaluate", tmp_path / "missing", "--method", "ais"), "not found")
