"""Reproduce an experiment: train and evaluate each of its runs, locally in worker processes or on Ray.

    from iwae.experiments.engine import reproduce
    summary = reproduce("table1", "runs/table1", protocol="short", datasets=["mnist"], workers=2)

Each run of the experiment (:mod:`iwae.experiments.spec`) is an independent job: train (resuming its
checkpoint if there is one), then evaluate the test NLL by L_k with its standard error, any further
bounds, and active units, then write ``runs/<name>/result.json``. A run whose result.json matches
its spec is finished and skipped, so an interrupted reproduction picks up where it stopped (a run
killed mid-training resumes from its last epoch's checkpoint). A run that fails writes
``runs/<name>/error.json`` and the others go on; a run continuing a failed one is ``blocked``.
``reproduction.json`` in the output folder records the experiment, the protocol used, each run's
spec and status, and the wall time; it is rewritten (atomically) as runs finish. ``iwae report``
turns the folder into a report. An experiment with ``seeds`` has one run per seed (``NAME``,
``NAME-s1``, ...), each an independent job like any other; ``iwae grid`` is an experiment too
(:func:`iwae.grid.grid_experiment`).

Execution:

- ``workers=1`` (the default on CPU): one run after another in this process.
- ``workers=N``: N worker processes; on CPU each is pinned (``sched_setaffinity``) to its own
  share of the cores and sets torch's threads to it; with ``device="cuda"`` the workers take the
  GPUs in turn, several workers per GPU when N exceeds the GPUs (small runs then share a GPU);
  the default on CUDA is one worker per GPU, and even one worker is a process of its own.
  A worker that dies takes down the pool: it is rebuilt, and the runs it held run again, one at
  a time. A run that fails on its device (CUDA out of memory, a CUDA error,
  :func:`is_device_failure`) counts as a dead worker, since its CUDA context may be unusable:
  the worker exits, and the run is retried alone once; failing again, it is failed with its error.
- ``ray="auto"`` or an address: each run is a Ray task asking for ``cpus_per_run`` CPUs (or one
  GPU with ``device="cuda"``). The task trains in a temporary folder on its node, from the files
  the driver sends (a checkpoint to resume, the model a continued run starts from), and returns
  the run's files, which the driver writes to the output folder: no shared file system is needed.
  Ray is an optional dependency: ``pip install "iwae[ray]"``. With ``device="cuda"`` a cluster
  without a GPU is refused before anything runs (its tasks would wait for ever), and a run whose
  device fails is run once more in a fresh task.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401 - cf.process.BrokenProcessPool below
import json
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

from .. import rundir
from ..checkpoint import CheckpointError, atomic_write
from ..data import load_dataset, missing_files
from .spec import Experiment, RunSpec, load_experiment
from ..rundir import model_sha256, trained_epochs, training_seconds
from ..train import train_or_resume
from ..estimators import ESTIMATOR_TABLE

__all__ = ["reproduce", "plan", "execute_run", "estimate_seconds", "Summary", "STATE_FILE", "is_device_failure",
           "plan_text", "summary_text"]

STATE_FILE = "reproduction.json"

# Rough costs measured on a 2-core CPU (torch 2.13, 2 threads, one run at a time), for --dry-run:
# training seconds per example = TRAIN_BASE + TRAIN_PER_SAMPLE * k (batch 20, Burda's 1-layer model);
# evaluation seconds per test image and sample of L_k, and a fixed cost per run (loading the data for
# training and for each evaluation, checkpoints, active units).
TRAIN_BASE, TRAIN_PER_SAMPLE, EVAL_PER_SAMPLE, RUN_OVERHEAD = 1.9e-4, 1.05e-5, 5e-6, 20.0
ESTIMATOR_COST = {name: e.cost for name, e in ESTIMATOR_TABLE.items()}  # from the estimator table
TRAIN_IMAGES = {"mnist": 59600, "fashion-mnist": 59600, "binarized-mnist": 50000, "omniglot": 23000}
TEST_IMAGES = {"mnist": 10000, "fashion-mnist": 10000, "binarized-mnist": 10000, "omniglot": 8070}


# ----------------------------------------------------------------------------- one run
def hardware(device: str = "cpu") -> dict:
    """Where a run ran: host, CPU model, the cores it may use, torch threads, device (and GPU name), torch and
    CUDA versions (the same seed gives other samples on CPU and CUDA)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"host": platform.node(), "cpu": cpu, "cores": cores, "threads": torch.get_num_threads(), "device": device,
            "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}


def finished_result(run_dir: Path, spec: RunSpec) -> dict | None:
    """The run's result.json if it is finished under ``spec`` (:func:`iwae.rundir.run_status`), else None."""
    return rundir.finished_result(run_dir, spec.to_dict())


