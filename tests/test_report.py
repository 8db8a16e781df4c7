"""Tests for ``iwae report`` (iwae.experiments.report): deltas and their flags, blank published cells, failed,
pending and blocked runs, a parent folder of several experiments, one-line errors, a
self-contained HTML page, figures from real tiny runs (and notes where they cannot be drawn),
and the page as headless Chromium renders it.

Experiment folders are written by hand in the layout of ``iwae reproduce`` (reproduction.json,
runs/<name>/result.json or error.json), with known numbers."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, invoke

from iwae.experiments import report
from iwae.grid import points_of
from iwae.train import TrainConfig, train

HARDWARE = {"host": "box", "cpu": "Intel Xeon Test", "threads": 1, "device": "cpu", "gpu": None, "torch": "2.13.0"}
BURDA = {
    "key": "burda2016",
    "table": "table1",
    "citation": "Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. "
    "Importance Weighted Autoencoders. ICLR 2016, arXiv:1509.00519.",
    "sign": "nll: -log p(x) in nats, positive; lower is better",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- building experiment folders
def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def make_experiment(
    out: Path,
    runs: list[dict],
    *,
    name: str = "table1",
    title: str = "Burda et al. (2016), Table 1",
    published: dict | None = BURDA,
    figures: list[str] = (),
) -> Path:
    """Writes ``out`` as `iwae reproduce` would. Each run: name, labels, published, status, config, eval,
    and ``metrics`` (written to result.json, with ``hardware``) or ``error`` (error.json)."""
    entries = []
    for r in runs:
        entry = {
            "name": r["name"],
            "config": r.get("config", {"objective": "iwae", "k": 5, "epochs": 13}),
            "eval": r.get("eval", {"k": 5000, "bound_ks": [64], "test_subset": 2000, "seed": 0}),
            "after": r.get("after"),
            "labels": r.get("labels", {}),
            "published": r.get("published"),
            "status": r.get("status", "done"),
        }
        for key in ("group", "points"):  # written by the engine for seeds and grids
            if key in r:
                entry[key] = r[key]
        entries.append(entry)
        if "metrics" in r:
            spec = {k: v for k, v in entry.items() if k != "status"}
            write_json(
                out / "runs" / r["name"] / "result.json",
                {
                    "name": r["name"],
                    "status": "done",
                    "metrics": r["metrics"],
                    "active_units": r.get("active_units"),
                    "n_test": 2000,
                    "eval_k": 5000,
                    "epochs": 13,
                    "train_seconds": 512.3,
                    "eval_seconds": 60.1,
                    "hardware": r.get("hardware", HARDWARE),
                    "spec": spec,
                },
            )
        if "error" in r:
            write_json(
                out / "runs" / r["name"] / "error.json",
                {"name": r["name"], "status": "failed", "error": r["error"], "traceback": "Traceback ..."},
            )
    write_json(
        out / "reproduction.json",
        {
            "experiment": name,
            "title": title,
            "description": "What the table measures.\nSecond line of it.",
            "protocol": {
                "name": "short",
                "description": "first 13 epochs of the paper schedule.",
                "settings": {"epochs": 13, "train_subset": None, "test_subset": 2000, "eval_k": 5000},
            },
            "published": published,
            "figures": list(figures),
            "runs": entries,
            "started": "2026-11-22T10:00:00",
            "finished": "2026-11-22T10:40:00",
            "wall_seconds": 2400.0,
            "executor": "local: 2 workers x 1 thread",
        },
    )
    return out


def table1_runs() -> list[dict]:
    """Known numbers: delta +0.31 (flagged), -0.29 (not), no published value, failed, pending, blocked."""

    def labels(layers, objective, k):
        return {"dataset": "mnist", "layers": layers, "objective": objective, "k": k}

    return [
        {
            "name": "mnist-l1-iwae-k5",
            "labels": labels(1, "iwae", 5),
            "published": {"nll": 85.54, "active_units": [22]},
            "metrics": {"nll": 85.85, "nll_stderr": 0.25, "log_p_hat": -85.85},
            "active_units": [38],
        },
        {
            "name": "mnist-l1-iwae-k50",
            "labels": labels(1, "iwae", 50),
            "published": {"nll": 84.78},
            "metrics": {"nll": 84.49, "nll_stderr": 0.24, "log_p_hat": -84.49},
            "active_units": [44],
        },
        {
            "name": "mnist-l1-vae-k7",
            "labels": labels(1, "vae", 7),
            "published": None,
            "metrics": {"nll": 90.0, "nll_stderr": 0.3, "log_p_hat": -90.0},
            "active_units": [20],
        },
        {
            "name": "mnist-l2-iwae-k5",
            "labels": labels(2, "iwae", 5),
            "published": {"nll": 83.89},
            "status": "failed",
            "error": "FloatingPointError: the training bound became nan in epoch 3 | <lr too high>",
        },
        {
            "name": "mnist-l2-iwae-k50",
            "labels": labels(2, "iwae", 50),
            "published": {"nll": 82.90},
            "status": "pending",
        },
        {
            "name": "mnist-l2-vae-k50",
            "labels": labels(2, "vae", 50),
            "published": {"nll": 84.78},
            "status": "blocked",
            "after": "mnist-l2-iwae-k5",
        },
    ]


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables of ``text`` as lists of {header: cell}, cells split at unescaped pipes."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif block:
            header, rows = block[0], block[2:]
            tables.append([dict(zip(header, row)) for row in rows])
            block = []
    return tables


def by_run(table: list[dict]) -> dict[str, dict]:
    return {row["run"].strip("`"): row for row in table}


# ----------------------------------------------------------------------------- the table
def test_compare_flags_above_threshold_only():
    assert report.compare(85.85, 85.54)[1] and report.compare(85.85, 85.54)[0] == pytest.approx(0.31)
    assert not report.compare(84.49, 84.78)[1]
    assert not report.compare(85.84, 85.54)[1]  # exactly 0.3 in decimal, 0.30000000000001 in floating point
    assert report.compare(-84.0, -84.31)[1]  # log-likelihoods: the same rule on |delta|
    assert report.compare(None, 85.54) == (None, False) and report.compare(85.0, None) == (None, False)


def test_table_deltas_flags_blanks_and_failures(tmp_path):
    out = make_experiment(tmp_path / "table1", table1_runs())
    result = invoke("report", out, "--no-figures")
    assert result.exit_code == 0, (result.output, result.exception)
    assert str(out / "report.md") in result.output and str(out / "report.html") in result.output
    text = (out / "report.md").read_text(encoding="utf-8")
    (table,) = markdown_tables(text)
    rows = by_run(table)
    assert list(rows) == [r["name"] for r in table1_runs()]  # every run, in order
    assert list(table[0])[:5] == ["run", "dataset", "layers", "objective", "k"]  # label columns, in order

    flagged, close, unpublished = rows["mnist-l1-iwae-k5"], rows["mnist-l1-iwae-k50"], rows["mnist-l1-vae-k7"]
    assert flagged["NLL (± s.e. over images)"] == "85.85 ± 0.25" and flagged["NLL published"] == "85.54"
    assert flagged["delta NLL"] == "+0.31 ⚠"
    assert close["delta NLL"] == "-0.29"  # |delta| < 0.3: no flag
    assert unpublished["NLL (± s.e. over images)"] == "90.00 ± 0.30"
    assert unpublished["NLL published"] == "" and unpublished["delta NLL"] == ""
    assert flagged["active units"] == "38 / 22"
    assert close["active units"] == "44"  # none published
    assert flagged["epochs"] == "13" and flagged["train"] == "8m32s" and flagged["eval"] == "1m00s"
    assert "log p-hat" not in table[0]  # the same number as NLL, negated: shown once

    failed = rows["mnist-l2-iwae-k5"]
    assert failed["status"].startswith("failed: FloatingPointError: the training bound became nan")
    assert failed["NLL (± s.e. over images)"] == "" and failed["NLL published"] == "83.89" and failed["delta NLL"] == ""
    assert rows["mnist-l2-iwae-k50"]["status"] == "pending"
    assert rows["mnist-l2-vae-k50"]["status"] == "blocked: `mnist-l2-iwae-k5` did not finish"

    # one machine: said once under the table, no column
    assert "hardware" not in table[0]
    assert "Hardware (all finished runs): box: Intel Xeon Test, 1 thread, torch 2.13.0." in text
    assert "negative delta means ours is better" in text and "⚠ marks |delta| > 0.3 nats" in text
    assert "NLL = -mean L_5000 over the test images, ± its standard error over images." in text
    assert "6 runs: 3 done, 1 failed, 1 pending, 1 blocked." in text
    # the header: protocol, executor, times, published source
    for phrase in (
        "## Burda et al. (2016), Table 1",
        "Second line of it.",
        "**Protocol** `short`",
        "epochs 13; train subset all; test subset 2000; eval k 5000",
        "local: 2 workers x 1 thread",
        "**total wall time** 40m00s",
        "arXiv:1509.00519",
        "lower is better",
        "Experiment `table1`",
    ):
        assert phrase in text, phrase
    # the failure's full message, escaped so that it breaks neither the table nor the HTML
    assert (
        "- `mnist-l2-iwae-k5`: FloatingPointError: the training bound became nan in epoch 3 \\| &lt;lr too high>"
        in text
    )


def test_log_likelihood_table_and_hardware_column(tmp_path):
    """Rainforth et al.'s signs: log p-hat instead of NLL, positive delta = better; two machines: a column."""
    other = {**HARDWARE, "host": "gpu-box", "gpu": "NVIDIA H100", "threads": None}
    runs = [
        {
            "name": "iwae-k64",
            "labels": {"objective": "iwae", "k": 64},
            "published": {"iwae64": -86.11, "log_p_hat": -84.52, "neg_kl": -1.59},
            "metrics": {"nll": 84.0, "nll_stderr": 0.5, "log_p_hat": -84.0, "iwae64": -86.5, "neg_kl": -2.5},
            "active_units": [50],
        },
        {
            "name": "vae-k64",
            "labels": {"objective": "vae", "k": 64},
            "hardware": other,
            "published": {"iwae64": -86.69, "log_p_hat": -86.21, "neg_kl": -0.47},
            "metrics": {"nll": 86.0, "nll_stderr": 0.5, "log_p_hat": -86.0, "iwae64": -86.5, "neg_kl": -0.5},
        },
    ]
    out = make_experiment(tmp_path / "rainforth", runs, name="rainforth", published=None)
    report.write_report(out, figures=False)
    text = (out / "report.md").read_text(encoding="utf-8")
    (table,) = markdown_tables(text)
    rows = by_run(table)
    assert "NLL" not in table[0]
    assert (
        rows["iwae-k64"]["log p-hat (± s.e. over images)"] == "-84.00 ± 0.50"
        and rows["iwae-k64"]["delta log p-hat"] == "+0.52 ⚠"
    )
    assert rows["iwae-k64"]["delta IWAE-64"] == "-0.39 ⚠" and rows["vae-k64"]["delta IWAE-64"] == "+0.19"
    assert rows["vae-k64"]["delta -KL(Q\\|\\|P)"] == "-0.03"
    assert rows["vae-k64"]["hardware"] == "gpu-box: NVIDIA H100, torch 2.13.0"
    assert rows["iwae-k64"]["hardware"] == "box: Intel Xeon Test, 1 thread, torch 2.13.0"
    assert "positive delta means ours is better" in text and "negative delta" not in text
    assert (
        "log p-hat = mean L_5000, ± its standard error over images; IWAE-64 = mean L_64; "
        "-KL(Q||P) = IWAE-64 - log p-hat." in text
    )
    assert "no published table for this experiment" in text


