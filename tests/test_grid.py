"""Tests for iwae.grid and ``iwae grid``: canonical runs, the sweep as an experiment of the engine,
an end-to-end tiny grid run by the engine (csv, figure, table, reproduction.json, ``iwae report``),
reuse of finished runs, redoing interrupted ones, and the command line."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import by_hand
import pytest
from click.testing import CliRunner

from iwae.cli import main
from iwae.data import Splits
from iwae.experiments.engine import STATE_FILE
from iwae.grid import (
    FIGURE_DPI,
    FIGURE_SIZE,
    PROTOCOL,
    GridPoint,
    Run,
    canonical_run,
    distinct_runs,
    grid_experiment,
    grid_points,
    grid_table,
    plot_grid,
    read_grid_csv,
    run_grid,
)
from iwae.rundir import RESULT_FILE
from iwae.train import loop as train_module

plan = distinct_runs  # the grid's points -> runs map (the engine's plan is iwae.experiments.engine.plan)

TINY = dict(total=4, betas=[0.0, 0.5], epochs=1, train_subset=None, test_subset=10, log_p_k=20, progress=False)


# ----------------------------------------------------------------------------- canonical runs
def test_identical_objectives_share_one_run():
    iwae64, vae64 = Run("iwae", 64), Run("vae", 64)
    assert canonical_run(GridPoint("miwae", 1, 64)) == iwae64
    assert canonical_run(GridPoint("piwae", 1, 64)) == iwae64
    assert canonical_run(GridPoint("ciwae", 1, 64, 0.0)) == iwae64
    assert canonical_run(GridPoint("miwae", 64, 1)) == vae64
    assert canonical_run(GridPoint("ciwae", 1, 64, 1.0)) == vae64


def test_piwae_64_1_is_not_the_vae():
    run = canonical_run(GridPoint("piwae", 64, 1))
    assert run == Run("piwae", 64, m=64) != Run("vae", 64)
    assert run.config(out="x").spec.label == "PIWAE(64,1)"


def test_default_grid_has_seven_mk_points_and_sixteen_runs():
    points = grid_points()
    mk = [(p.m, p.k) for p in points if p.objective == "miwae"]
    assert mk == [(1, 64), (2, 32), (4, 16), (8, 8), (16, 4), (32, 2), (64, 1)]
    assert [(p.m, p.k) for p in points if p.objective == "piwae"] == mk
    assert [p.beta for p in points if p.objective == "ciwae"] == [0, 0.25, 0.5, 0.75, 1]
    runs = plan(points)
    assert len(points) == 19 and len(runs) == 16
    assert [p.label for p in runs[Run("iwae", 64)]] == ["MIWAE(1,64)", "PIWAE(1,64)", "CIWAE(beta=0)"]
    assert [p.label for p in runs[Run("vae", 64)]] == ["MIWAE(64,1)", "CIWAE(beta=1)"]
    assert len({r.name for r in runs}) == 16  # distinct directories


def test_the_grid_is_an_experiment_of_the_engine():
    """The generated experiment has one run per distinct run, named as before (existing run folders
    are reused), each with the points it serves, the protocol's settings, and the published rows of
    Rainforth et al. on the runs that have one."""
    exp = grid_experiment(epochs=2, train_subset=300, test_subset=50, log_p_k=100, seed=3)
    runs = exp.resolve(PROTOCOL)
    by_point = plan(grid_points())
    assert [r.name for r in runs] == [run.name for run in by_point]
    for r, (run, served) in zip(runs, by_point.items()):
        assert [p["label"] for p in r.points] == [p.label for p in served]
        c = r.config
        assert (c["objective"], c["k"], c["epochs"], c["train_subset"], c["seed"]) == (run.objective, 64, 2, 300, 3)
        assert r.eval == {"k": 100, "bound_ks": [64], "test_subset": 50, "seed": 3}
        assert r.train_config("x").spec == run.config(out="x").spec  # the same objective as the old grid's run
    published = {r.name: r.published for r in runs}
    assert published["iwae-k64"] == pytest.approx({"iwae64": -86.11, "log_p_hat": -84.52, "neg_kl": -1.59})
    assert published["miwae-m2-k32"] is None and published["vae-k64"]["iwae64"] == pytest.approx(-86.69)


def test_total_12_uses_its_divisors():
    points = grid_points(12, betas=[0.5])
    assert [(p.m, p.k) for p in points if p.objective == "piwae"] == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(total=0), "total"),
        (dict(total=64, betas=[0.5, 1.5]), r"beta must lie in \[0, 1\], got 1.5"),
        (dict(total=64, ms=[1, 3]), "M = 3 does not divide total = 64"),
    ],
)
def test_bad_grids_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        grid_points(**kwargs)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_splits(mnist_splits) -> Splits:
    s = mnist_splits
    return Splits("mnist", s.train[:40].clone(), s.valid[:20].clone(), s.test[:20].clone(), True)


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory, tiny_splits):
    out = tmp_path_factory.mktemp("grid")
    rows = run_grid(out, splits=tiny_splits, **TINY)
    return out, rows


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_tiny_grid_writes_one_row_per_point(tiny_grid, tiny_splits):
    out, rows = tiny_grid
    points = grid_points(4, [0.0, 0.5])
    assert [r["label"] for r in rows] == [p.label for p in points]
    on_disk = read_grid_csv(out / "grid.csv")
    assert [r["label"] for r in on_disk] == [p.label for p in points]
    for r in on_disk:
        for key in ("iwae_bound", "log_p_hat", "neg_kl", "seconds", "train_seconds", "eval_seconds"):
            assert math.isfinite(r[key]), (r["label"], key)
        # Burda et al.'s Theorem 1: L_4 <= L_20 on average, so -KL = IWAE-4 - log p-hat is negative
        assert r["neg_kl"] < 0, r
        assert r["iwae_k"] == 4 and r["log_p_k"] == 20 and r["n_test"] == 10
    for r in {r["run"]: r for r in on_disk}.values():  # each distinct run, against numbers computed by hand
        model = train_module.load(out / "runs" / r["run"])
        x = tiny_splits.test[:10]
        for key, k in (("iwae_bound", 4), ("log_p_hat", 20)):
            lk, spread = by_hand.mean_lk(model, x, k)
            assert abs(r[key] - lk) < max(0.5, 8 * spread), (r["run"], key, r[key], lk, spread)
        assert r["active_units"] == by_hand.active_units_one_layer(model, tiny_splits.train), r["run"]
        assert r["run"] == canonical_run(GridPoint(r["objective"], r["m"], r["k"], r["beta"])).name
    by_label = {r["label"]: r for r in on_disk}
    assert by_label["MIWAE(1,4)"]["log_p_hat"] == by_label["CIWAE(beta=0)"]["log_p_hat"]  # one run
    assert by_label["PIWAE(4,1)"]["run"] != by_label["MIWAE(4,1)"]["run"] == "vae-k4"
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r.name for r in plan(points))


def test_tiny_grid_is_a_reproduction_that_iwae_report_reads(tiny_grid):
    """The grid's folder is the engine's: reproduction.json lists each distinct run once, with the
    points it serves, each run has its result.json, and `iwae report` tables the runs and draws the grid."""
    out, rows = tiny_grid
    state = json.loads((out / STATE_FILE).read_text())
    assert state["protocol"]["name"] == PROTOCOL and state["figures"] == ["grid", "curves"]
    assert [r["name"] for r in state["runs"]] == [r.name for r in plan(grid_points(4, [0.0, 0.5]))]
    assert {r["name"]: [p["label"] for p in r["points"]] for r in state["runs"]}["iwae-k4"] == [
        "MIWAE(1,4)",
        "PIWAE(1,4)",
        "CIWAE(beta=0)",
    ]
    for r in state["runs"]:
        result = json.loads((out / "runs" / r["name"] / RESULT_FILE).read_text())
        assert result["status"] == "done" and result["metrics"]["neg_kl"] == pytest.approx(
            result["metrics"]["iwae4"] - result["metrics"]["log_p_hat"]
        )
        row = next(row for row in rows if row["run"] == r["name"])
        assert row["iwae_bound"] == result["metrics"]["iwae4"] and row["log_p_hat"] == -result["metrics"]["nll"]
    report = CliRunner().invoke(main, ["report", str(out), "--no-figures"])
    assert report.exit_code == 0, report.output
    text = (out / "report.md").read_text(encoding="utf-8")
    assert all(f"`{r['name']}`" in text for r in state["runs"])
    grid_part = text.split("### Grid points", 1)[1]  # the grid's own table: a line per point
    assert grid_part.count("| iwae-k4 |") == 3 and grid_part.count("| vae-k4 |") == 1  # MIWAE(4,1); no beta 1


def test_run_grid_hands_its_experiment_and_executors_to_the_engine(tmp_path, monkeypatch):
    """run_grid is a front-end: one reproduce() of the grid's experiment under protocol grid, with
    its executors (worker processes and Ray are the engine's, tested in test_reproduce.py)."""
    from iwae.experiments import engine

    calls = []

    def fake_reproduce(exp, out_dir, **kwargs):
        calls.append((exp, out_dir, kwargs))
        return engine.Summary(Path(out_dir))

    monkeypatch.setattr(engine, "reproduce", fake_reproduce)
    assert run_grid(tmp_path, total=2, betas=[], progress=False, workers=3, ray="auto", threads=2) == []
    ((exp, out_dir, kwargs),) = calls
    assert out_dir == tmp_path and kwargs["protocol"] == PROTOCOL
    assert (kwargs["workers"], kwargs["ray"], kwargs["threads"]) == (3, "auto", 2)
    assert [r.name for r in exp.resolve(PROTOCOL)] == ["iwae-k2", "vae-k2", "piwae-m2-k1"]
    assert not (tmp_path / "grid.csv").exists()  # nothing ran: no grid files


def test_tiny_grid_figure_and_table(tiny_grid):
    out, rows = tiny_grid
    assert _png_size(out / "grid.png") == (FIGURE_SIZE[0] * FIGURE_DPI, FIGURE_SIZE[1] * FIGURE_DPI)
    table = (out / "grid.md").read_text()
    assert sum(ln.startswith("| ") for ln in table.splitlines()) == len(rows) + 1  # header and one per point
    assert "IWAE-4" in table


def test_rerun_reuses_finished_runs(tiny_grid, tiny_splits, monkeypatch):
    out, rows = tiny_grid
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "train", refuse)
    again = run_grid(out, splits=tiny_splits, **TINY)
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")} == mtimes