def is_device_failure(error: BaseException) -> bool:
    """True for an error of the device rather than of the run: CUDA out of memory, or a CUDA error.

    Out of memory may pass when the run is retried alone (not sharing its GPU); a CUDA error (an
    illegal memory access, a launch failure) is sticky, it poisons the process's CUDA context for
    every later run. Either way the run's worker process must go, as if it had died.
    """
    import torch

    kinds = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch, "AcceleratorError", None),
                              getattr(torch.cuda, "OutOfMemoryError", None), getattr(torch.cuda, "CudaError", None))
                  if isinstance(t, type))
    if isinstance(error, kinds):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("CUDA error" in message or "CUDA out of memory" in message)


def execute_run(spec: dict, run_dir: str, data_dir: str | None = None, device: str = "cpu",
                threads: int | None = None, progress: bool = False, splits=None) -> dict:
    """Trains (or resumes) and evaluates one run in ``run_dir``; writes and returns its result.

    A continued run records the SHA-256 of the model it starts from; if its folder was started from
    another model (the dependency was trained again since), it starts again from the new one.
    Never raises for a failing run: the error is written to ``error.json`` and returned as
    ``{"name", "status": "failed", "error", "traceback"}``, so the other runs go on. A failure of
    the device (:func:`is_device_failure`) is marked ``"device_failure": True``: the worker pool and
    Ray then retry the run once, in a fresh process. ``splits``: the run's dataset already loaded
    (in this process; else it is loaded from ``data_dir``).
    """
    from ..evaluate import evaluate

    run = RunSpec.from_dict(spec)
    run_dir = Path(run_dir)
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        rundir.clear_error(run_dir)
        config = run.train_config(run_dir, data_dir=data_dir, device=device, threads=threads)
        if run.after:
            config.init_sha256 = model_sha256(config.init_from)
            try:
                started_from = rundir.read_config(run_dir).init_sha256
            except (CheckpointError, ValueError, TypeError):
                started_from = config.init_sha256  # nothing (readable) there: train_or_resume starts it
            if started_from != config.init_sha256:
                rundir.delete(run_dir)  # started from the old model: train it again from the new
        if splits is None or (splits.name, splits.binarization, splits.dequantize) != \
                (config.dataset, config.binarization, config.dequantize):
            splits = config.load_data(data_dir)  # once: training and every evaluation share it
        t0 = time.perf_counter()
        done = train_or_resume(config, splits=splits, progress=progress)
        if done == "trained before":  # trained just now with other runs as one batched model (_train_batches)
            done = _BATCH_TRAINED.pop(str(run_dir), done)
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = run.eval
        main = evaluate(run_dir, splits=splits, k=ev["k"], test_subset=ev["test_subset"], seed=ev["seed"],
                        device=device)
        metrics = {"nll": main["nll"], "nll_stderr": main["nll_stderr"], "log_p_hat": -main["nll"]}
        if main.get("bits_per_dim") is not None:  # a code length (discrete or dequantised): also in bits/dim
            metrics["bits_per_dim"] = main["bits_per_dim"]
            metrics["bits_per_dim_stderr"] = main["nll_stderr"] * main["bits_per_dim"] / main["nll_discrete"]
        for k in ev["bound_ks"]:
            bound = evaluate(run_dir, splits=splits, k=k, test_subset=ev["test_subset"], seed=ev["seed"],
                             device=device)
            metrics[f"iwae{k}"] = -bound["nll"]
            metrics[f"iwae{k}_stderr"] = bound["nll_stderr"]
            metrics["neg_kl" if len(ev["bound_ks"]) == 1 else f"neg_kl{k}"] = main["nll"] - bound["nll"]
        ais = _ais_metrics(run_dir, ev, device, data_dir) if ev.get("ais") else None
        if ais:
            metrics.update(ais.pop("metrics"))
        result = {
            "name": run.name, "status": "done", "metrics": metrics,
            "active_units": main["active_units_per_layer"], "n_test": main["n_test"], "eval_k": ev["k"],
            "epochs": config.total_epochs, "training": done, "init_sha256": config.init_sha256,
            "train_seconds": training_seconds(run_dir) or train_seconds, "eval_seconds": time.perf_counter() - t0,
            "model": main["model"],  # the weights measured: epoch and SHA-256 of model.safetensors
            "hardware": hardware(device), "spec": run.to_dict(),
            **({"ais": ais} if ais else {}),  # the AIS settings and images, beside its metrics
        }
        rundir.write_result(run_dir, result)
        return result
    except Exception as e:  # noqa: BLE001 - any failure of one run is reported, and the others go on
        error = {"name": run.name, "status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0],
                 "traceback": traceback.format_exc()}
        if is_device_failure(e):
            error["device_failure"] = True
        rundir.write_error(run_dir, error)
        return error