def test_parent_folder_reports_each_experiment(tmp_path):
    make_experiment(tmp_path / "b-second", table1_runs()[:1], name="second", title="Second experiment")
    make_experiment(tmp_path / "a-first", table1_runs()[1:2], name="first", title="First experiment")
    (tmp_path / "not-an-experiment").mkdir()
    md, html = report.write_report(tmp_path, figures=False)
    assert (md, html) == (tmp_path / "report.md", tmp_path / "report.html")
    text = md.read_text(encoding="utf-8")
    assert text.index("## First experiment") < text.index("## Second experiment")  # folders in name order
    assert "2 experiments (`first`, `second`)" in text
    tables = markdown_tables(text)
    assert [list(by_run(t)) for t in tables] == [["mnist-l1-iwae-k50"], ["mnist-l1-iwae-k5"]]
    assert "mnist-l1-iwae-k50" in html.read_text(encoding="utf-8")


def test_errors_are_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert_one_line_error(invoke("report", tmp_path / "empty"), "holds no reproduction.json")
    assert not (tmp_path / "empty" / "report.md").exists()
    assert_one_line_error(invoke("report", tmp_path / "missing"), "is not a folder")
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "reproduction.json").write_text('{"experiment": "x", "runs": [')
    assert_one_line_error(invoke("report", bad), "is not readable JSON")
    (bad / "reproduction.json").write_text('{"experiment": "x"}')
    assert_one_line_error(invoke("report", bad), "has no list of runs")
    assert_one_line_error(invoke("report", bad, "--threads", "-1"), "--threads must be >= 1")


