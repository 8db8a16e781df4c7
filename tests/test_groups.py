"""A folder of seeds as one thing, end to end: `iwae train --seeds` then `iwae evaluate D`, `iwae compare
D1 D2` and `iwae report D`, each checked against the members' own files and against the Python API."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, invoke, small_npz

import iwae
from iwae.compare import compare_runs
from iwae.groups import evaluate_group, group_text, mean_sd
from iwae.rundir import check_run_or_seeds, is_seed_group, member_seed, seed_members

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, mnist_splits) -> dict[str, Path]:
    """Two folders of three seeds each (IWAE and VAE, k = 2, one epoch on 200 MNIST images, a 2-D latent)."""
    root = tmp_path_factory.mktemp("groups")
    dataset = small_npz(root, mnist_splits, 200, 30)
    out = {}
    for objective in ("iwae", "vae"):
        folder = root / objective
        result = invoke(
            "train",
            "--objective",
            objective,
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
            "--seeds",
            ",".join(map(str, SEEDS)),
            "--out",
            folder,
            "--quiet",
        )
        assert result.exit_code == 0, result.output
        assert f"evaluate them with: iwae evaluate {folder}" in result.output
        out[objective] = folder
    return out


def _member_records(folder: Path, stem: str) -> list[dict]:
    return [json.loads((folder / f"seed{s}" / f"{stem}.json").read_text()) for s in SEEDS]


def test_the_folder_and_its_members(folders, tmp_path):
    assert is_seed_group(folders["iwae"]) and [member_seed(m) for m in seed_members(folders["iwae"])] == list(SEEDS)
    assert not is_seed_group(folders["iwae"] / "seed0")  # a run is not a folder of seeds
    (tmp_path / "seed01").mkdir()  # not a member's name
    (tmp_path / "seed01" / "config.yaml").write_text("seed: 1\n")
    assert not is_seed_group(tmp_path)
    result = invoke("evaluate", tmp_path)
    assert_one_line_error(result, "is neither a run")
    check_run_or_seeds(folders["iwae"])  # no error for a folder of seeds, nor for a run
    check_run_or_seeds(folders["iwae"] / "seed0")
    assert iwae.groups.evaluate_group is evaluate_group and "groups" in iwae.__all__  # iwae.groups, lazily


def test_evaluate_a_folder_of_seeds(folders):
    """iwae evaluate D: each seed's evaluation written in its folder, per-seed rows, and the mean ± sd
    (n - 1) over seeds computed here from the members' files; the JSON is what Python's evaluate_group
    returns."""
    folder = folders["iwae"]
    result = invoke("evaluate", folder, "--k", 20, "--test-subset", 15)
    assert result.exit_code == 0, result.output
    records = _member_records(folder, "eval_k20_n15_seed0")
    nlls = [r["nll"] for r in records]
    mean, sd = statistics.mean(nlls), statistics.stdev(nlls)
    lines = result.output.splitlines()
    for s, r in zip(SEEDS, records):
        assert any(line.startswith(f"{s} ") and f"{r['nll']:.2f} ± {r['nll_stderr']:.2f}" in line for line in lines)
    summary = next(line for line in lines if line.startswith("mean over 3 seeds"))
    assert f"± {sd:.2f}" in summary or f"± {sd:.3f}" in summary
    assert f"{mean:.2f}" in summary and "sd over seeds, n - 1" in summary
    assert f"s.e. of the mean across seeds {sd / math.sqrt(3):.2f}" in summary
    assert "test NLL (nats) ± s.e. over images" in result.output  # each seed's ± is over images
    # the Python API gives the same numbers (the same seed of the samples: the same evaluation)
    out = evaluate_group(folder, k=20, test_subset=15)
    assert out["n"] == 3 and out["evaluation"] == "eval_k20_n15_seed0"
    assert out["nll"]["per_seed"] == nlls
    assert out["nll"]["mean"] == pytest.approx(mean) and out["nll"]["sd"] == pytest.approx(sd)
    assert out["nll"]["stderr"] == pytest.approx(sd / math.sqrt(3))
    as_json = json.loads(invoke("evaluate", folder, "--k", 20, "--test-subset", 15, "--json").output)
    assert as_json["nll"] == out["nll"]
    assert mean_sd([1.0]) == (1.0, None)


def test_compare_two_folders_of_seeds(folders):
    for folder in folders.values():
        assert invoke("evaluate", folder, "--k", 20, "--test-subset", 15, "--quiet").exit_code == 0
    result = invoke("compare", folders["iwae"], folders["vae"])
    assert result.exit_code == 0, result.output
    diffs = []
    for s in SEEDS:
        a = np.load(folders["iwae"] / f"seed{s}" / "eval_k20_n15_seed0.npy")
        b = np.load(folders["vae"] / f"seed{s}" / "eval_k20_n15_seed0.npy")
        diffs.append(np.mean(b - a))  # NLL(A) - NLL(B)
    out = compare_runs(folders["iwae"], folders["vae"])
    assert out["difference"] == pytest.approx(np.mean(diffs))
    assert out["stderr_across_seeds"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(3))
    assert out["seed_numbers"] == list(SEEDS)
    verdict = next(line for line in result.output.splitlines() if line.startswith("verdict"))
    assert "s.e. across 3 seed pairs" in verdict and out["verdict"]["text"] in verdict
    assert "t distribution with 2 degrees of freedom" in result.output
    assert_one_line_error(invoke("compare", folders["iwae"], folders["iwae"]), "the same folder of seeds")


def test_report_of_a_folder_of_seeds(folders):
    folder = folders["iwae"]
    assert invoke("evaluate", folder, "--k", 20, "--test-subset", 15, "--quiet").exit_code == 0
    result = invoke("report", folder)
    assert result.exit_code == 0, result.output
    text = (folder / "report.md").read_text(encoding="utf-8")
    nlls = [r["nll"] for r in _member_records(folder, "eval_k20_n15_seed0")]
    mean, sd = statistics.mean(nlls), statistics.stdev(nlls)
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert "NLL (mean ± sd over seeds)" in header
    row = next(line for line in text.splitlines() if line.startswith(f"| `{folder.name}, L_20, 15 images`"))
    assert "| 3 |" in row and f"{mean:.2f}" in row
    assert "#### Per seed" in text and "NLL (± s.e. over images)" in text.split("#### Per seed")[1]
    assert "(`iwae train --seeds 0,1,2`)" in text and "report_figures" in text  # the training curves
    assert json.loads((folder / "report.json").read_text())["experiments"][0]["groups"][0]["n_seeds"] == 3
    assert sd > 0


def test_ais_over_a_folder_of_seeds_gives_each_seeds_gap(folders):
    """iwae evaluate D --method ais: AIS per seed and its gap to the L_k of the same images, checked
    against a numpy computation on the members' files."""
    folder = folders["vae"]
    assert invoke("evaluate", folder, "--k", 20, "--test-subset", 10, "--quiet").exit_code == 0
    result = invoke(
        "evaluate", folder, "--method", "ais", "--steps", 3, "--chains", 2, "--leapfrog", 2, "--test-subset", 10
    )
    assert result.exit_code == 0, result.output
    assert "AIS - L_20 ± paired s.e." in result.output
    gaps, unconverged = [], []
    for s in SEEDS:
        ais = np.load(folder / f"seed{s}" / "ais_T3_C2_L2_sigmoid_encoder_n10_seed0.npy")
        l_k = np.load(folder / f"seed{s}" / "eval_k20_n10_seed0.npy")
        d = ais - l_k
        gaps.append(d.mean())
        if d.mean() + 2 * d.std(ddof=1) / np.sqrt(10) < 0:  # AIS resolved below L_20: not converged
            unconverged.append(str(s))
        row = next(line for line in result.output.splitlines() if line.startswith(f"{s} "))
        assert f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(10):.3f}" in row
    summary = next(line for line in result.output.splitlines() if line.startswith("AIS - L_20"))
    assert f"{np.mean(gaps):.3f}" in summary or f"{np.mean(gaps):.4f}" in summary
    # the not-converged note names exactly the seeds whose AIS lies resolved below their L_k
    notes = [line for line in result.output.splitlines() if "not converged" in line]
    if unconverged:
        plural = "s" if len(unconverged) > 1 else ""
        assert len(notes) == 1 and f"by more than 2 s.e. for seed{plural} {', '.join(unconverged)}:" in notes[0]
    else:
        assert notes == []


