"""Tests for iwae.experiments.engine and ``iwae reproduce``: real (tiny) runs on MNIST, finished runs skipped,
failures isolated, a killed reproduction resumed, worker processes, and a real local Ray instance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import by_hand
import pytest
import torch
import yaml
from click.testing import CliRunner

import iwae.train.loop as train_module
from iwae.checkpoint import load_tensors
from iwae.cli import main
from iwae.experiments.engine import STATE_FILE, _lock, reproduce
from iwae.rundir import ERROR_FILE, RESULT_FILE, model_sha256
from iwae.tables import with_error
from iwae.train import TrainConfig, train

TINY = {"epochs": 1, "train_subset": 100, "test_subset": 10, "eval_k": 20}


def write_experiment(path: Path, runs: list[dict], protocol: dict | None = None) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "title": "tiny runs",
                "labels": ["objective", "k"],
                "runs": runs,
                "protocols": {"short": protocol or TINY},
                "figures": ["curves"],
            }
        )
    )
    return path


TWO_RUNS = [
    {"name": "a", "objective": "iwae", "k": 2},
    {"name": "b", "objective": "vae", "k": 1, "continue_from": "a", "schedule": "constant", "lr": 1e-4},
]


def cli(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def finished(tmp_path, shared_data_dir):
    """A tiny two-run reproduction (b continues a), run in this process."""
    exp = write_experiment(tmp_path / "tiny.yaml", TWO_RUNS)
    out = tmp_path / "out"
    summary = reproduce(exp, out, data_dir=str(shared_data_dir), progress=False)
    return exp, out, summary


def test_a_reproduction_writes_each_run_s_result_and_its_state(finished, mnist_splits):
    exp, out, summary = finished
    assert summary.status == {"a": "done", "b": "done"} and not summary.failed
    state = read_json(out / STATE_FILE)
    assert [r["status"] for r in state["runs"]] == ["done", "done"]
    assert state["protocol"]["name"] == "short" and state["protocol"]["settings"] == TINY
    assert state["wall_seconds"] > 0 and state["executor"].startswith("local: 1 worker")
    for name in ("a", "b"):
        result = read_json(out / "runs" / name / RESULT_FILE)
        m = result["metrics"]
        assert result["n_test"] == 10 and result["eval_k"] == 20 and result["epochs"] == 1
        # -L_20 over the first 10 test images and the active units, computed by hand from the run's model
        model = train_module.load(out / "runs" / name)
        lk, spread = by_hand.mean_lk(model, mnist_splits.test[:10], 20)
        assert m["log_p_hat"] == -m["nll"] and m["nll_stderr"] > 0
        assert abs(m["nll"] + lk) < max(0.5, 8 * spread), (name, m["nll"], lk, spread)
        assert result["active_units"] == [by_hand.active_units_one_layer(model, mnist_splits.train)]
        assert result["hardware"]["torch"] == torch.__version__ and result["train_seconds"] > 0
        assert result["spec"]["name"] == name
    assert read_json(out / "runs" / "b" / RESULT_FILE)["spec"]["after"] == "a"
    assert TrainConfig.from_yaml(out / "runs" / "b" / "config.yaml").init_from == str(out / "runs" / "a")


def test_a_second_invocation_skips_finished_runs(finished, shared_data_dir, monkeypatch):
    exp, out, _ = finished
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "train", refuse)
    summary = reproduce(exp, out, data_dir=str(shared_data_dir), progress=False)
    assert summary.status == {"a": "skipped", "b": "skipped"}
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == mtimes
    assert [r["status"] for r in read_json(out / STATE_FILE)["runs"]] == ["done", "done"]


def test_more_epochs_resume_a_run_and_restart_the_run_continuing_it(finished, shared_data_dir):
    exp, out, _ = finished
    old_a = model_sha256(out / "runs" / "a")
    assert read_json(out / "runs" / "b" / RESULT_FILE)["init_sha256"] == old_a
    summary = reproduce(exp, out, data_dir=str(shared_data_dir), progress=False, overrides={"epochs": 2})
    assert summary.status == {"a": "done", "b": "done"}
    a = read_json(out / "runs" / "a" / RESULT_FILE)
    assert a["training"] == "resumed" and a["epochs"] == 2
    # a trained on, so b, which continues a, starts again from a's new model (not from its old checkpoint)
    b = read_json(out / "runs" / "b" / RESULT_FILE)
    new_a = model_sha256(out / "runs" / "a")
    assert new_a != old_a and b["init_sha256"] == new_a and b["training"] == "trained"
    for name in ("a", "b"):
        assert len((out / "runs" / name / "metrics.csv").read_text().strip().splitlines()) == 1 + 2


def test_fewer_epochs_than_trained_are_refused_before_anything_runs(finished, shared_data_dir):
    exp, out, _ = finished
    reproduce(exp, out, data_dir=str(shared_data_dir), progress=False, only=["a"], overrides={"epochs": 2})
    with pytest.raises(ValueError, match="has trained 2 epochs, more than the 1 asked for"):
        reproduce(exp, out, data_dir=str(shared_data_dir), progress=False, overrides={"epochs": 1})


def test_a_second_reproduction_into_the_same_folder_is_refused_while_one_runs(finished, shared_data_dir):
    exp, out, _ = finished
    held = _lock(out)
    try:
        with pytest.raises(ValueError, match="another iwae reproduce is writing to"):
            reproduce(exp, out, data_dir=str(shared_data_dir), progress=False)
    finally:
        held.close()
    assert reproduce(exp, out, data_dir=str(shared_data_dir), progress=False).status == {"a": "skipped", "b": "skipped"}


def test_another_protocol_in_the_same_folder_is_refused_before_anything_runs(finished, shared_data_dir):
    exp, out, _ = finished
    result = cli("reproduce", exp, "--out", out, "--data-dir", shared_data_dir, "--train-subset", 50)
    assert result.exit_code == 2
    assert "holds a run with other settings (train_subset)" in result.output
    assert "Traceback" not in result.output


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, shared_data_dir):
    exp = write_experiment(
        tmp_path / "tiny.yaml",
        [
            {"name": "broken", "dataset": f"npz:{tmp_path / 'missing.npz'}", "objective": "iwae", "k": 2},
            {"name": "after-broken", "continue_from": "broken", "objective": "vae", "k": 1},
            {"name": "fine", "objective": "vae", "k": 1},
        ],
    )
    out = tmp_path / "out"
    result = cli("reproduce", exp, "--out", out, "--data-dir", shared_data_dir, "--quiet")
    assert result.exit_code == 1
    assert "1 run(s) done, 0 finished before, 1 failed, 1 blocked" in result.output
    error = read_json(out / "runs" / "broken" / ERROR_FILE)
    assert error["status"] == "failed" and "missing.npz" in error["error"] and "Traceback" in error["traceback"]
    assert (out / "runs" / "fine" / RESULT_FILE).is_file()
    assert not (out / "runs" / "after-broken").exists()
    statuses = {r["name"]: r["status"] for r in read_json(out / STATE_FILE)["runs"]}
    assert statuses == {"broken": "failed", "after-broken": "blocked", "fine": "done"}


def test_dry_run_lists_the_runs_their_state_and_cost(finished, shared_data_dir, tmp_path):
    exp, out, _ = finished
    (out / "runs" / "b" / RESULT_FILE).unlink()  # b was killed after training
    result = cli("reproduce", exp, "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(ln.split()[:2] == ["a", "done"] for ln in lines)
    assert any(ln.split()[:2] == ["b", "partial"] and "continues a" in ln for ln in lines)
    assert "estimated cost of what is left" in result.output
    assert not (out / "runs" / "b" / RESULT_FILE).exists()  # nothing ran
    both = cli("reproduce", exp, "--out", out, "--dry-run", "--only", "a,b")
    assert sum(ln.split()[:1] in (["a"], ["b"]) for ln in both.output.splitlines()) == 2
    listing = cli("reproduce", "--list")
    assert listing.exit_code == 0 and "table1" in listing.output and "rainforth" in listing.output


def test_a_killed_reproduction_resumes_where_it_stopped(tmp_path, shared_data_dir):
    """A real process, killed (SIGKILL) in the middle of its second run's training."""
    exp = write_experiment(
        tmp_path / "tiny.yaml",
        [
            {"name": "quick", "objective": "vae", "k": 1, "protocols": {"short": {"epochs": 1}}},
            {"name": "slow", "objective": "iwae", "k": 5},
        ],
        {"epochs": 6, "train_subset": 3000, "test_subset": 10, "eval_k": 20},
    )
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        "from iwae.cli import main; main()",
        "reproduce",
        str(exp),
        "--out",
        str(out),
        "--data-dir",
        str(shared_data_dir),
        "--quiet",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "runs" / "slow" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().strip().splitlines()) >= 2:  # slow: 1 epoch done
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the reproduction finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "runs" / "quick" / RESULT_FILE).is_file() and not (out / "runs" / "slow" / RESULT_FILE).exists()
    quick_mtime = (out / "runs" / "quick" / RESULT_FILE).stat().st_mtime_ns
    killed_at = load_tensors(out / "runs" / "slow" / "checkpoint.safetensors")[1]["epoch"]
    assert 1 <= killed_at < 6

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "runs" / "quick" / RESULT_FILE).stat().st_mtime_ns == quick_mtime  # skipped, not redone
    result = read_json(out / "runs" / "slow" / RESULT_FILE)
    assert result["training"] == "resumed" and result["epochs"] == 6
    epochs = [row.split(",")[0] for row in metrics.read_text().strip().splitlines()[1:]]
    assert epochs == [str(e) for e in range(1, 7)]