def _ais_metrics(run_dir: Path, ev: dict, device: str, data_dir: str | None) -> dict:
    """AIS on the first ``ev["ais"]["test_subset"]`` test images (all of L_k's by default), and how far
    above L_k it lies on the same images: ``ais_gap`` = mean(log p-hat_AIS - L_k) with its paired s.e."""
    from ..ais import ais_evaluate
    from ..evaluate import paired_difference

    settings = dict(ev["ais"])
    n = settings.pop("test_subset", ev["test_subset"])
    result = ais_evaluate(run_dir, **settings, test_subset=n, seed=ev["seed"], device=device, data_dir=data_dir)
    _, ais = rundir.read_evaluation(run_dir, Path(result["files"]["json"]).stem)
    _, l_k = rundir.read_evaluation(run_dir, rundir.eval_name(ev["k"], ev["seed"], ev["test_subset"]))
    gap, gap_stderr = paired_difference(ais, l_k[: len(ais)])
    return {"metrics": {"nll_ais": result["nll"], "nll_ais_stderr": result["nll_stderr"], "ais_gap": gap,
                        "ais_gap_stderr": gap_stderr},
            "n_test": result["n_test"], **{k: result[k] for k in ("steps", "chains", "leapfrog", "schedule", "initial")}}


# ----------------------------------------------------------------------------- planning
def estimate_seconds(spec: RunSpec) -> float:
    """Rough seconds one run takes on a 2-core CPU (training + evaluation); for planning only."""
    c = spec.config
    n_train = min(c["train_subset"] or 10**9, TRAIN_IMAGES.get(c["dataset"], 50000))
    train = spec.total_epochs * n_train * (TRAIN_BASE + TRAIN_PER_SAMPLE * c["k"]) * ESTIMATOR_COST.get(c["estimator"], 1.0)
    n_test = min(spec.eval["test_subset"] or 10**9, TEST_IMAGES.get(c["dataset"], 10000))
    evaluation = n_test * EVAL_PER_SAMPLE * (spec.eval["k"] + sum(spec.eval["bound_ks"]))
    return train + evaluation + RUN_OVERHEAD


@dataclass
class PlannedRun:
    spec: RunSpec
    state: str  # done; partial (a checkpoint to resume); new (including a continued run that must start again)
    seconds: float  # estimated cost if it has to run
    missing_data: list[str] = field(default_factory=list)  # data files not present locally (a download would fetch them)


def _state(spec: RunSpec, run_dir: Path, dependency_state: str | None) -> str:
    """done, partial or new; raises ValueError for a folder that holds another run."""
    if dependency_state not in (None, "done"):
        return "new"  # its dependency trains (again) first, so it starts again from the new model
    if finished_result(run_dir, spec):
        return "done"
    if not (run_dir / rundir.CONFIG).is_file():
        return "new"
    try:
        old = rundir.read_config(run_dir)
    except (CheckpointError, ValueError, TypeError):
        return "new"  # unreadable: train_or_resume starts it again
    new = spec.train_config(run_dir)
    # a changed starting model (init_sha256) restarts the run instead
    diff = [k for k in rundir.changed_settings(old, new) if k != "init_sha256"]
    if diff:
        raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                         f"use another --out for another protocol")
    if spec.after and old.init_sha256 != rundir.dependency_digest(run_dir, spec.after):
        return "new"
    try:
        trained = trained_epochs(run_dir)
    except CheckpointError:
        return "new"
    if trained > new.total_epochs:
        raise ValueError(f"{run_dir} has trained {trained} epochs, more than the {new.total_epochs} asked for; "
                         f"use another --out")
    return "partial"


def plan(runs: list[RunSpec], out_dir: str | os.PathLike, data_dir: str | None = None) -> list[PlannedRun]:
    """Each run's state in ``out_dir``, its estimated cost and the files of its dataset that are not
    present locally (in ``data_dir``, ``$IWAE_DATA_DIR`` or the cache; nothing is read or downloaded);
    a run comes after the run it continues.

    Raises:
        ValueError: a run directory holds another run (other settings than its length: another
            protocol or experiment), or more epochs than asked for.
    """
    states: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    out = []
    for spec in runs:
        states[spec.name] = _state(spec, Path(out_dir) / "runs" / spec.name, states.get(spec.after) if spec.after else None)
        dataset = spec.config["dataset"]
        if dataset not in missing:
            missing[dataset] = missing_files(dataset, data_dir or spec.config.get("data_dir"))
        out.append(PlannedRun(spec, states[spec.name], estimate_seconds(spec), missing[dataset]))
    return out