def test_the_not_converged_note_names_each_seed_whose_ais_is_resolved_below_its_l_k():
    def member(seed: int, gap: float, stderr: float) -> dict:
        record = {"gap": gap, "stderr": stderr, "description_b": "L_20 on 10 images", "b": "eval_k20_n10_seed0"}
        return {"seed": seed, "result": {"nll": 90.0, "nll_stderr": 1.0}, "gaps": [record]}

    def text(*members: dict) -> str:
        nll = {"mean": 90.0, "sd": 0.0, "stderr": 0.0, "per_seed": [90.0] * len(members)}
        result = {"method": "ais", "n": len(members), "members": list(members), "nll": nll}
        return group_text({**result, "description": "AIS", "evaluation": "ais_T3"})

    # seed 1: -0.5 + 2 * 0.2 < 0, resolved below; seed 0 (-0.3 + 2 * 0.2 > 0) and seed 2 (above) are not
    one = text(member(0, -0.3, 0.2), member(1, -0.5, 0.2), member(2, 0.4, 0.1))
    assert "AIS lies below an L_k by more than 2 s.e. for seed 1: its AIS has not converged" in one
    two = text(member(0, -0.5, 0.2), member(1, -0.5, 0.2))
    assert "for seeds 0, 1: their AIS has not converged" in two
    assert "not converged" not in text(member(0, -0.3, 0.2), member(1, 0.1, 0.2))