def test_interrupted_runs_are_redone(tiny_grid, tiny_splits, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    shutil.copytree(tiny_grid[0], out)
    (out / "runs" / "miwae-m2-k2" / RESULT_FILE).unlink()  # killed after training, before evaluation
    killed_early = out / "runs" / "piwae-m2-k2"  # killed before its first checkpoint
    for name in ("checkpoint.safetensors", "metrics.csv", RESULT_FILE):
        (killed_early / name).unlink()
    calls = []
    real_train = train_module.train

    def counting(config, **kwargs):
        calls.append((Path(config.out).name, kwargs.get("resume", False), kwargs.get("overwrite", False)))
        return real_train(config, **kwargs)

    monkeypatch.setattr(train_module, "train", counting)
    rows = run_grid(out, splits=tiny_splits, **TINY)
    # miwae-m2-k2 had trained all its epochs: only evaluated again, not trained
    assert sorted(calls) == [("piwae-m2-k2", False, True)]
    assert (out / "runs" / "miwae-m2-k2" / RESULT_FILE).is_file()
    assert (killed_early / "checkpoint.safetensors").is_file()
    assert all(math.isfinite(r["neg_kl"]) for r in rows)


def test_more_epochs_resume_the_runs_from_their_checkpoints(tiny_grid, tiny_splits, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    shutil.copytree(tiny_grid[0], out)
    calls = []
    real_train = train_module.train

    def counting(config, **kwargs):
        calls.append(kwargs.get("resume", False))
        return real_train(config, **kwargs)

    monkeypatch.setattr(train_module, "train", counting)
    import iwae.members as members_module  # runs that share shapes resume as one batched model (iwae.members)

    real_members = members_module.train_members

    def counting_members(configs, **kwargs):
        calls.extend([kwargs.get("resume", False)] * len(configs))
        return real_members(configs, **kwargs)

    monkeypatch.setattr(members_module, "train_members", counting_members)
    rows = run_grid(out, splits=tiny_splits, **{**TINY, "epochs": 2})
    assert calls == [True] * len(plan(grid_points(4, [0.0, 0.5])))
    for run_dir in (out / "runs").iterdir():
        assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 1 + 2, run_dir.name
    assert {r["epochs"] for r in rows} == {2}


def test_a_different_protocol_in_the_same_folder_is_refused(tiny_grid, tiny_splits, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(tiny_grid[0], out)
    with pytest.raises(ValueError, match="other settings"):
        run_grid(out, splits=tiny_splits, **{**TINY, "train_subset": 20})


def test_table_and_figure_show_published_numbers_at_total_64(tmp_path):
    rows = []
    for i, p in enumerate(grid_points()):
        run = canonical_run(p)
        rows.append(
            {
                "objective": p.objective,
                "m": p.m,
                "k": p.k,
                "beta": p.beta,
                "total": 64,
                "label": p.label,
                "run": run.name,
                "iwae_bound": -110.0 - i * 0.1,
                "log_p_hat": -108.0,
                "neg_kl": -2.0 - i * 0.1,
                "active_units": 20,
                "seconds": 1.0,
                "iwae_k": 64,
                "log_p_k": 5000,
                "n_test": 500,
                "epochs": 4,
                "train_subset": 5000,
            }
        )
    table = grid_table(rows)
    line = {ln.split(" | ")[0].lstrip("| "): ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "-86.11" in line["MIWAE(1,64)"] and "-86.11" in line["CIWAE(beta=0)"]
    assert "-86.69" in line["MIWAE(64,1)"] and "-86.69" in line["CIWAE(beta=1)"]
    assert "-85.74" in line["PIWAE(8,8)"] and "-85.69" in line["MIWAE(8,8)"] and "-86.08" in line["CIWAE(beta=0.5)"]
    assert "-86.69" not in line["PIWAE(64,1)"] and "public reproduction" in table
    path = plot_grid(rows, tmp_path / "fig.png")
    assert _png_size(path) == (1500, 800)


# ----------------------------------------------------------------------------- command line
def test_cli_dry_run_lists_shared_runs(tmp_path):
    result = CliRunner().invoke(main, ["grid", "--out", str(tmp_path / "g"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "19 grid points, 16 distinct runs" in result.output
    line = next(ln for ln in result.output.splitlines() if ln.strip().startswith("iwae-k64"))
    assert "MIWAE(1,64), PIWAE(1,64), CIWAE(beta=0)" in line
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--total", "0"], "--total must be >= 1"),
        (["--betas", "0,1.5"], "beta must lie in [0, 1]"),
        (["--ms", "1,5"], "M = 5 does not divide total = 64"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["grid", "--out", str(tmp_path / "g"), "--dry-run", *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