def _format_seconds(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


def plan_text(title: str, planned: list[PlannedRun], out_dir: str | os.PathLike) -> str:
    """What ``iwae reproduce --dry-run`` prints for :func:`plan`'s runs: one line per run (state,
    settings, estimated cost, missing data), the cost of what is left, and which data is missing."""
    out_dir = Path(out_dir)
    lines = [f"{title}: {len(planned)} runs in {out_dir / 'runs'}"]
    width = max(len(p.spec.name) for p in planned)
    for p in planned:
        c = p.spec.config
        after = f", continues {p.spec.after}" if p.spec.after else ""
        # a run whose data is missing cannot start until it is downloaded (or found): say so
        no_data = ", its data is missing" if p.missing_data and p.state != "done" else ""
        lines.append(f"  {p.spec.name:<{width}}  {p.state:<7}  {c['objective']} k={c['k']}, {c['layers']} layer(s), "
                     f"{p.spec.total_epochs} epochs, L_{p.spec.eval['k']} on {p.spec.eval['test_subset'] or 'all'} "
                     f"test images{after}  ~{_format_seconds(p.seconds)}{no_data}")
    todo = sum(p.seconds for p in planned if p.state != "done")
    lines.append(f"estimated cost of what is left: {_format_seconds(todo)} of one run at a time on a 2-core CPU "
                 f"(rough; divide by --workers on a machine with the cores for them)")
    missing = sorted({c for p in planned if p.state != "done" for c in p.missing_data})
    if missing:
        lines.append(f"data missing for {sum(bool(p.missing_data) and p.state != 'done' for p in planned)} run(s) "
                     f"({', '.join(missing)}): they download it when they start, or fail offline; "
                     f"pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- executors
_WORKER: dict = {}  # this worker process's device, threads and progress (set by _init_worker)
DEVICE_FAILURE_EXIT = 75  # a worker's exit status after a device failure (EX_TEMPFAIL: try again)


def _init_worker(slots, threads: int, device: str, progress: bool = False) -> None:
    """Runs once in each worker process: takes a slot, pins to its cores or picks its GPU."""
    import torch

    slot = slots.get()
    if device == "cuda":
        _WORKER["device"] = f"cuda:{slot % max(1, torch.cuda.device_count())}"
    else:
        _WORKER["device"] = device
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if cores:  # a contiguous share of the cores: workers do not contend for the same ones
            mine = [cores[(slot * threads + i) % len(cores)] for i in range(threads)]
            os.sched_setaffinity(0, mine)
    _WORKER["threads"], _WORKER["progress"] = threads, progress
    torch.set_num_threads(threads)


def _pool_run(spec: dict, run_dir: str, data_dir: str | None) -> dict:
    result = execute_run(spec, run_dir, data_dir, _WORKER["device"], _WORKER["threads"],
                         _WORKER.get("progress", False))
    if result.get("device_failure"):
        # out of memory or a CUDA error: this process's CUDA context may be unusable for any later
        # run, so it exits like a dead worker; the pool is rebuilt and the run retried alone, and
        # its error.json (written above) says why if it fails again
        sys.stderr.flush()
        os._exit(DEVICE_FAILURE_EXIT)
    return result


class _Inline:
    """Runs each run when submitted, in this process (one worker): progress bars, plain tracebacks."""

    def __init__(self, device: str, threads: int, progress: bool, splits=None):
        self.device, self.threads, self.progress, self.splits = device, threads, progress, splits

    def submit(self, spec: dict, run_dir: str, data_dir: str | None) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(execute_run(spec, run_dir, data_dir, self.device, self.threads, self.progress,
                                      self.splits))
        return future

    def shutdown(self) -> None:
        pass


class _Pool:
    """Spawned worker processes, each pinned to its share of the cores (or taking a GPU in turn).

    A worker that dies (killed, out of memory) breaks a ProcessPoolExecutor for every run in it:
    :meth:`restart` starts a fresh pool so the reproduction can go on.
    """

    def __init__(self, workers: int, threads: int, device: str, progress: bool = False):
        self.workers, self.threads, self.device, self.progress = workers, threads, device, progress
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        slots = ctx.Queue()
        for i in range(self.workers):
            slots.put(i)
        self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                           initargs=(slots, self.threads, self.device, self.progress))

    def submit(self, spec: dict, run_dir: str, data_dir: str | None) -> cf.Future:
        return self.pool.submit(_pool_run, spec, run_dir, data_dir)

    def restart(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._start()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _device_failure_written(run_dir: Path) -> dict | None:
    """The error.json a worker wrote before it exited for a device failure (see _pool_run); None if
    there is none: the worker died of something else. (_run_all removes it before each attempt.)"""
    error = rundir.read_error(run_dir)
    return error if error is not None and error.get("device_failure") else None


def _ray_task(spec: dict, files: dict[str, bytes], dependency: dict[str, bytes], data_dir: str | None,
              device: str, threads: int) -> tuple[dict, dict[str, bytes]]:
    """A run on a Ray worker: rebuild its folder (and its dependency's model) in a temporary
    folder, execute it there, and return its result and files."""
    with tempfile.TemporaryDirectory(prefix="iwae-ray-") as tmp:
        runs = Path(tmp) / "runs"
        run_dir = runs / spec["name"]
        run_dir.mkdir(parents=True)
        rundir.write_files(run_dir, files)
        if spec.get("after"):
            rundir.write_files(runs / spec["after"], dependency)
        result = execute_run(spec, str(run_dir), data_dir, device, threads)
        return result, rundir.read_files(run_dir)


def _probe(address: str | None, seconds: float = 10.0) -> None:
    """Fails fast, with a clear message, when a ``host:port`` Ray address does not answer (Ray itself
    waits minutes for an unreachable head node)."""
    if not address or address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray wants auto, local or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as e:
        raise ValueError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}") from None


class _Ray:
    """Submits runs as Ray tasks and writes what they return into the output folder."""

    def __init__(self, address: str | None, cpus: int, threads: int, device: str):
        try:
            import ray
        except ImportError:
            raise ValueError('--ray needs Ray: pip install "iwae[ray]"') from None
        self.ray = ray
        if not ray.is_initialized():
            _probe(address)
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ValueError(f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if device == "cuda":
            # a task asking for a GPU that no node has is never scheduled: Ray would wait for ever
            available = ray.cluster_resources().get("GPU", 0)
            if available < 1:
                raise ValueError(f"--device cuda, but the Ray cluster at {address or 'a new local instance'} has no "
                                 f"GPU (ray.cluster_resources() lists {available:g}); its tasks would wait for ever: "
                                 f"add nodes with GPUs or use --device cpu")
        gpus = 1 if device == "cuda" else 0
        # max_calls=1 on a GPU (Ray's default there, said anyway): a worker whose CUDA context a
        # failed run may have poisoned serves no other run
        options = {"max_calls": 1} if gpus else {}
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0, **options)(_ray_task)
        self.threads, self.device = threads, device
        self.refs: list = []

    def submit(self, spec: dict, run_dir: str, data_dir: str | None) -> cf.Future:
        run_dir = Path(run_dir)
        files = {}
        if rundir.has_checkpoint(run_dir):  # resume on the worker
            files = rundir.read_files(run_dir, without_results=True)
        dependency = {}
        if spec.get("after"):
            dependency = rundir.model_bytes(run_dir.parent / spec["after"])
        ref = self.remote.remote(spec, files, dependency, data_dir, self.device, self.threads)
        self.refs.append(ref)
        future: cf.Future = cf.Future()

        def gather(ray_future: cf.Future) -> None:
            try:
                result, out_files = ray_future.result()
                rundir.write_files(run_dir, out_files)
                future.set_result(result)
            except BaseException as e:  # noqa: BLE001 - a lost task fails its run only
                future.set_exception(e)

        ref.future().add_done_callback(gather)
        return future

    def shutdown(self) -> None:
        for ref in self.refs:  # after an interruption: stop the tasks still running (finished ones are unaffected)
            self.ray.cancel(ref, force=True)


# ----------------------------------------------------------------------------- the reproduction
@dataclass
class Summary:
    """What a reproduction did: per run its status (done, skipped, failed, blocked) and result or error."""

    out_dir: Path
    status: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    batches: list[list[str]] = field(default_factory=list)  # the runs trained together as one batched model

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.status.items() if s in ("failed", "blocked")]


