"""Planning a reproduction: each run's state in its folder (done, partial, new), its estimated cost, the
data it is missing, and which runs may train together as one batched model (:func:`batch_groups`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import rundir
from ..data import missing_files
from ..errors import CheckpointError
from ..estimators import ESTIMATOR_TABLE
from ..members import group_key, stackable
from ..rundir import trained_epochs
from .spec import RunSpec

__all__ = ["plan", "plan_text", "PlannedRun", "estimate_seconds", "finished_result", "batch_groups", "ESTIMATOR_COST"]

# Rough costs measured on a 2-core CPU (torch 2.13, 2 threads, one run at a time), for --dry-run:
# training seconds per example = TRAIN_BASE + TRAIN_PER_SAMPLE * k (batch 20, Burda's 1-layer model);
# evaluation seconds per test image and sample of L_k, and a fixed cost per run (loading the data for
# training and for each evaluation, checkpoints, active units).
TRAIN_BASE, TRAIN_PER_SAMPLE, EVAL_PER_SAMPLE, RUN_OVERHEAD = 1.9e-4, 1.05e-5, 5e-6, 20.0
ESTIMATOR_COST = {name: e.cost for name, e in ESTIMATOR_TABLE.items()}  # from the estimator table
TRAIN_IMAGES = {
    "mnist": 59600,
    "fashion-mnist": 59600,
    "binarized-mnist": 50000,
    "omniglot": 23000,
    "mnist-vamp": 50000,
    "caltech101": 4100,
    "frey": 1565,
}
TEST_IMAGES = {
    "mnist": 10000,
    "fashion-mnist": 10000,
    "binarized-mnist": 10000,
    "omniglot": 8070,
    "mnist-vamp": 10000,
    "caltech101": 2307,
    "frey": 200,
}
# the cost of a sample relative to Burda's 1-layer MLP: the multiply-adds of one sample's pass, about 3 times
# for the VAE of GatedDense(300) blocks and 6 times for the two-level HVAE (of either network)
MODEL_COST = {("vae", "gated"): 3.0, ("hvae", "mlp"): 6.0, ("hvae", "gated"): 6.0}


def finished_result(run_dir: Path, spec: RunSpec) -> dict | None:
    """The run's result.json if it is finished under ``spec`` (:func:`iwae.rundir.run_status`), else None."""
    return rundir.finished_result(run_dir, spec.to_dict())


def estimate_seconds(spec: RunSpec) -> float:
    """Rough seconds one run takes on a 2-core CPU (training + evaluation); for planning only."""
    c = spec.config
    model = MODEL_COST.get((c.get("model", "vae"), c["network"]), 1.0)
    n_train = min(c["train_subset"] or 10**9, TRAIN_IMAGES.get(c["dataset"], 50000))
    train = (
        spec.total_epochs
        * n_train
        * (TRAIN_BASE + TRAIN_PER_SAMPLE * c["k"])
        * ESTIMATOR_COST.get(c["estimator"], 1.0)
        * model
    )
    n_test = min(spec.eval["test_subset"] or 10**9, TEST_IMAGES.get(c["dataset"], 10000))
    evaluation = n_test * EVAL_PER_SAMPLE * (spec.eval["k"] + sum(spec.eval["bound_ks"])) * model
    return train + evaluation + RUN_OVERHEAD


@dataclass
class PlannedRun:
    spec: RunSpec
    state: str  # done; partial (a checkpoint to resume); new (including a continued run that must start again)
    seconds: float  # estimated cost if it has to run
    missing_data: list[str] = field(
        default_factory=list
    )  # data files not present locally (a download would fetch them)


def _state(spec: RunSpec, run_dir: Path, dependency_state: str | None) -> str:
    """done, partial or new; raises ValueError for a folder that holds another run, or that a
    reproduction did not make and may not write into (a link, someone else's files)."""
    _check_ours(run_dir)
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
        raise ValueError(
            f"{run_dir} holds a run with other settings ({', '.join(diff)}); use another --out for another protocol"
        )
    if spec.after and old.init_sha256 != rundir.dependency_digest(run_dir, spec.after):
        return "new"
    try:
        trained = trained_epochs(run_dir)
    except CheckpointError:
        return "new"
    if trained > new.total_epochs:
        raise ValueError(
            f"{run_dir} has trained {trained} epochs, more than the {new.total_epochs} asked for; use another --out"
        )
    return "partial"


def _check_ours(run_dir: Path) -> None:
    """Refuses, before anything runs, a run folder the engine may not write into: a symbolic link (it
    would write, or delete, where the link points), or a folder holding files but no run that a
    reproduction did not make (:func:`iwae.rundir.check_replaceable`). A run folder of an older
    iwae (config.yaml, no mark) is resumed, but not replaced."""
    if run_dir.is_symlink() or not (run_dir / rundir.CONFIG).is_file():
        rundir.check_replaceable(run_dir, rundir.REPRODUCE)


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
        states[spec.name] = _state(
            spec, Path(out_dir) / "runs" / spec.name, states.get(spec.after) if spec.after else None
        )
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
        lines.append(
            f"  {p.spec.name:<{width}}  {p.state:<7}  {c['objective']} k={c['k']}, {c['layers']} layer(s), "
            f"{p.spec.total_epochs} epochs, L_{p.spec.eval['k']} on {p.spec.eval['test_subset'] or 'all'} "
            f"test images{after}  ~{_format_seconds(p.seconds)}{no_data}"
        )
    todo = sum(p.seconds for p in planned if p.state != "done")
    lines.append(
        f"estimated cost of what is left: {_format_seconds(todo)} of one run at a time on a 2-core CPU "
        f"(rough; divide by --workers on a machine with the cores for them)"
    )
    missing = sorted({c for p in planned if p.state != "done" for c in p.missing_data})
    if missing:
        lines.append(
            f"data missing for {sum(bool(p.missing_data) and p.state != 'done' for p in planned)} run(s) "
            f"({', '.join(missing)}): they download it when they start, or fail offline; "
            f"pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it"
        )
    return "\n".join(lines)


def batch_groups(
    planned: list[PlannedRun],
    out_dir: Path,
    data_dir: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> list[list[PlannedRun]]:
    """The groups of two or more planned runs that may train as one batched model: not done, not
    continuing another run, of one :func:`iwae.members.group_key` (all settings but seed, objective,
    estimator, beta, m, ...), stackable, and standing at the same point (new, or checkpointed at the
    same epoch and step), in the experiment's order."""
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