@pytest.mark.parametrize(
    "path, value, phrase",
    [
        (["runs"], ["a"], "runs[0] must hold a JSON object, found a string"),
        (["protocol"], "short", "'protocol' must be an object, found a string"),
        (["protocol", "settings"], [1], "protocol: 'settings' must be an object, found an array"),
        (["published"], "x", "'published' must be an object, found a string"),
        (["figures"], "grid", "'figures' must be an array"),
        (["wall_seconds"], "long", "'wall_seconds' must be a number"),
        (["runs", 0, "labels"], "x", "runs[0]: 'labels' must be an object"),
        (["runs", 0, "published"], "x", "runs[0]: 'published' must be an object"),
        (["runs", 0, "published", "nll"], "x", "runs[0]: published: 'nll' must be a number, found a string"),
        (["runs", 0, "eval", "bound_ks"], 64, "'bound_ks' must be an array"),
        (["runs", 0, "name"], None, "runs[0] has no name"),
    ],
)
def test_malformed_reproduction_is_a_one_line_error(tmp_path, path, value, phrase):
    out = make_experiment(tmp_path / "t", table1_runs()[:2])
    spec = json.loads((out / "reproduction.json").read_text())
    *parents, last = path
    target = spec
    for key in parents:
        target = target[key]
    target[last] = value
    (out / "reproduction.json").write_text(json.dumps(spec))
    assert_one_line_error(invoke("report", out, "--no-figures"), phrase)


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"metrics": 5}, "'metrics' must be an object, found a number"),
        ({"metrics": {"nll": "x"}}, "metrics: 'nll' must be a number, found a string"),
        ({"hardware": "box"}, "'hardware' must be an object"),
        ({"train_seconds": "long"}, "'train_seconds' must be a number"),
        ({"spec": ["x"]}, "'spec' must be an object"),
    ],
)
def test_malformed_result_makes_its_run_unreadable(tmp_path, change, phrase):
    out = make_experiment(tmp_path / "t", table1_runs()[:2])
    path = out / "runs" / "mnist-l1-iwae-k50" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    text = report.markdown_report(out, figures=False)
    rows = by_run(markdown_tables(text)[0])
    assert rows["mnist-l1-iwae-k5"]["delta NLL"] == "+0.31 ⚠"  # the other run is intact
    assert rows["mnist-l1-iwae-k50"]["status"].startswith("unreadable: runs/mnist-l1-iwae-k50/result.json: ")
    assert rows["mnist-l1-iwae-k50"]["NLL (± s.e. over images)"] == ""
    assert f"- `mnist-l1-iwae-k50`: runs/mnist-l1-iwae-k50/result.json: {phrase}" in text  # in full below the table


