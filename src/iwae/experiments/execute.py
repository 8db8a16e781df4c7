"""One run of a reproduction: train it (resuming its checkpoint), evaluate it (L_k, further bounds, AIS),
write its result.json; and the groups of runs trained first as one batched model
(:func:`iwae.members.train_members`)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from .. import members, rundir
from ..ais import ais_evaluate
from ..data import load_dataset
from ..errors import CheckpointError, WriteError
from ..evaluate import evaluate, paired_difference
from ..rundir import model_sha256, training_seconds
from ..train import train_or_resume
from .plan import PlannedRun, batch_groups
from .spec import RunSpec

__all__ = ["execute_run", "hardware", "is_device_failure"]


def hardware(device: str = "cpu") -> dict:
    """Where a run ran: host, CPU model, the cores it may use, torch threads, device (and GPU name), torch and
    CUDA versions (the same seed gives other samples on CPU and CUDA)."""
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
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": cores,
        "threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def is_device_failure(error: BaseException) -> bool:
    """True for an error of the device rather than of the run: CUDA out of memory, or a CUDA error.

    Out of memory may pass when the run is retried alone (not sharing its GPU); a CUDA error (an
    illegal memory access, a launch failure) is sticky, it poisons the process's CUDA context for
    every later run. Either way the run's worker process must go, as if it had died.
    """
    kinds = tuple(
        t
        for t in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(torch, "AcceleratorError", None),
            getattr(torch.cuda, "OutOfMemoryError", None),
            getattr(torch.cuda, "CudaError", None),
        )
        if isinstance(t, type)
    )
    if isinstance(error, kinds):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("CUDA error" in message or "CUDA out of memory" in message)


def execute_run(
    spec: dict,
    run_dir: str,
    data_dir: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = False,
    splits=None,
) -> dict:
    """Trains (or resumes) and evaluates one run in ``run_dir``; writes and returns its result.

    The run's folder is locked while it executes (:func:`iwae.rundir.writing`, as ``iwae reproduce``,
    which replaces only folders a reproduction created); a folder another process is writing to
    fails the run, and nothing is written into it.

    A continued run records the SHA-256 of the model it starts from; if its folder was started from
    another model (the dependency was trained again since), it starts again from the new one.
    Never raises for a failing run: the error is written to ``error.json`` and returned as
    ``{"name", "status": "failed", "error", "traceback"}``, so the other runs go on. A failure of
    the device (:func:`is_device_failure`) is marked ``"device_failure": True``: the worker pool and
    Ray then retry the run once, in a fresh process. ``splits``: the run's dataset already loaded
    (in this process; else it is loaded from ``data_dir``).
    """
    try:
        with rundir.writing(run_dir, rundir.REPRODUCE):
            return _execute_run(spec, run_dir, data_dir, device, threads, progress, splits)
    except (rundir.FolderBusy, WriteError) as e:  # not its folder to write: no error.json either
        return {"name": spec.get("name"), "status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}


def _execute_run(
    spec: dict, run_dir: str, data_dir: str | None, device: str, threads: int | None, progress: bool, splits
) -> dict:
    run = RunSpec.from_dict(spec)
    run_dir = Path(run_dir)
    try:
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
                rundir.delete(run_dir)  # started from the old model: train it again from the new (if ours to delete)
        if splits is None or (splits.name, splits.binarization, splits.dequantize) != (
            config.dataset,
            config.binarization,
            config.dequantize,
        ):
            splits = config.load_data(data_dir)  # once: training and every evaluation share it
        t0 = time.perf_counter()
        done = train_or_resume(config, splits=splits, progress=progress)
        if done == "trained before":  # trained just now with other runs as one batched model (_train_batches)
            done = _BATCH_TRAINED.pop(str(run_dir), done)
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = run.eval
        main = evaluate(
            run_dir, splits=splits, k=ev["k"], test_subset=ev["test_subset"], seed=ev["seed"], device=device
        )
        metrics = {"nll": main["nll"], "nll_stderr": main["nll_stderr"], "log_p_hat": -main["nll"]}
        if main.get("bits_per_dim") is not None:  # a code length (discrete or dequantised): also in bits/dim
            metrics["bits_per_dim"] = main["bits_per_dim"]
            stderr, ratio = main["nll_stderr"], main["bits_per_dim"] / main["nll_discrete"]
            metrics["bits_per_dim_stderr"] = None if stderr is None else stderr * ratio  # None: one test image
        for k in ev["bound_ks"]:
            bound = evaluate(run_dir, splits=splits, k=k, test_subset=ev["test_subset"], seed=ev["seed"], device=device)
            metrics[f"iwae{k}"] = -bound["nll"]
            metrics[f"iwae{k}_stderr"] = bound["nll_stderr"]
            metrics["neg_kl" if len(ev["bound_ks"]) == 1 else f"neg_kl{k}"] = main["nll"] - bound["nll"]
        ais = _ais_metrics(run_dir, ev, device, data_dir) if ev.get("ais") else None
        if ais:
            metrics.update(ais.pop("metrics"))
        result = {
            "name": run.name,
            "status": "done",
            "metrics": metrics,
            "active_units": main["active_units_per_layer"],
            "n_test": main["n_test"],
            "eval_k": ev["k"],
            "epochs": config.total_epochs,
            "training": done,
            # alone, or batched with which runs: the two differ by float rounding that training amplifies
            "trained_as": rundir.trained_as(run_dir),
            "init_sha256": config.init_sha256,
            "train_seconds": training_seconds(run_dir) or train_seconds,
            "eval_seconds": time.perf_counter() - t0,
            "model": main["model"],  # the weights measured: epoch and SHA-256 of model.safetensors
            # the images measured: which, how binarized, their SHA-256; and the data files checked
            "test_images": main["test_images"],
            "data": main["data"],
            "hardware": hardware(device),
            "spec": run.to_dict(),
            **({"ais": ais} if ais else {}),  # the AIS settings and images, beside its metrics
        }
        rundir.write_result(run_dir, result)
        return result
    except Exception as e:
        error = {
            "name": run.name,
            "status": "failed",
            "error": f"{type(e).__name__}: {e}".splitlines()[0],
            "traceback": traceback.format_exc(),
        }
        if is_device_failure(e):
            error["device_failure"] = True
        rundir.write_error(run_dir, error)
        return error


def _ais_metrics(run_dir: Path, ev: dict, device: str, data_dir: str | None) -> dict:
    """AIS on the first ``ev["ais"]["test_subset"]`` test images (all of L_k's by default), and how far
    above L_k it lies on the same images: ``ais_gap`` = mean(log p-hat_AIS - L_k) with its paired s.e."""
    settings = dict(ev["ais"])
    n = settings.pop("test_subset", ev["test_subset"])
    result = ais_evaluate(run_dir, **settings, test_subset=n, seed=ev["seed"], device=device, data_dir=data_dir)
    _, ais = rundir.read_evaluation(run_dir, Path(result["files"]["json"]).stem)
    _, l_k = rundir.read_evaluation(run_dir, rundir.eval_name(ev["k"], ev["seed"], ev["test_subset"]))
    gap, gap_stderr = paired_difference(ais, l_k[: len(ais)])
    return {
        "metrics": {
            "nll_ais": result["nll"],
            "nll_ais_stderr": result["nll_stderr"],
            "ais_gap": gap,
            "ais_gap_stderr": gap_stderr,
        },
        "n_test": result["n_test"],
        **{k: result[k] for k in ("steps", "chains", "leapfrog", "schedule", "initial")},
    }


# ----------------------------------------------------------------------------- runs trained as one batched model
_BATCH_TRAINED: dict[str, str] = {}  # run folder -> trained or resumed, by _train_batches in this process


def _train_batches(
    planned: list[PlannedRun], out_dir: Path, data_dir: str | None, device: str, threads: int, progress: bool, splits
) -> list[list[str]]:
    """Trains each group of :func:`batch_groups` with :func:`iwae.members.train_members`, so that
    ``execute_run`` finds them trained and only evaluates them; a member that fails (nan or inf) is
    left at its last checkpoint, where ``execute_run`` resumes it alone and reports the failure as
    for any run. Returns the groups' run names."""
    names = []
    for group in batch_groups(planned, out_dir, data_dir, device, threads):
        configs = [
            p.spec.train_config(out_dir / "runs" / p.spec.name, data_dir=data_dir, device=device, threads=threads)
            for p in group
        ]
        dataset = configs[0].dataset
        data = splits if splits is not None and splits.name == dataset else load_dataset(dataset, data_dir)
        names.append([p.spec.name for p in group])
        if progress:
            for name in names[-1]:  # each run's start, before the epoch lines of its training
                print(f"{name}: started", file=sys.stderr, flush=True)
            print(f"training {', '.join(names[-1])} together as one batched model", file=sys.stderr, flush=True)
        for p in group:
            rundir.clear_error(out_dir / "runs" / p.spec.name)
        try:
            with contextlib.ExitStack() as held:  # as reproduce: it replaces only folders a reproduction made
                for p in group:
                    held.enter_context(rundir.writing(out_dir / "runs" / p.spec.name, rundir.REPRODUCE))
                results = members.train_members(  # the engine chose to batch these (batch=True or the device's rule)
                    configs,
                    resume=group[0].state == "partial",
                    overwrite=True,
                    progress=progress,
                    splits=data,
                    batch=True,
                )
        except Exception as e:
            if progress:
                print(
                    f"  batched training failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                    f"the runs train one at a time",
                    file=sys.stderr,
                    flush=True,
                )
            names.pop()
            continue
        for p, r in zip(group, results):
            if r.status == "trained":
                _BATCH_TRAINED[str(out_dir / "runs" / p.spec.name)] = "resumed" if p.state == "partial" else "trained"
    return names
