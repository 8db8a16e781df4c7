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

The engine is four modules: :mod:`.plan` (each run's state and cost, which runs may train together),
:mod:`.execute` (one run: train, evaluate, write its result), :mod:`.executors` (where runs execute:
in this process, in worker processes, on Ray) and this one (the reproduction: the order of the runs,
their dependencies, retries and ``reproduction.json``).
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401 - cf.process.BrokenProcessPool below
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from .. import rundir, strict_json
from ..checkpoint import atomic_write
from ..errors import CheckpointError
from ..members import batch_by_default
from ..rundir.lock import acquire_lock, holder_text, release_lock
from ..runtime import free_cores
from .execute import _BATCH_TRAINED, _train_batches, execute_run, hardware, is_device_failure
from .executors import _device_failure_written, _Inline, _Pool, _Ray
from .plan import PlannedRun, estimate_seconds, finished_result, plan, plan_text
from .spec import Experiment, RunSpec, load_experiment

__all__ = [
    "reproduce",
    "plan",
    "execute_run",
    "estimate_seconds",
    "Summary",
    "STATE_FILE",
    "is_device_failure",
    "plan_text",
    "summary_text",
    "finished_result",
    "hardware",
]

STATE_FILE = "reproduction.json"
REPRODUCE_LOCK = ".reproduce.lock"  # one reproduction at a time writes to an output folder


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
    text = (
        f"{name}: {counts['done']} run(s) done, {counts['skipped']} finished before, {counts['failed']} failed, "
        f"{counts['blocked']} blocked; see {summary.out_dir / 'reproduction.json'}; "
        f"report with: iwae report {summary.out_dir}"
    )
    return text, [f"  {n}: {summary.results.get(n, {}).get('error', 'its dependency failed')}" for n in summary.failed]


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _describe(workers: int, threads: int, device: str, ray: str | None, cpus: int) -> str:
    if ray:
        return (
            f"ray ({ray}): one task per run, {cpus} CPU{'s' if cpus > 1 else ''}"
            + (" and 1 GPU" if device == "cuda" else "")
            + " each"
        )
    if device == "cuda":
        return f"local: {workers} worker process{'es' if workers > 1 else ''} on the GPUs in turn"
    return (
        f"local: {workers} worker process{'es' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    )


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
    batch: bool | None = None,
) -> Summary:
    """Runs every unfinished run of ``experiment`` under ``protocol`` and records them in ``out_dir``.

    Args:
        experiment: a shipped experiment's name, a path to an experiment file, or an Experiment.
        out_dir: the output folder: ``reproduction.json`` and ``runs/<name>/``.
        protocol: ``short`` or ``paper`` (or any protocol the file defines).
        datasets, only, overrides: see :meth:`iwae.experiments.spec.Experiment.resolve`.
        workers: local worker processes (1: in this process). Default: 1 on CPU, one per GPU on CUDA.
        threads: torch threads per run (default: the free cores, by the load average, divided among the workers).
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
            (``--no-batch``). None (the default): as :func:`iwae.members.batch_by_default` decides
            for ``device`` (alone on the CPU, where it measured as fast).

    Returns:
        A :class:`Summary`; runs that failed are listed in ``summary.failed``.
    """
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    runs = exp.resolve(protocol, datasets=datasets, only=only, overrides=overrides)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not ray:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but CUDA is not available on this machine")
        workers = torch.cuda.device_count() if workers is None else workers
    workers = 1 if workers is None else workers
    if workers < 1 or cpus_per_run < 1 or (threads is not None and threads < 1):
        raise ValueError("--workers, --threads and --cpus-per-run must be >= 1")
    # each worker's share of the cores, of those the load average leaves free where this machine runs them
    threads = threads or (cpus_per_run if ray else max(1, min(_cpu_count(), free_cores()) // workers))
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
        batches = (
            _train_batches(planned, out_dir, data_dir, device, threads, progress, splits)
            if (batch_by_default(device) if batch is None else batch) and isinstance(executor, _Inline)
            else []
        )
        summary = _run_all(
            exp,
            protocol,
            overrides,
            planned,
            out_dir,
            executor,
            data_dir,
            _describe(workers, threads, device, ray, cpus_per_run),
            progress,
        )
        summary.batches = batches
        return summary
    finally:
        lock.close()
        _BATCH_TRAINED.clear()


class _lock:
    """An exclusive lock on ``out_dir/.reproduce.lock`` (:func:`iwae.rundir.lock.acquire_lock`: refused
    in one line naming the process that holds it), held until :meth:`close`. Not the run folders'
    lock: a report may be written while a reproduction runs, and runs are locked one by one."""

    def __init__(self, out_dir: Path):
        try:
            self.fd = acquire_lock(out_dir, REPRODUCE_LOCK)
        except rundir.FolderBusy:
            raise rundir.FolderBusy(
                f"another iwae reproduce is writing to {out_dir} "
                f"({holder_text(out_dir / REPRODUCE_LOCK)}); wait for it to finish or use another --out"
            ) from None

    def close(self) -> None:
        release_lock(self.fd)


def _run_all(
    exp: Experiment,
    protocol: str,
    overrides: dict | None,
    planned: list[PlannedRun],
    out_dir: Path,
    executor,
    data_dir: str | None,
    executor_name: str,
    progress: bool,
) -> Summary:
    """Runs the planned runs that are not done, each once its dependency is done, and keeps
    ``reproduction.json`` up to date."""
    summary = Summary(out_dir)
    state = {
        "experiment": exp.name,
        "title": exp.title,
        "description": exp.description,
        "source": exp.source,
        "protocol": {
            "name": protocol,
            "description": str(exp.protocols[protocol].get("description", "")).strip(),
            "settings": exp.protocol_settings(protocol, overrides),
            "overrides": dict(overrides or {}),
        },
        "published": exp.published_table(),
        "figures": exp.figures,
        "compare": exp.comparisons,
        "runs": [{**p.spec.to_dict(), "status": "done" if p.state == "done" else "pending"} for p in planned],
        "started": datetime.now().isoformat(timespec="seconds"),
        "finished": None,
        "wall_seconds": None,
        "executor": executor_name,
        "hardware": hardware("cpu"),
    }
    entry = {r["name"]: r for r in state["runs"]}
    t_start = time.perf_counter()
    earlier_seconds = 0.0
    try:
        before = json.loads((out_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        before = None
    if (
        isinstance(before, dict)
        and before.get("experiment") == exp.name
        and before.get("protocol") == state["protocol"]
    ):
        # the same reproduction again (resumed, or another selection of its runs): keep its first start,
        # add up its wall time, and keep the runs an earlier selection ran, in the experiment's order
        state["started"] = before.get("started") or state["started"]
        earlier_seconds = float(before.get("wall_seconds") or 0.0)
        order = [r.name for r in exp.resolve(protocol, overrides=overrides)]
        kept = [r for r in before.get("runs", []) if isinstance(r, dict) and r.get("name") not in entry]
        state["runs"] = sorted(
            kept + state["runs"], key=lambda r: order.index(r["name"]) if r["name"] in order else len(order)
        )

    def save() -> None:
        with atomic_write(out_dir / STATE_FILE) as f:
            strict_json.dump(state, f, indent=1)

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
            say(
                f"[{finished}/{len(planned)}] {spec.name}: NLL {m['nll']:.2f}"
                + ("" if m["nll_stderr"] is None else f" ± {m['nll_stderr']:.2f}")
                + ", "
                f"active units {'+'.join(map(str, result['active_units']))}, "
                f"{result['train_seconds'] + result['eval_seconds']:.0f} s"
            )
        else:
            say(f"[{finished}/{len(planned)}] {spec.name}: FAILED: {result['error']}")

    def fail(spec: RunSpec, message: str, details: dict | None = None) -> None:
        result = {**(details or {}), "name": spec.name, "status": "failed", "error": message}
        try:
            with rundir.writing(out_dir / "runs" / spec.name, rundir.REPRODUCE):
                rundir.write_error(out_dir / "runs" / spec.name, result)
        except (rundir.FolderBusy, CheckpointError):  # another process writes there (or it cannot be written)
            pass
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
                inline = isinstance(executor, _Inline)
                if inline:  # it runs inside submit(): said before, so that its epoch lines follow this line
                    trained = str(out_dir / "runs" / spec.name) in _BATCH_TRAINED
                    say(f"{spec.name}: {'trained above as one batched model; evaluating' if trained else 'started'}")
                try:
                    future = executor.submit(spec.to_dict(), str(out_dir / "runs" / spec.name), data_dir)
                except cf.process.BrokenProcessPool:
                    # a worker died since the last wait, without this run: the futures still running
                    # report it, and the pool is rebuilt there; with none running, rebuild it now
                    if not running:
                        executor.restart()
                    break
                pending.remove(spec)
                if not inline:
                    say(f"{spec.name}: submitted")
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
                        fail(
                            spec,
                            "its worker process died (killed, or out of memory?) twice, the second time running alone",
                        )
                    else:
                        broken = True
                        suspects.add(spec.name)
                        pending.insert(0, spec)
                except Exception as e:
                    fail(spec, f"{type(e).__name__}: {e}".splitlines()[0])
            if broken:
                for spec in running.values():  # the whole pool went down with the dead worker
                    suspects.add(spec.name)
                    pending.insert(0, spec)
                running.clear()
                say(
                    "a worker process died; starting new workers and running the runs it took down again, one at a time"
                )
                executor.restart()
    finally:
        executor.shutdown()
        state["finished"] = datetime.now().isoformat(timespec="seconds")
        state["wall_seconds"] = round(earlier_seconds + time.perf_counter() - t_start, 1)
        save()
    return summary