def test_stale_result_is_not_a_finished_run(tmp_path):
    """Rerun with another --eval-k and stopped before the run ended: its result.json is of the old settings."""
    out = make_experiment(tmp_path / "t", table1_runs()[:2])
    spec = json.loads((out / "reproduction.json").read_text())
    spec["runs"][0]["eval"]["k"], spec["runs"][0]["status"] = 30, "pending"
    (out / "reproduction.json").write_text(json.dumps(spec))
    text = report.markdown_report(out, figures=False)
    rows = by_run(markdown_tables(text)[0])
    stale = rows["mnist-l1-iwae-k5"]
    assert stale["status"] == "stale: result of other settings (eval), rerun `iwae reproduce`"
    assert (stale["NLL (± s.e. over images)"], stale["delta NLL"], stale["epochs"], stale["train"]) == ("", "", "", "")
    assert stale["active units"] == "- / 22" and stale["NLL published"] == "85.54"
    assert rows["mnist-l1-iwae-k50"]["status"] == "done" and rows["mnist-l1-iwae-k50"]["delta NLL"] == "-0.29"
    assert "2 runs: 1 stale, 1 done." in text and "Failed runs" not in text


def test_labels_that_do_not_apply_are_blank(tmp_path):
    runs = [
        {
            "name": "iwae-k5",
            "labels": {"objective": "iwae", "m": None, "beta": None},
            "published": None,
            "metrics": {"nll": 90.0, "nll_stderr": 0.3},
        },
        {
            "name": "ciwae",
            "labels": {"objective": "ciwae", "m": None, "beta": 0.5},
            "published": None,
            "metrics": {"nll": 91.0, "nll_stderr": 0.3},
        },
    ]
    rows = by_run(markdown_tables(report.markdown_report(make_experiment(tmp_path / "t", runs), figures=False))[0])
    assert (rows["iwae-k5"]["m"], rows["iwae-k5"]["beta"], rows["ciwae"]["beta"]) == ("", "", "0.5")


def test_values_carry_the_decimals_their_error_needs(tmp_path):
    """bits/dim's s.e. is ~0.001: printed with two decimals it would read 1.30 ± 0.00. Each value gets
    as many decimals as its error's two significant digits need; the header says what the ± is."""
    from iwae.tables import error_digits, with_error

    assert [error_digits(e) for e in (0.56, 0.056, 0.0012, 3.1, None, float("nan"), 0.0)] == [2, 3, 4, 2, 2, 2, 2]
    assert with_error(1.30123, 0.00123) == "1.3012 ± 0.0012" and with_error(92.681, 0.561) == "92.68 ± 0.56"
    assert with_error(1.30123, None, least=3) == "1.301"
    runs = [
        {
            "name": "grey",
            "published": None,
            "metrics": {"nll": 2650.123, "nll_stderr": 2.21, "bits_per_dim": 4.87654, "bits_per_dim_stderr": 0.00406},
        }
    ]
    (table,) = markdown_tables(report.markdown_report(make_experiment(tmp_path / "t", runs), figures=False))
    row = by_run(table)["grey"]
    assert row["bits/dim (± s.e. over images)"] == "4.8765 ± 0.0041"
    assert row["NLL (± s.e. over images)"] == "2650.12 ± 2.21"  # at least two decimals