def test_worker_processes_each_take_their_share_of_the_cores(tmp_path, shared_data_dir):
    exp = write_experiment(
        tmp_path / "tiny.yaml", [{"name": "a", "objective": "iwae", "k": 2}, {"name": "b", "objective": "vae", "k": 3}]
    )
    out = tmp_path / "out"
    summary = reproduce(exp, out, data_dir=str(shared_data_dir), workers=2, progress=False)
    assert summary.status == {"a": "done", "b": "done"}
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // 2)
    for name in ("a", "b"):
        hw = read_json(out / "runs" / name / RESULT_FILE)["hardware"]
        assert hw["threads"] == share and hw["cores"] == share  # pinned: sched_setaffinity to its share
    assert "2 worker processes" in read_json(out / STATE_FILE)["executor"]


def test_init_from_starts_a_run_from_another_run_s_trained_weights(tmp_path, mnist_splits):
    first = train(
        TrainConfig(objective="iwae", k=2, epochs=1, train_subset=100, out=str(tmp_path / "a")),
        progress=False,
        splits=mnist_splits,
    )
    # with a vanishing learning rate the continued run's weights stay those of the first run
    second = train(
        TrainConfig(
            objective="vae",
            k=1,
            epochs=1,
            train_subset=100,
            schedule="constant",
            lr=1e-20,
            init_from=str(first),
            out=str(tmp_path / "b"),
        ),
        progress=False,
        splits=mnist_splits,
    )
    a, _ = load_tensors(first / "model.safetensors")
    b, _ = load_tensors(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="init_from .* is not this run's"):
        train(
            TrainConfig(layers=2, epochs=1, train_subset=100, init_from=str(first), out=str(tmp_path / "c")),
            progress=False,
            splits=mnist_splits,
        )


