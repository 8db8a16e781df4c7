"""Tests for the speed tools: benchmarks/projection.py's arithmetic, and benchmarks/gpu_check.sh's
CPU mode (the same steps as on a GPU, tiny sizes), which is all of the GPU check a machine without
CUDA can run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"iwae_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_paper_protocol_is_9_774_400_steps_and_table1_mnist_is_10_runs():
    projection = _load("projection")
    assert projection.steps_per_run() == 3280 * 2980 == 9_774_400  # ceil(59,600 / 20) = 2,980
    assert sum(3**i for i in range(8)) == projection.EPOCHS
    runs = projection.TABLE1_MNIST
    assert len(runs) == 10 and runs.count((1, 1)) == 1 and runs.count((2, 50)) == 2  # k = 1 trained once


def test_projection_hours_follow_from_the_rates(tmp_path):
    projection = _load("projection")
    rates = {f"train:fp32:20:{k}" + (":2" if layers == 2 else ""): 1000.0 / k for layers in (1, 2) for k in (1, 5, 50)}
    rates["eval:iwae"] = 10.0
    # one run at k = 1: 9,774,400 steps at 1000 steps/s, then 10,000 images at 10 images/s
    assert projection.run_hours(1000.0, 10.0) == pytest.approx((9774.4 + 1000) / 3600)
    text = projection.table(rates)
    hours = sum((9_774_400 * k / 1000 + 1000) / 3600 for _, k in projection.TABLE1_MNIST)
    assert f"{hours:.0f} h" in text.splitlines()[-1]
    del rates["train:fp32:20:50:2"]
    assert projection.table(rates).splitlines()[-1].endswith("not measured |")  # no guessing a missing cell


def test_bench_variants_rows_name_their_implementation(tmp_path):
    """Two implementations, one process each, and the JSON the projection reads."""
    out = tmp_path / "rates.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--variants",
            "--rounds",
            "1",
            "--batches",
            "4",
            "--ks",
            "2",
            "--only",
            "fp32,bf16-mixed",
            "--seconds",
            "0.05",
            "--no-eval",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| train step")]
    assert [row.split("|")[5].strip() for row in rows] == ["fp32", "bf16-mixed"]
    rates = json.loads(out.read_text())
    assert set(rates) == {"train:fp32:4:2", "train:bf16-mixed:4:2"} and all(v > 0 for v in rates.values())


def test_the_gemm_floor_records_every_product_of_a_step_and_no_other():
    """Burda et al.'s 1-layer model: encoder 784-200-200-(50+50) on B rows, decoder 50-200-200-784 on
    k*B rows. A step has each layer's forward product and its weight gradient, and the input gradient
    of every layer but the first (the images need none): 6 + 6 + 5 products."""
    floor = _load("gemm_floor")
    batch, k = 3, 4
    encoder, decoder = [(784, 200), (200, 200), (200, 100)], [(50, 200), (200, 200), (200, 784)]
    layer_flops = lambda rows, layers: [2 * rows * i * o for i, o in layers]  # noqa: E731
    expected = 2 * layer_flops(batch, encoder)[0] + 3 * sum(layer_flops(batch, encoder)[1:])
    expected += 3 * sum(layer_flops(k * batch, decoder))
    assert len(floor.step_products(batch, k)) == 17
    assert floor.flops(batch, k) == expected
    floor.floor_step(batch, k)()  # the replay runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU try-out; on a GPU machine run the real check")
def test_gpu_check_runs_all_its_steps_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,  # a loaded 2-core machine: a cold compile alone took over 200 s
    )
    assert done.returncode == 0, done.stdout[-3000:]
    out = done.stdout
    for section in (
        "2. tests marked cuda",
        "3. kernel variants",
        "4. training steps/s",
        "5. side by side",
        "5b. the training step",
        "6. projected wall time",
    ):
        assert section in out
    assert "| train step | 1 | 20 | 1 | bf16-mixed |" in out
    step_rows = [line for line in out.splitlines() if line.startswith("| train step | 1 | 4 | 1 | compiled-step |")]
    assert len(step_rows) == 1 and "steps/s" in step_rows[0]  # a rate, not "failed: ..."
    assert "9,774,400 steps per run" in out and "all steps passed" in out