def test_several_runs_in_one_evaluate_command(folders, tmp_path):
    """iwae evaluate A B: each run (here a seed of each folder) measured as alone, under its name; with
    --json a list; every RUN_DIR checked before the first is measured; a run given twice refused."""
    a, b = folders["iwae"] / "seed0", folders["vae"] / "seed1"
    both = invoke("evaluate", a, b, "--k", 3, "--test-subset", 4, "--seed", 5, "--quiet")
    assert both.exit_code == 0, both.output
    lines = both.output.splitlines()
    assert lines.index(f"{a}:") < lines.index(f"{b}:") and sum("test NLL" in line for line in lines) == 2
    files = [json.loads((r / "eval_k3_n4_seed5.json").read_text()) for r in (a, b)]
    alone = json.loads(invoke("evaluate", b, "--k", 3, "--test-subset", 4, "--seed", 5, "--json").output)
    assert alone["nll"] == files[1]["nll"]  # the same number as evaluated by itself
    listed = json.loads(invoke("evaluate", a, b, "--k", 3, "--test-subset", 4, "--seed", 5, "--json").output)
    assert [r["nll"] for r in listed] == [f["nll"] for f in files]
    # a bad second folder: nothing is measured, the first run's folder is unchanged
    before = sorted(p.name for p in a.iterdir())
    assert_one_line_error(invoke("evaluate", a, tmp_path / "nowhere", "--k", 2, "--quiet"), "nowhere")
    assert sorted(p.name for p in a.iterdir()) == before
    assert_one_line_error(invoke("evaluate", a, f"{a}/", "--k", 2, "--quiet"), "given twice")
    moved = ("--dataset", "npz:elsewhere.npz")
    assert_one_line_error(invoke("evaluate", a, b, *moved, "--k", 2, "--quiet"), "give one RUN_DIR")