def test_bounds_follow_eval_bound_ks(tmp_path):
    """bound_ks [16]: IWAE-16 and a -KL(Q||P) of IWAE-16; [16, 64]: a -KL per bound (neg_kl16, neg_kl64)."""
    evaluation = {"k": 5000, "test_subset": 2000, "seed": 0}
    runs = [
        {
            "name": "one",
            "eval": {**evaluation, "bound_ks": [16]},
            "published": {"iwae16": -90.5},
            "metrics": {
                "nll": 90.0,
                "nll_stderr": 0.3,
                "log_p_hat": -90.0,
                "iwae16": -91.0,
                "iwae16_stderr": 0.4,
                "neg_kl": -1.0,
            },
        },
        {
            "name": "two",
            "eval": {**evaluation, "bound_ks": [16, 64]},
            "metrics": {
                "nll": 90.0,
                "nll_stderr": 0.3,
                "log_p_hat": -90.0,
                "iwae16": -91.0,
                "iwae64": -90.5,
                "neg_kl16": -1.0,
                "neg_kl64": -0.5,
            },
        },
    ]
    text = report.markdown_report(make_experiment(tmp_path / "t", runs, published=None), figures=False)
    (table,) = markdown_tables(text)
    assert list(table[0])[1:9] == [
        "NLL (± s.e. over images)",
        "IWAE-16 (± s.e. over images)",
        "IWAE-16 published",
        "delta IWAE-16",
        "IWAE-64",
        "-KL(Q\\|\\|P)",
        "-KL(Q\\|\\|P) at 16",
        "-KL(Q\\|\\|P) at 64",
    ]
    rows = by_run(table)
    assert rows["one"]["IWAE-16 (± s.e. over images)"] == "-91.00 ± 0.40" and rows["one"]["delta IWAE-16"] == "-0.50 ⚠"
    assert rows["one"]["-KL(Q\\|\\|P)"] == "-1.00" and rows["two"]["-KL(Q\\|\\|P) at 64"] == "-0.50"
    assert (
        "IWAE-16 = mean L_16; IWAE-64 = mean L_64; -KL(Q||P) = IWAE-16 - log p-hat; "
        "-KL(Q||P) at 16 = IWAE-16 - log p-hat; -KL(Q||P) at 64 = IWAE-64 - log p-hat." in text
    )
    assert "IWAE-64 - log p-hat;" not in text


def test_figure_kinds_are_the_experiment_module_s():
    from iwae.experiments import spec as experiment

    assert report.figures.FIGURES is experiment.FIGURES and list(report.DRAW) == list(experiment.FIGURES)


def test_unreadable_result_is_reported_not_fatal(tmp_path):
    out = make_experiment(tmp_path / "t", table1_runs()[:2])
    (out / "runs" / "mnist-l1-iwae-k50" / "result.json").write_text("{not json")
    report.write_report(out, figures=False)
    rows = by_run(markdown_tables((out / "report.md").read_text(encoding="utf-8"))[0])
    assert rows["mnist-l1-iwae-k5"]["delta NLL"] == "+0.31 ⚠"
    assert rows["mnist-l1-iwae-k50"]["status"].startswith("unreadable: ")


# ----------------------------------------------------------------------------- figures and the HTML page
GRID_RUNS = [  # (name, objective, k, m, beta, iwae64, log_p_hat): Rainforth et al.'s grid from its runs
    ("iwae-k64", "iwae", 64, 1, None, -90.0, -88.0),
    ("vae-k64", "vae", 64, 1, None, -91.0, -90.5),
    ("miwae-m8-k8", "miwae", 64, 8, None, -89.5, -88.6),
    ("piwae-m8-k8", "piwae", 64, 8, None, -89.8, -88.2),
    ("ciwae-beta0.5-k64", "ciwae", 64, 1, 0.5, -90.2, -89.4),
]


GRID = {"total": 64, "betas": [0.0, 0.25, 0.5, 1.0]}  # the experiment's grid section