@pytest.mark.parametrize(
    "experiment, only",
    [
        ("table1", "mnist-l2-iwae-k5"),
        ("table2", "vae-k1-then-iwae-k50"),
        ("table3", "l1-vae-k5"),
        ("rainforth", "piwae-m8-k8"),
        ("estimators", "iwae-k5-dreg"),
        ("priors", "vamp-iwae-k5"),
        ("grey", "gated-vamp-iwae-k50"),
    ],
)
def test_every_shipped_experiment_runs_end_to_end(experiment, only, tmp_path, shared_data_dir):
    """One run of each shipped experiment (and what it continues), shortened further by overrides."""
    out = tmp_path / experiment
    result = cli(
        "reproduce",
        experiment,
        "--only",
        only,
        "--out",
        out,
        "--data-dir",
        shared_data_dir,
        "--quiet",
        "--epochs",
        1,
        "--train-subset",
        100,
        "--test-subset",
        10,
        "--eval-k",
        20,
    )
    assert result.exit_code == 0, result.output
    state = read_json(out / STATE_FILE)
    assert only in [r["name"] for r in state["runs"]] and {r["status"] for r in state["runs"]} == {"done"}
    spec = next(r for r in state["runs"] if r["name"] == only)
    metrics = read_json(out / "runs" / only / RESULT_FILE)["metrics"]
    if spec["published"]:
        assert set(spec["published"]) - {"active_units"} <= set(metrics)  # every published metric is measured


def test_rainforth_short_protocol_one_run(tmp_path, shared_data_dir, mnist_splits):
    """A real short-protocol run (4 epochs on 5,000 images, L_64 and L_5000 on 500 test images)."""
    out = tmp_path / "rainforth"
    result = cli("reproduce", "rainforth", "--only", "vae-k64", "--out", out, "--data-dir", shared_data_dir, "--quiet")
    assert result.exit_code == 0, result.output
    r = read_json(out / "runs" / "vae-k64" / RESULT_FILE)
    m = r["metrics"]
    assert r["n_test"] == 500 and r["epochs"] == 4 and r["eval_k"] == 5000
    # IWAE-64 against L_64 computed by hand from the run's model on the same 500 test images, and
    # -KL = IWAE-64 - log p-hat < 0 since L_64 <= L_5000 on average (Burda et al., Theorem 1)
    lk, spread = by_hand.mean_lk(train_module.load(out / "runs" / "vae-k64"), mnist_splits.test[:500], 64)
    assert abs(m["iwae64"] - lk) < max(0.2, 8 * spread), (m["iwae64"], lk, spread)
    assert m["iwae64"] < m["log_p_hat"] and m["neg_kl"] < 0