def summary_text(name: str, summary: Summary) -> tuple[str, list[str]]:
    """What ``iwae reproduce`` prints when it ends: the counts of each status, and one line per
    failed or blocked run with its error."""
    counts = {s: list(summary.status.values()).count(s) for s in ("done", "skipped", "failed", "blocked")}
    text = (f"{name}: {counts['done']} run(s) done, {counts['skipped']} finished before, {counts['failed']} failed, "
            f"{counts['blocked']} blocked; see {summary.out_dir / 'reproduction.json'}; "
            f"report with: iwae report {summary.out_dir}")
    return text, [f"  {n}: {summary.results.get(n, {}).get('error', 'its dependency failed')}" for n in summary.failed]


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _describe(workers: int, threads: int, device: str, ray: str | None, cpus: int) -> str:
    if ray:
        return f"ray ({ray}): one task per run, {cpus} CPU{'s' if cpus > 1 else ''}" + \
            (" and 1 GPU" if device == "cuda" else "") + " each"
    if device == "cuda":
        return f"local: {workers} worker process{'es' if workers > 1 else ''} on the GPUs in turn"
    return f"local: {workers} worker process{'es' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


def reproduce(
    experiment: str | os.PathLike | Experiment,
    out_dir: str | os.PathLike,
    *,
    protocol: str = "short",
    datasets: list[str] | None = None,
    only: list[str] | None = None,
    overrides: dict | None = None,
    workers: int | None = None,
    threads: int | None = None,
    ray: str | None = None,
    cpus_per_run: int = 1,
    device: str = "cpu",
    data_dir: str | None = None,
    progress: bool = True,
    splits=None,
    batch: bool = True,
) -> Summary:
    """Runs every unfinished run of ``experiment`` under ``protocol`` and records them in ``out_dir``.

    Args:
        experiment: a shipped experiment's name, a path to an experiment file, or an Experiment.
        out_dir: the output folder: ``reproduction.json`` and ``runs/<name>/``.
        protocol: ``short`` or ``paper`` (or any protocol the file defines).
        datasets, only, overrides: see :meth:`iwae.experiments.spec.Experiment.resolve`.
        workers: local worker processes (1: in this process). Default: 1 on CPU, one per GPU on CUDA.
        threads: torch threads per run (default: the cores divided among the workers).
        ray: a Ray address (``auto``, ``host:port``, ``local`` for a new local instance); None: local.
        cpus_per_run: CPUs each Ray task asks for (and its torch threads).
        device: ``cpu`` or ``cuda``.
        data_dir: where the datasets are (else ``$IWAE_DATA_DIR``, the cache, download).
        progress: report each run on stderr (and, with one worker, its epochs).
        splits: a dataset already loaded, used by the runs on it when they run in this process
            (one worker on CPU, no Ray); the others load theirs.
        batch: first train the compatible runs of the experiment together, as one batched model
            each group (:func:`iwae.members.train_members`), then evaluate every run as before;
            with the in-process executor only (one worker on CPU: not worker processes, CUDA or
            Ray, which keep each run in a process of its own). False: each run trains alone
            (``--no-batch``).

    Returns:
        A :class:`Summary`; runs that failed are listed in ``summary.failed``.
    """
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    runs = exp.resolve(protocol, datasets=datasets, only=only, overrides=overrides)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not ray:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but CUDA is not available on this machine")
        workers = torch.cuda.device_count() if workers is None else workers
    workers = 1 if workers is None else workers
    if workers < 1 or cpus_per_run < 1 or (threads is not None and threads < 1):
        raise ValueError("--workers, --threads and --cpus-per-run must be >= 1")
    threads = threads or (cpus_per_run if ray else max(1, _cpu_count() // workers))
    out_dir = Path(out_dir)
    # Ray first: a cluster that cannot be reached, or has no GPU for --device cuda, is refused before
    # anything is written
    executor = _Ray(None if ray == "local" else ray, cpus_per_run, threads, device) if ray else None
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)  # one reproduction at a time writes to a folder
    try:
        planned = plan(runs, out_dir)  # refuses a folder of another protocol before anything runs
        if executor is None and workers == 1 and device == "cpu":
            executor = _Inline(device, threads, progress, splits)
        elif executor is None:  # on CUDA even one worker is a process of its own: see _pool_run
            executor = _Pool(workers, threads, device, progress=progress and workers == 1)
        # in this process, as the runs would be: worker processes keep each run apart (a worker that
        # dies takes one run down, a device failure is retried alone), so runs given to them train alone
        batches = _train_batches(planned, out_dir, data_dir, device, threads, progress, splits) \
            if batch and isinstance(executor, _Inline) else []
        summary = _run_all(exp, protocol, overrides, planned, out_dir, executor, data_dir,
                           _describe(workers, threads, device, ray, cpus_per_run), progress)
        summary.batches = batches
        return summary
    finally:
        lock.close()
        _BATCH_TRAINED.clear()


# ----------------------------------------------------------------------------- runs trained as one batched model
_BATCH_TRAINED: dict[str, str] = {}  # run folder -> trained or resumed, by _train_batches in this process


def batch_groups(planned: list[PlannedRun], out_dir: Path, data_dir: str | None = None, device: str = "cpu",
                 threads: int | None = None) -> list[list[PlannedRun]]:
    """The groups of two or more planned runs that may train as one batched model: not done, not
    continuing another run, of one :func:`iwae.members.group_key` (all settings but seed, objective,
    estimator, beta, m, ...), stackable, and standing at the same point (new, or checkpointed at the
    same epoch and step), in the experiment's order."""
    from ..members import group_key, stackable

    groups: dict[tuple, list[PlannedRun]] = {}
    for p in planned:
        if p.state == "done" or p.spec.after:
            continue
        run_dir = out_dir / "runs" / p.spec.name
        config = p.spec.train_config(run_dir, data_dir=data_dir, device=device, threads=threads)
        if stackable(config) is not None:
            continue
        point = (0, 0, None)
        if p.state == "partial":
            try:
                meta = rundir.read_checkpoint(run_dir)[1]
                point = (meta.get("epoch"), meta.get("step"), meta.get("epoch_position"))
            except CheckpointError:
                continue  # execute_run decides what to do with it
            if point[0] == config.total_epochs:
                continue  # trained: only its evaluation is left
        groups.setdefault((group_key(config), point), []).append(p)
    return [g for g in groups.values() if len(g) > 1]


def _train_batches(planned: list[PlannedRun], out_dir: Path, data_dir: str | None, device: str, threads: int,
                   progress: bool, splits) -> list[list[str]]:
    """Trains each group of :func:`batch_groups` with :func:`iwae.members.train_members`, so that
    ``execute_run`` finds them trained and only evaluates them; a member that fails (nan or inf) is
    left at its last checkpoint, where ``execute_run`` resumes it alone and reports the failure as
    for any run. Returns the groups' run names."""
    from ..members import train_members

    names = []
    for group in batch_groups(planned, out_dir, data_dir, device, threads):
        configs = [p.spec.train_config(out_dir / "runs" / p.spec.name, data_dir=data_dir, device=device,
                                       threads=threads) for p in group]
        dataset = configs[0].dataset
        data = splits if splits is not None and splits.name == dataset else load_dataset(dataset, data_dir)
        names.append([p.spec.name for p in group])
        if progress:
            print(f"training {', '.join(names[-1])} together as one batched model", file=sys.stderr, flush=True)
        for p in group:
            rundir.clear_error(out_dir / "runs" / p.spec.name)
        try:
            results = train_members(configs, resume=group[0].state == "partial", overwrite=True, progress=progress,
                                    splits=data)
        except Exception as e:  # noqa: BLE001 - the runs then train alone, and execute_run reports their errors
            if progress:
                print(f"  batched training failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      f"the runs train one at a time", file=sys.stderr, flush=True)
            names.pop()
            continue
        for p, r in zip(group, results):
            if r.status == "trained":
                _BATCH_TRAINED[str(out_dir / "runs" / p.spec.name)] = "resumed" if p.state == "partial" else "trained"
    return names


def _lock(out_dir: Path):
    """An exclusive lock on ``out_dir/.reproduce.lock``, held until the returned file is closed."""
    handle = open(out_dir / ".reproduce.lock", "w")
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ValueError(f"another iwae reproduce is writing to {out_dir}; wait for it to finish or use "
                             f"another --out") from None
    return handle


def _run_all(exp: Experiment, protocol: str, overrides: dict | None, planned: list[PlannedRun], out_dir: Path,
             executor, data_dir: str | None, executor_name: str, progress: bool) -> Summary:
    """Runs the planned runs that are not done, each once its dependency is done, and keeps
    ``reproduction.json`` up to date."""
    summary = Summary(out_dir)
    state = {
        "experiment": exp.name, "title": exp.title, "description": exp.description, "source": exp.source,
        "protocol": {"name": protocol, "description": str(exp.protocols[protocol].get("description", "")).strip(),
                     "settings": exp.protocol_settings(protocol, overrides), "overrides": dict(overrides or {})},
        "published": exp.published_table(), "figures": exp.figures, "compare": exp.comparisons,
        "runs": [{**p.spec.to_dict(), "status": "done" if p.state == "done" else "pending"} for p in planned],
        "started": datetime.now().isoformat(timespec="seconds"), "finished": None, "wall_seconds": None,
        "executor": executor_name, "hardware": hardware("cpu"),
    }
    entry = {r["name"]: r for r in state["runs"]}
    t_start = time.perf_counter()
    earlier_seconds = 0.0
    try:
        before = json.loads((out_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        before = None
    if isinstance(before, dict) and before.get("experiment") == exp.name and before.get("protocol") == state["protocol"]:
        # the same reproduction again (resumed, or another selection of its runs): keep its first start,
        # add up its wall time, and keep the runs an earlier selection ran, in the experiment's order
        state["started"] = before.get("started") or state["started"]
        earlier_seconds = float(before.get("wall_seconds") or 0.0)
        order = [r.name for r in exp.resolve(protocol, overrides=overrides)]
        kept = [r for r in before.get("runs", []) if isinstance(r, dict) and r.get("name") not in entry]
        state["runs"] = sorted(kept + state["runs"],
                               key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))

    def save() -> None:
        with atomic_write(out_dir / STATE_FILE) as f:
            json.dump(state, f, indent=1)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    def record(spec: RunSpec, result: dict) -> None:
        nonlocal finished
        finished += 1
        summary.status[spec.name] = entry[spec.name]["status"] = result["status"]
        summary.results[spec.name] = result
        save()
        if result["status"] == "done":
            m = result["metrics"]
            say(f"[{finished}/{len(planned)}] {spec.name}: NLL {m['nll']:.2f} ± {m['nll_stderr']:.2f}, "
                f"active units {'+'.join(map(str, result['active_units']))}, "
                f"{result['train_seconds'] + result['eval_seconds']:.0f} s")
        else:
            say(f"[{finished}/{len(planned)}] {spec.name}: FAILED: {result['error']}")

    def fail(spec: RunSpec, message: str, details: dict | None = None) -> None:
        result = {**(details or {}), "name": spec.name, "status": "failed", "error": message}
        rundir.write_error(out_dir / "runs" / spec.name, result)
        record(spec, result)

    pending = []
    finished = 0
    for p in planned:
        if p.state == "done":
            summary.status[p.spec.name] = "skipped"
            summary.results[p.spec.name] = finished_result(out_dir / "runs" / p.spec.name, p.spec)
            finished += 1
            say(f"{p.spec.name}: finished before, skipped")
        else:
            pending.append(p.spec)
    save()

    running: dict[cf.Future, RunSpec] = {}
    suspects: set[str] = set()  # runs whose worker died: each is run again alone, to find the one that kills it
    retried: set[str] = set()  # Ray runs whose device failed once (out of memory, a CUDA error)
    device_failed: set[str] = set()  # runs whose device failed once in a worker process
    try:
        while pending or running:
            ready = []
            for spec in list(pending):
                dep = summary.status.get(spec.after, "pending") if spec.after else "done"
                if dep in ("failed", "blocked"):
                    pending.remove(spec)
                    summary.status[spec.name] = entry[spec.name]["status"] = "blocked"
                    say(f"{spec.name}: blocked, {spec.after} failed")
                    save()
                elif dep in ("done", "skipped"):
                    ready.append(spec)
            if any(spec.name in suspects for spec in ready):
                ready = [] if running else [next(spec for spec in ready if spec.name in suspects)]
            if isinstance(executor, _Inline):
                ready = ready[:1]  # it runs as it is submitted: one at a time, so each result is reported at once
            for spec in ready:
                # an error.json left now is this attempt's (a worker that exits for a device failure
                # leaves its error there), not an earlier one's
                rundir.clear_error(out_dir / "runs" / spec.name)
                try:
                    future = executor.submit(spec.to_dict(), str(out_dir / "runs" / spec.name), data_dir)
                except cf.process.BrokenProcessPool:
                    # a worker died since the last wait, without this run: the futures still running
                    # report it, and the pool is rebuilt there; with none running, rebuild it now
                    if not running:
                        executor.restart()
                    break
                pending.remove(spec)
                say(f"{spec.name}: {'started' if isinstance(executor, _Inline) else 'submitted'}")
                running[future] = spec
            if not running:
                if pending and not ready:  # nothing can start: should not happen, as every dependency is selected
                    for spec in pending:
                        fail(spec, f"its dependency {spec.after} was neither run nor finished")
                    pending.clear()
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in done:
                spec = running.pop(future)
                try:
                    result = future.result()
                    if result.get("device_failure") and isinstance(executor, _Ray) and spec.name not in retried:
                        retried.add(spec.name)  # each Ray task on a GPU is a fresh process: once more
                        pending.insert(0, spec)
                        say(f"{spec.name}: {result['error']}; running it again")
                    else:
                        record(spec, result)
                except cf.process.BrokenProcessPool:
                    own = _device_failure_written(out_dir / "runs" / spec.name)
                    if own and spec.name in device_failed:  # its device failed again, running alone
                        fail(spec, f"{own['error']} (twice, the second time running alone)", own)
                    elif own:  # its device failed: its worker exited (see _pool_run); once more, alone
                        device_failed.add(spec.name)
                        broken = True
                        suspects.add(spec.name)
                        pending.insert(0, spec)
                    elif spec.name in suspects:  # it ran alone: its own worker died
                        fail(spec, "its worker process died (killed, or out of memory?) twice, the second time "
                                   "running alone")
                    else:
                        broken = True
                        suspects.add(spec.name)
                        pending.insert(0, spec)
                except Exception as e:  # noqa: BLE001 - a lost task fails its run only
                    fail(spec, f"{type(e).__name__}: {e}".splitlines()[0])
            if broken:
                for spec in running.values():  # the whole pool went down with the dead worker
                    suspects.add(spec.name)
                    pending.insert(0, spec)
                running.clear()
                say("a worker process died; starting new workers and running the runs it took down again, "
                    "one at a time")
                executor.restart()
    finally:
        executor.shutdown()
        state["finished"] = datetime.now().isoformat(timespec="seconds")
        state["wall_seconds"] = round(earlier_seconds + time.perf_counter() - t_start, 1)
        save()
    return summary