def grid_experiment(out: Path) -> Path:
    """Each run's points as the engine records them (iwae.grid.points_of, what Experiment.resolve calls)."""
    runs = [
        {
            "name": n,
            "labels": {"objective": o, "m": m, "k": k // m},
            "config": {
                "objective": o,
                "k": k,
                "m": m,
                "beta": 0.5 if b is None else b,
                "epochs": 4,
                "train_subset": 5000,
            },
            "metrics": {"nll": -lp, "nll_stderr": 0.6, "log_p_hat": lp, "iwae64": b64, "neg_kl": b64 - lp},
        }
        for n, o, k, m, b, b64, lp in GRID_RUNS
    ]
    runs.append(
        {
            "name": "ciwae-beta0.25-k64",
            "labels": {"objective": "ciwae"},
            "status": "failed",
            "config": {"objective": "ciwae", "k": 64, "beta": 0.25},
            "error": "killed",
        }
    )
    for r in runs:
        r["points"] = points_of(r["config"], GRID)
    return make_experiment(out, runs, name="rainforth", published=None, figures=["grid", "samples", "unknown"])


class _Tables(HTMLParser):
    """Collects the cells of every <table>, and the src of every <img>."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(html_text: str) -> _Tables:
    parser = _Tables()
    parser.feed(html_text)
    return parser


def test_grid_figure_and_self_contained_html(tmp_path):
    out = grid_experiment(tmp_path / "grid")
    result = invoke("report", out)
    assert result.exit_code == 0, (result.output, result.exception)
    text = (out / "report.md").read_text(encoding="utf-8")
    figure = out / "report_figures" / "grid" / "grid.png"  # the experiment's folder, not its name
    assert "![grid](report_figures/grid/grid.png)" in text  # relative to report.md
    assert mpimg.imread(figure).shape[:2] == (800, 1500)
    assert "8 grid points with a finished run" in text  # 5 runs serve 8 points of the grid
    # no model files: the samples figure is a note, as is an unknown kind
    assert "*Figure `samples` not drawn: no finished run with a model.safetensors.*" in text
    assert "*Figure `unknown` not drawn: unknown kind" in text

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "<script" not in page
    parsed = parse(page)
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    png = base64.b64decode(parsed.images[0].split(",", 1)[1])
    assert png == figure.read_bytes() and png.startswith(PNG_MAGIC)
    table, grid = parsed.tables  # the runs, then the grid's points
    cells = {c for row in table for c in row}
    assert {"iwae-k64", "88.00 ± 0.60", "failed: killed"} <= cells  # nothing published: NLL
    assert len(grid) == 1 + 8 and [row[:2] for row in grid[1:]][0] == ["MIWAE(1,64)", "iwae-k64"]


def test_figures_of_two_folders_of_one_experiment_are_apart(tmp_path):
    """runs/table2-short and runs/table2 paper both hold `rainforth`: each gets its own figure folder."""
    short, paper = grid_experiment(tmp_path / "table2-short"), grid_experiment(tmp_path / "table2 paper")
    md, html_path = report.write_report(tmp_path)
    text = md.read_text(encoding="utf-8")
    assert "![grid](report_figures/table2-short/grid.png)" in text
    assert "![grid](report_figures/table2%20paper/grid.png)" in text  # a link may hold no space
    assert (tmp_path / "report_figures" / "table2 paper" / "grid.png").is_file() and short.is_dir() and paper.is_dir()
    images = parse(html_path.read_text(encoding="utf-8")).images
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)


def test_grid_rows_follow_canonical_runs(tmp_path):
    exp = report.read_reproduction(grid_experiment(tmp_path / "grid"))
    rows = report.grid_rows(exp)
    labels = {r["label"]: r for r in rows}
    # IWAE(k=64) serves MIWAE(1,64), PIWAE(1,64) and CIWAE(0); the VAE serves MIWAE(64,1) and CIWAE(1)
    assert {
        "MIWAE(1,64)",
        "PIWAE(1,64)",
        "CIWAE(beta=0)",
        "MIWAE(64,1)",
        "CIWAE(beta=1)",
        "MIWAE(8,8)",
        "PIWAE(8,8)",
        "CIWAE(beta=0.5)",
    } == set(labels)
    assert labels["CIWAE(beta=0)"]["run"] == "iwae-k64" and labels["CIWAE(beta=0)"]["log_p_hat"] == -88.0
    assert labels["PIWAE(8,8)"]["iwae_bound"] == -89.8 and labels["MIWAE(64,1)"]["run"] == "vae-k64"
    assert labels["MIWAE(8,8)"]["neg_kl"] == pytest.approx(-0.9)
    assert all(r["iwae_k"] == 64 and r["log_p_k"] == 5000 and r["n_test"] == 2000 for r in rows)
    assert [r["label"] for r in rows][:3] == ["MIWAE(1,64)", "MIWAE(8,8)", "MIWAE(64,1)"]  # grid order


def test_grid_rows_come_from_the_points_the_engine_recorded(tmp_path):
    """A run without recorded points (an experiment without a grid) is no grid point, whatever its settings."""
    out = grid_experiment(tmp_path / "grid")
    state = json.loads((out / "reproduction.json").read_text())
    for entry in state["runs"]:
        if entry["name"] != "iwae-k64":
            entry.pop("points")
    write_json(out / "reproduction.json", state)
    rows = report.grid_rows(report.read_reproduction(out))
    assert [(r["label"], r["run"]) for r in rows] == [
        ("MIWAE(1,64)", "iwae-k64"),
        ("PIWAE(1,64)", "iwae-k64"),
        ("CIWAE(beta=0)", "iwae-k64"),
    ]
    for entry in state["runs"]:
        entry.pop("points", None)
    write_json(out / "reproduction.json", state)
    with pytest.raises(ValueError, match="serves a grid point"):
        report.grid_rows(report.read_reproduction(out))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir, mnist_splits) -> Path:
    """An experiment folder with two real (tiny, one-epoch) runs and made-up evaluation numbers."""
    out = tmp_path_factory.mktemp("report") / "estimators"
    runs = []
    for name, objective, k in (("iwae-k4", "iwae", 4), ("vae-k4", "vae", 4)):
        config = TrainConfig(
            objective=objective,
            k=k,
            epochs=1,
            train_subset=200,
            latent_dims=[4],
            hidden_dims=[[30]],
            schedule="constant",
            valid_k=2,
            data_dir=str(shared_data_dir),
            out=str(out / "runs" / name),
        )
        train(config, splits=mnist_splits, progress=False)
        runs.append(
            {
                "name": name,
                "labels": {"objective": objective, "k": k},
                "config": config.to_dict(),
                "metrics": {"nll": 150.0, "nll_stderr": 1.0},
                "active_units": [4],
            }
        )
    runs.append({"name": "iwae-k8", "labels": {"objective": "iwae", "k": 8}, "status": "pending"})
    return make_experiment(
        out, runs, name="estimators", published=None, figures=["curves", "samples", "latent", "snr", "grid"]
    )


def test_figures_of_real_runs(trained):
    md, html_path = report.write_report(trained)
    text = md.read_text(encoding="utf-8")
    for kind in ("curves", "samples", "latent", "snr"):
        figure = trained / "report_figures" / "estimators" / f"{kind}.png"
        assert f"![{kind}](report_figures/estimators/{kind}.png)" in text, kind
        image = mpimg.imread(figure)
        assert image[..., :3].std() > 0, f"{figure} is blank"
    assert "R = 30 gradient estimates per point" in text and "first 20 training images" in text
    assert "*Figure `grid` not drawn: no finished run has an IWAE-k bound" in text
    assert [f"**Figure {i}.**" in text for i in (1, 2, 3, 4, 5)] == [True] * 4 + [False]
    assert len(parse(html_path.read_text(encoding="utf-8")).images) == 4


def test_figures_say_which_runs_they_leave_out_and_why(trained, tmp_path):
    """A run of the same labels but a smaller k, and one beyond the latent figure's cap, are named in
    the caption with the reason (the figure used to show 3 of 6 runs and say '3 runs')."""
    from iwae.experiments.report import figures as report_figures

    spec = json.loads((trained / "reproduction.json").read_text())
    runs = []
    for entry in spec["runs"]:
        if entry["status"] != "done":
            continue
        result = json.loads((trained / "runs" / entry["name"] / "result.json").read_text())
        runs.append({**entry, "metrics": result["metrics"], "active_units": result["active_units"]})
    small = {**runs[0], "name": "iwae-k2", "labels": {"objective": "iwae", "k": 2}}
    small["config"] = {**small["config"], "k": 2}
    out = make_experiment(tmp_path / "more", runs + [small], name="estimators", published=None, figures=["latent"])
    for name in ("iwae-k4", "vae-k4"):
        shutil.copytree(trained / "runs" / name, out / "runs" / name, dirs_exist_ok=True)
    shutil.copytree(trained / "runs" / "iwae-k4", out / "runs" / "iwae-k2", dirs_exist_ok=True)
    (out / "runs" / "iwae-k2" / "result.json").unlink()
    make_experiment(out, runs + [small], name="estimators", published=None, figures=["latent"])  # its result.json
    text = report.markdown_report(out)
    caption = next(line for line in text.splitlines() if line.startswith("**Figure 1.**"))
    assert "2 runs." in caption
    assert "Left out: `iwae-k2` (one run is drawn per combination of labels apart from k" in caption
    # with a cap of one run, the other is left out for the cap
    original = report_figures.LATENT_RUNS
    try:
        report_figures.LATENT_RUNS = 1
        caption = next(line for line in report.markdown_report(out).splitlines() if line.startswith("**Figure 1.**"))
    finally:
        report_figures.LATENT_RUNS = original
    assert "`vae-k4` (the figure holds at most 1 run)" in caption


def test_figures_without_data_become_notes(trained, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    spec = json.loads((out / "reproduction.json").read_text())
    for run in spec["runs"]:
        run["config"]["dataset"] = f"npz:{tmp_path / 'missing.npz'}"  # the data is gone
        if (out / "runs" / run["name"] / "result.json").is_file():  # and the results say so: not stale
            result = json.loads((out / "runs" / run["name"] / "result.json").read_text())
            result["spec"]["config"] = run["config"]
            (out / "runs" / run["name"] / "result.json").write_text(json.dumps(result))
    (out / "reproduction.json").write_text(json.dumps(spec))
    text = report.markdown_report(out)
    assert "![samples]" in text and "![curves]" in text  # need no data
    for kind in ("latent", "snr"):
        assert f"*Figure `{kind}` not drawn: " in text and "missing.npz" in text, kind


def test_report_of_a_real_reproduction(tmp_path, shared_data_dir):
    """The folder `iwae reproduce` writes (one tiny run of the estimators experiment) reads as expected."""
    from iwae.experiments.engine import reproduce

    out = tmp_path / "estimators"
    summary = reproduce(
        "estimators",
        out,
        protocol="short",
        only=["iwae-k5-reparam"],
        overrides={"epochs": 1, "train_subset": 100, "test_subset": 20, "eval_k": 10},
        data_dir=str(shared_data_dir),
        threads=1,
        progress=False,
    )
    assert summary.status == {"iwae-k5-reparam": "done"}
    report.write_report(out, figures=False)
    text = (out / "report.md").read_text(encoding="utf-8")
    row = by_run(markdown_tables(text)[0])["iwae-k5-reparam"]
    metrics = json.loads((out / "runs" / "iwae-k5-reparam" / "result.json").read_text())["metrics"]
    assert row["NLL (± s.e. over images)"] == f"{metrics['nll']:.2f} ± {metrics['nll_stderr']:.2f}"
    assert (row["k"], row["estimator"], row["epochs"], row["status"]) == ("5", "reparam", "1", "done")
    assert "NLL = -mean L_10 over the test images" in text
    # the protocol's description, then what the command line overrode, said as such
    protocol = next(line for line in text.splitlines() if line.startswith("- **Protocol**"))
    overridden = protocol.split("**Overridden** on the command line: ")[1]
    assert overridden.startswith("epochs 1;") and "train subset 100" in overridden and "eval k 10" in overridden
    before = protocol.split("**Overridden**")[0]  # the description, and the settings nobody overrode
    assert "The first 4 epochs" in before and "epochs 1" not in before and "train subset" not in before
    assert "*Figures (curves, snr) not drawn: --no-figures.*" in text
    # reproduce passes the data folder per invocation: the figures find it in the run's config.yaml
    (run,) = report.read_reproduction(out)["runs"]
    assert report.figures._splits(run, None, {}).name == "mnist"


# ----------------------------------------------------------------------------- a real browser
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    message = f"no headless browser found (looked for {', '.join(BROWSERS)}); install chromium"
    if os.environ.get("IWAE_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (IWAE_REQUIRE_BROWSER=1)")
    pytest.skip(message)


def headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_html_renders_in_headless_chromium(tmp_path):
    binary = browser()
    out = make_experiment(tmp_path / "table1", table1_runs())
    grid = grid_experiment(tmp_path / "grid")
    report.write_report(tmp_path, figures=True)  # both experiments, with the grid figure
    page = (tmp_path / "report.html").as_uri()

    dumped = headless(binary, tmp_path / "profile", "--dump-dom", page)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parsed = parse(dumped.stdout)
    assert len(parsed.tables) == 3, dumped.stdout[:2000]  # table1, the grid's runs, its points
    cells = {c for table in parsed.tables for row in table for c in row}
    assert {r["name"] for r in table1_runs()} <= cells and {name for name, *_ in GRID_RUNS} <= cells
    assert {"85.54", "84.78", "83.89", "+0.31 ⚠", "-0.29"} <= cells  # published numbers and deltas
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert out.is_dir() and grid.is_dir()

    shot = tmp_path / "page.png"
    taken = headless(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,1600", page)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    image = mpimg.imread(shot)[..., :3]
    assert image.shape[:2] == (1600, 1280)
    colours = np.unique((image.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 20 and image.std() > 0.02, "the screenshot is (nearly) one colour"


def test_the_footer_counts_one_run_in_the_singular(tmp_path):
    out = make_experiment(tmp_path / "t", table1_runs()[:1])
    text = report.markdown_report(out, figures=False)
    assert "*1 run: 1 done.*" in text and "1 runs" not in text