def _free_port() -> int:
    with socket.socket() as s:  # the no-network fixture patches connect, not bind
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_runs_each_run_as_a_task_and_gathers_the_files(tmp_path, shared_data_dir):
    """A real local Ray instance (``ray start --head``), no mocks: two tiny runs, one continuing the other,
    trained in the tasks' temporary folders and written back to the output folder."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if not ray_cli:  # an optional dependency: CI installs it and sets IWAE_REQUIRE_RAY=1, so it cannot skip there
        message = 'Ray is not installed: pip install "iwae[ray]"'
        if os.environ.get("IWAE_REQUIRE_RAY") == "1":
            pytest.fail(message + " (IWAE_REQUIRE_RAY=1)")
        pytest.skip(message)
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = Path("/tmp") / f"ray-iwae-{os.getpid()}"  # Ray's socket paths must stay short
    start = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        exp = write_experiment(tmp_path / "tiny.yaml", TWO_RUNS)
        out = tmp_path / "out"
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "from iwae.cli import main; main()",
                "reproduce",
                str(exp),
                "--out",
                str(out),
                "--data-dir",
                str(shared_data_dir),
                "--ray",
                f"127.0.0.1:{port}",
                "--cpus-per-run",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    state = read_json(out / STATE_FILE)
    assert state["executor"].startswith(f"ray (127.0.0.1:{port})")
    for name in ("a", "b"):
        run_dir = out / "runs" / name
        for f in ("config.yaml", "model.safetensors", "checkpoint.safetensors", "metrics.csv", RESULT_FILE):
            assert (run_dir / f).is_file(), f"{name}/{f} was not gathered"
        result = read_json(run_dir / RESULT_FILE)
        assert result["status"] == "done" and result["hardware"]["threads"] == 1
        assert "iwae-ray-" not in str(out)  # written where asked, not in the task's folder
    # b started from a's trained model, shipped to its task; its config names it inside the task's folder
    assert TrainConfig.from_yaml(out / "runs" / "b" / "config.yaml").init_from.endswith("/runs/a")


def test_selections_run_one_after_another_add_up_in_the_state(tmp_path, shared_data_dir):
    exp = write_experiment(
        tmp_path / "tiny.yaml", [{"name": "a", "objective": "iwae", "k": 2}, {"name": "c", "objective": "vae", "k": 1}]
    )
    out = tmp_path / "out"
    reproduce(exp, out, only=["c"], data_dir=str(shared_data_dir), progress=False)
    first = read_json(out / STATE_FILE)
    reproduce(exp, out, only=["a"], data_dir=str(shared_data_dir), progress=False)
    state = read_json(out / STATE_FILE)
    assert [(r["name"], r["status"]) for r in state["runs"]] == [("a", "done"), ("c", "done")]  # the file's order
    assert state["started"] == first["started"] and state["wall_seconds"] > first["wall_seconds"]
    # another protocol in the same folder starts a new record
    reproduce(exp, out, only=["a"], data_dir=str(shared_data_dir), progress=False, overrides={"eval_k": 10})
    assert [r["name"] for r in read_json(out / STATE_FILE)["runs"]] == ["a"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    exp = write_experiment(tmp_path / "tiny.yaml", [{"name": "a", "objective": "iwae", "k": 2}])
    result = cli("reproduce", exp, "--out", tmp_path / "out", "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("slot", [0, 1])
def test_a_worker_is_pinned_to_the_cores_of_its_slot(slot):
    import concurrent.futures as cf
    import multiprocessing

    from iwae.experiments.executors import _init_worker

    cores = sorted(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    slots.put(slot)
    with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker, initargs=(slots, 1, "cpu")) as pool:
        pinned = pool.submit(os.sched_getaffinity, 0).result(timeout=120)
        threads = pool.submit(torch.get_num_threads).result(timeout=60)
    assert pinned == {cores[slot % len(cores)]} and threads == 1


def test_a_worker_that_dies_takes_no_run_down_with_it(tmp_path, shared_data_dir):
    """One of two worker processes is killed (SIGKILL) mid-run: the pool is rebuilt and both runs finish."""
    import multiprocessing
    import threading

    exp = write_experiment(
        tmp_path / "tiny.yaml",
        [{"name": "a", "objective": "iwae", "k": 5}, {"name": "b", "objective": "vae", "k": 5}],
        {"epochs": 2, "train_subset": 3000, "test_subset": 10, "eval_k": 20},
    )
    out = tmp_path / "out"
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            summary=reproduce(exp, out, data_dir=str(shared_data_dir), workers=2, progress=False)
        )
    )
    thread.start()
    deadline = time.time() + 180
    while time.time() < deadline and not list((out / "runs").glob("*/config.yaml")):
        time.sleep(0.05)
    victims = multiprocessing.active_children()
    assert victims, "no worker process to kill"
    os.kill(victims[0].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert outcome["summary"].status == {"a": "done", "b": "done"}
    assert all(
        (out / "runs" / n / RESULT_FILE).is_file() and not (out / "runs" / n / ERROR_FILE).exists() for n in ("a", "b")
    )


def test_a_ray_address_that_does_not_answer_is_a_clear_error(tmp_path):
    exp = write_experiment(tmp_path / "tiny.yaml", [{"name": "a", "objective": "iwae", "k": 2}])
    bad = cli("reproduce", exp, "--out", tmp_path / "out", "--ray", "nonsense")
    assert bad.exit_code == 2 and "--ray wants auto, local or HOST:PORT" in bad.output
    # a real connection attempt, in a process of its own (this one refuses sockets)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from iwae.cli import main; main()",
            "reproduce",
            str(exp),
            "--out",
            str(tmp_path / "out"),
            "--ray",
            f"127.0.0.1:{_free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "cannot connect to the Ray cluster at 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- device failures (issue 14)
FAULTS_ENV = "IWAE_TEST_FAULTS"  # {run name: [error kind per attempt, None: no fault]} as JSON, and a log file


def _faulty_worker(slots, threads, device, progress=False):
    """A worker initializer (run in each spawned worker) that makes the runs named in $IWAE_TEST_FAULTS
    raise, per attempt, the error it lists, and logs every attempt (pid, run, error) to a file."""
    import iwae.experiments.execute as execute_module
    import iwae.experiments.executors as executors_module

    executors_module._init_worker(slots, threads, device, *([progress] if progress else []))
    faults, log = json.loads(os.environ[FAULTS_ENV]), Path(os.environ[FAULTS_ENV + "_LOG"])
    real = execute_module.train_or_resume

    def train_or_resume(config, **kwargs):
        name = Path(config.out).name
        attempt = sum(1 for line in log.read_text().splitlines() if line.split()[1] == name) if log.exists() else 0
        kinds = faults.get(name, [])
        kind = kinds[attempt] if attempt < len(kinds) else None
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {name} {kind}\n")
        if kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        if kind == "cuda":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected by the test)")
        if kind == "value":
            raise ValueError("a plain failure of the run (injected by the test)")
        return real(config, **kwargs)

    execute_module.train_or_resume = train_or_resume


def test_a_device_failure_kills_its_worker_and_the_run_is_retried_alone_once(tmp_path, shared_data_dir, monkeypatch):
    """Through the worker pool: a run that runs out of memory once is retried in a fresh worker and
    finishes; one whose CUDA fails every time fails, after exactly two attempts in two processes,
    with its own error; a plain error is not retried (and the run sharing the broken pool is unharmed)."""
    import iwae.experiments.executors as executors_module

    faults = {"oom-once": ["oom"], "cuda-always": ["cuda", "cuda"], "plain": ["value"]}
    log = tmp_path / "attempts.log"
    monkeypatch.setenv(FAULTS_ENV, json.dumps(faults))
    monkeypatch.setenv(FAULTS_ENV + "_LOG", str(log))
    monkeypatch.setattr(executors_module, "_init_worker", _faulty_worker)
    exp = write_experiment(
        tmp_path / "tiny.yaml", [{"name": n, "objective": "iwae", "k": 2} for n in ("oom-once", "cuda-always", "plain")]
    )
    out = tmp_path / "out"
    summary = reproduce(exp, out, data_dir=str(shared_data_dir), workers=2, progress=False)
    assert summary.status == {"oom-once": "done", "cuda-always": "failed", "plain": "failed"}
    attempts = [line.split() for line in log.read_text().splitlines()]
    tries = {n: [a for a in attempts if a[1] == n] for n in faults}
    assert len(tries["oom-once"]) == 2 and len(tries["cuda-always"]) == 2 and len(tries["plain"]) == 1
    assert tries["cuda-always"][0][0] != tries["cuda-always"][1][0]  # a fresh process the second time
    error = read_json(out / "runs" / "cuda-always" / ERROR_FILE)
    assert error["error"].startswith("RuntimeError: CUDA error: an illegal memory access") and "twice" in error["error"]
    assert "Traceback" in error["traceback"] and error["device_failure"] is True
    assert read_json(out / "runs" / "plain" / ERROR_FILE)["error"].startswith("ValueError: a plain failure")
    assert not (out / "runs" / "oom-once" / ERROR_FILE).exists() and (out / "runs" / "oom-once" / RESULT_FILE).is_file()
    assert {r["name"]: r["status"] for r in read_json(out / STATE_FILE)["runs"]}["cuda-always"] == "failed"


def test_device_failures_are_told_from_other_errors():
    from iwae.experiments.engine import is_device_failure

    assert is_device_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_device_failure(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    if hasattr(torch, "AcceleratorError"):
        assert is_device_failure(torch.AcceleratorError("CUDA error: device-side assert triggered"))
    assert is_device_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_failure(torch.cuda.CudaError.__new__(torch.cuda.CudaError))  # its __init__ needs a CUDA build
    assert not is_device_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert not is_device_failure(ValueError("CUDA is not available"))
    assert not is_device_failure(FloatingPointError("the bound is NaN"))


def test_one_cuda_worker_is_still_a_process_of_its_own(tmp_path, monkeypatch):
    """With one GPU the default is one worker; it runs in a worker process (so that a device failure
    can take the process, not the reproduction, down), never in this process."""
    import iwae.experiments.engine as reproduce_module

    made = []

    class Refused(Exception):
        pass

    def fake_pool(workers, threads, device, progress=False):
        made.append((workers, device, progress))
        raise Refused

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(reproduce_module, "_Pool", fake_pool)
    exp = write_experiment(tmp_path / "tiny.yaml", [{"name": "a", "objective": "iwae", "k": 2}])
    with pytest.raises(Refused):
        reproduce(exp, tmp_path / "out", device="cuda", progress=True)
    assert made == [(1, "cuda", True)]


class FakeRay:
    """The part of the ray module iwae.experiments.engine uses; a task runs when it is submitted, in this process."""

    def __init__(self, resources: dict):
        self.resources, self.inits, self.options, self.calls = resources, [], [], 0

    def is_initialized(self):
        return bool(self.inits)

    def init(self, **kwargs):
        self.inits.append(kwargs)

    def cluster_resources(self):
        return dict(self.resources)

    def remote(self, **options):
        import concurrent.futures as cf
        from types import SimpleNamespace

        self.options.append(options)
        fake = self

        def wrap(fn):
            def submit(*args):
                fake.calls += 1
                future = cf.Future()
                try:
                    future.set_result(fn(*args))
                except BaseException as e:
                    future.set_exception(e)
                return SimpleNamespace(future=lambda: future)

            return SimpleNamespace(remote=submit)

        return wrap

    def cancel(self, ref, force=False):
        pass


def test_ray_with_cuda_refuses_a_cluster_without_gpus(tmp_path, monkeypatch):
    """Tasks asking for num_gpus=1 on a cluster without GPUs are never scheduled: refused in one line
    (exit status 2) before any task is submitted or anything is written."""
    fake = FakeRay({"CPU": 16.0, "memory": 1e10})
    monkeypatch.setitem(sys.modules, "ray", fake)
    exp = write_experiment(tmp_path / "tiny.yaml", [{"name": "a", "objective": "iwae", "k": 2}])
    result = CliRunner().invoke(
        main, ["reproduce", str(exp), "--out", str(tmp_path / "out"), "--ray", "auto", "--device", "cuda"]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "has no GPU" in errors[0] and "--device cpu" in errors[0], result.output
    assert "Traceback" not in result.output
    assert fake.inits and fake.options == [] and fake.calls == 0
    assert not (tmp_path / "out").exists()


def test_ray_with_cuda_asks_each_task_for_a_gpu_and_retries_a_device_failure_once(
    tmp_path, shared_data_dir, monkeypatch
):
    """On a cluster with a GPU, each task asks for one (in a fresh worker process, max_calls=1); a run
    whose device fails once is submitted again and finishes; one that fails twice is failed with its error.
    (The runs themselves train on the CPU here.)"""
    import iwae.experiments.execute as execute_module
    import iwae.experiments.executors as executors_module

    fake = FakeRay({"CPU": 4.0, "GPU": 1.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    attempts: dict[str, int] = {}
    real = execute_module.execute_run

    def execute_run(spec, run_dir, data_dir, device, threads, progress=False):
        assert device == "cuda"
        attempts[spec["name"]] = attempts.get(spec["name"], 0) + 1
        if spec["name"] == "always" or attempts[spec["name"]] == 1 and spec["name"] == "once":
            monkeypatch.setattr(execute_module, "train_or_resume", oom)
        else:
            monkeypatch.setattr(execute_module, "train_or_resume", real_train)
        return real(spec, run_dir, data_dir, "cpu", threads, progress)

    def oom(config, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    real_train = execute_module.train_or_resume
    monkeypatch.setattr(executors_module, "execute_run", execute_run)
    exp = write_experiment(
        tmp_path / "tiny.yaml", [{"name": n, "objective": "iwae", "k": 2} for n in ("once", "always")]
    )
    out = tmp_path / "out"
    summary = reproduce(exp, out, data_dir=str(shared_data_dir), ray="auto", device="cuda", progress=False)
    assert fake.options == [{"num_cpus": 1, "num_gpus": 1, "max_retries": 0, "max_calls": 1}]
    assert summary.status == {"once": "done", "always": "failed"} and attempts == {"once": 2, "always": 2}
    assert read_json(out / "runs" / "always" / ERROR_FILE)["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert (out / "runs" / "once" / RESULT_FILE).is_file() and not (out / "runs" / "once" / ERROR_FILE).exists()


# ----------------------------------------------------------------------------- seeds
def test_two_seeds_train_two_runs_and_the_report_gives_their_mean_and_sd(tmp_path, shared_data_dir):
    """seeds: [0, 1] trains `a` (seed 0, today's name) and `a-s1` (seed 1) as runs of their own;
    `iwae report` shows one row for the pair, mean ± sd computed here from the two result.json files,
    and with --per-seed each run's row too; report.json holds the per-seed values."""
    import math
    import statistics

    path = tmp_path / "seeds.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "seeds",
                "labels": ["objective", "k"],
                "seeds": [0, 1],
                "runs": [{"name": "a", "objective": "iwae", "k": 2, "published": None}],
                "protocols": {"short": TINY},
            }
        )
    )
    out = tmp_path / "out"
    summary = reproduce(path, out, data_dir=str(shared_data_dir), progress=False)
    assert summary.status == {"a": "done", "a-s1": "done"}
    assert [TrainConfig.from_yaml(out / "runs" / n / "config.yaml").seed for n in ("a", "a-s1")] == [0, 1]
    weights = [load_tensors(out / "runs" / n / "model.safetensors")[0] for n in ("a", "a-s1")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # other seeds, other models
    nlls = [read_json(out / "runs" / n / RESULT_FILE)["metrics"]["nll"] for n in ("a", "a-s1")]
    assert nlls[0] != nlls[1]
    mean = (nlls[0] + nlls[1]) / 2
    sd = math.sqrt(((nlls[0] - mean) ** 2 + (nlls[1] - mean) ** 2) / (2 - 1))
    assert sd == pytest.approx(statistics.stdev(nlls))

    result = cli("report", out, "--no-figures")
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `a")]
    assert len(rows) == 1 and rows[0].startswith("| `a` | 2 |")  # one row for the group, 2 seeds
    assert with_error(mean, sd) in rows[0]  # as many decimals as the sd needs
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert "| NLL (mean ± sd over seeds) |" in header  # what its ± is, in the header
    assert "Per seed" not in text
    summary_json = read_json(out / "report.json")["experiments"][0]["groups"]
    assert [(g["name"], g["runs"], g["seeds"], g["n_seeds"]) for g in summary_json] == [("a", ["a", "a-s1"], [0, 1], 2)]
    nll = summary_json[0]["metrics"]["nll"]
    assert nll["per_seed"] == nlls and nll["mean"] == pytest.approx(mean) and nll["sd"] == pytest.approx(sd)

    result = cli("report", out, "--no-figures", "--per-seed")
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text(encoding="utf-8")
    per_seed = text.split("#### Per seed", 1)[1]
    assert "| NLL (± s.e. over images) |" in next(ln for ln in per_seed.splitlines() if ln.startswith("| run |"))
    for name, value in zip(("a", "a-s1"), nlls):
        line = next(ln for ln in per_seed.splitlines() if ln.startswith(f"| `{name}` |"))
        assert f"{value:.2f} ± " in line  # a run's own value, ± its standard error over images


def test_summary_text_counts_statuses_and_lists_failures(tmp_path):
    from iwae.experiments.engine import Summary, summary_text

    summary = Summary(
        tmp_path,
        status={"a": "done", "b": "skipped", "c": "failed", "d": "blocked", "e": "done"},
        results={"c": {"error": "ValueError: boom"}},
    )
    text, failures = summary_text("tiny", summary)
    assert text.startswith("tiny: 2 run(s) done, 1 finished before, 1 failed, 1 blocked; see ")
    assert str(tmp_path / "reproduction.json") in text and text.endswith(f"report with: iwae report {tmp_path}")
    assert failures == ["  c: ValueError: boom", "  d: its dependency failed"]
    assert summary_text("tiny", Summary(tmp_path, status={"a": "done"}))[1] == []


def test_an_experiment_that_asks_for_ais_reports_it_beside_l_k(tmp_path, shared_data_dir):
    """evaluate: {ais: {...}} runs AIS on the first test images after L_k; result.json's nll_ais and
    ais_gap equal what the two saved per-image files give (computed here with numpy), and the report
    has the NLL (AIS) and AIS - L_k columns. A bad ais setting is one line."""
    import numpy as np

    from iwae.ais import ais_eval_name
    from iwae.rundir import eval_name

    path = tmp_path / "ais.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "ais",
                "labels": ["objective", "k"],
                "runs": [{"name": "a", "objective": "iwae", "k": 2, "published": None}],
                "evaluate": {"k": 20, "ais": {"steps": 3, "chains": 2, "leapfrog": 2, "test_subset": 6}},
                "protocols": {"short": TINY},
            }
        )
    )
    out = tmp_path / "out"
    summary = reproduce(path, out, data_dir=str(shared_data_dir), progress=False)
    assert summary.status == {"a": "done"}
    run = out / "runs" / "a"
    metrics = read_json(run / RESULT_FILE)["metrics"]
    ais = np.load(run / f"{ais_eval_name(3, 2, 2, 0, 6)}.npy")
    l_k = np.load(run / f"{eval_name(20, 0, 10)}.npy")
    recorded = read_json(run / RESULT_FILE)["ais"]
    assert len(ais) == 6 and recorded["n_test"] == 6
    assert metrics["nll_ais"] == pytest.approx(-ais.mean())
    d = ais - l_k[:6]
    assert metrics["ais_gap"] == pytest.approx(d.mean()) and metrics["ais_gap_stderr"] == pytest.approx(
        d.std(ddof=1) / np.sqrt(6)
    )
    assert recorded == {
        "n_test": 6,
        "steps": 3,
        "chains": 2,
        "leapfrog": 2,
        "schedule": "sigmoid",
        "initial": "encoder",
    }
    result = cli("report", out, "--no-figures")
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    assert "NLL (AIS)" in header and "AIS - L_20" in header
    row = next(line for line in text.splitlines() if line.startswith("| `a`"))
    assert f"{metrics['ais_gap']:.2f} ± {metrics['ais_gap_stderr']:.2f}" in row

    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("steps: 3", "steps: 0"))
    result = cli("reproduce", bad, "--out", tmp_path / "bad-out")
    assert result.exit_code == 2 and "evaluate.ais must map" in result.output and "Traceback" not in result.output


def test_the_report_compares_the_pairs_an_experiment_names(tmp_path, shared_data_dir):
    """compare: [[a, b]] with seeds [0, 1]: the report's paired comparison is the mean over seeds of
    mean(L_b - L_a) per image, its s.e. across seeds that of the two per-seed differences (both
    computed here with numpy from the saved bounds); a name that is no run is refused."""
    import numpy as np

    from iwae.experiments.report import comparisons, read_reproduction
    from iwae.rundir import eval_name

    path = tmp_path / "pairs.yaml"
    spec = {
        "name": "pairs",
        "labels": ["objective", "k"],
        "seeds": [0, 1],
        "compare": [["a", "b"]],
        "runs": [
            {"name": "a", "objective": "iwae", "k": 2, "published": None},
            {"name": "b", "objective": "vae", "k": 1, "published": None},
        ],
        "protocols": {"short": TINY},
    }
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    summary = reproduce(path, out, data_dir=str(shared_data_dir), progress=False)
    assert set(summary.status.values()) == {"done"}
    name = eval_name(20, 0, 10)
    per_seed = [
        np.mean(np.load(out / "runs" / f"b{s}" / f"{name}.npy") - np.load(out / "runs" / f"a{s}" / f"{name}.npy"))
        for s in ("", "-s1")
    ]
    (entry,) = comparisons(read_reproduction(out))
    assert entry["seeds"] == [0, 1]
    assert entry["result"]["difference"] == pytest.approx(np.mean(per_seed))
    assert entry["result"]["stderr_across_seeds"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(2))
    result = cli("report", out, "--no-figures")
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text(encoding="utf-8")
    row = next(line for line in text.split("### Paired comparisons", 1)[1].splitlines() if line.startswith("| `a`"))
    assert f"{np.mean(per_seed):+.2f}" in row and row.startswith("| `a` | `b` | 2 |")
    assert read_json(out / "report.json")["experiments"][0]["comparisons"][0]["seeds"] == [0, 1]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**spec, "compare": [["a", "c"]]}))
    result = cli("reproduce", bad, "--out", tmp_path / "bad-out", "--dry-run")
    assert result.exit_code == 2 and "compare names c, which is not a run" in result.output


@pytest.mark.parametrize("batch", [True, False])
def test_the_console_says_a_run_started_before_its_epoch_lines(tmp_path, shared_data_dir, capsys, batch):
    """reproduce printed a run's epoch lines before its 'started' line (the in-process executor runs a
    run inside submit(), and batched runs train before any is submitted)."""
    path = tmp_path / "two.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "labels": ["objective"],
                "runs": [{"name": n, "objective": n, "k": 2, "published": None} for n in ("iwae", "vae")],
                "protocols": {"short": TINY},
            }
        )
    )
    summary = reproduce(path, tmp_path / "out", data_dir=str(shared_data_dir), progress=True, batch=batch)
    assert summary.status == {"iwae": "done", "vae": "done"}
    err = capsys.readouterr().err.splitlines()
    for name in ("iwae", "vae"):
        started = err.index(f"{name}: started")
        # its training: batched, its own epoch lines; alone, the line that starts its training
        mark = f"/runs/{name}: epoch 1/1" if batch else f"/runs/{name}: {name.upper()}(k=2), epochs 1-1 of 1"
        trained = [i for i, line in enumerate(err) if mark in line]
        done = next(i for i, line in enumerate(err) if line.startswith("[") and f"] {name}: NLL" in line)
        assert trained and started < min(trained) < done, err
        if batch:  # when it is evaluated, the line says it was trained above
            assert f"{name}: trained above as one batched model; evaluating" in err
    if not batch:  # one run after the other: each one's epoch lines between its start and its result
        assert err.index("vae: started") > next(i for i, line in enumerate(err) if "] iwae: NLL" in line)
