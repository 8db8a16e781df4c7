"""A folder of seeds as one thing: evaluate every member and summarise them as mean ± sd over seeds.

    from iwae.groups import evaluate_group, group_text
    result = evaluate_group("runs/iwae-k5", k=5000, test_subset=500)   # runs/iwae-k5/seed0, seed1, ...
    print(group_text(result))

``iwae train --seeds 0,1,2 --out D`` writes one run per seed, ``D/seed0``, ``D/seed1``, ...
(:func:`iwae.rundir.seed_members`). :func:`evaluate_group` evaluates each member as ``iwae evaluate``
evaluates a run (the same files in each member's folder; the data loaded once for all of them) and
adds, per number, the mean over the n seeds, their standard deviation sqrt(sum (v - mean)^2 / (n - 1))
and the standard error of the mean across seeds sd / sqrt(n). Each seed's own ± is its standard error
over the test images (evaluation noise); the sd over seeds is the training noise, usually the larger.
``iwae evaluate D`` prints :func:`group_text`; ``iwae compare D1 D2`` pairs the seeds of two folders
(:func:`iwae.compare.compare_runs`) and ``iwae report D`` writes their report.

The members are evaluated one after another: an L_k evaluation already fills each decoder call with
k samples of as many images as the memory budget allows, so stacking the members into one batched
model would not make the calls fuller.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from . import rundir
from .ais import ais_evaluate
from .compare import NOT_CONVERGED, RESOLVED_AT, ais_gaps, describe_evaluation, not_converged
from .errors import CheckpointError
from .evaluate import evaluate
from .memory import DEFAULT_MEMORY_BUDGET
from .tables import column_table, label_table, with_error

__all__ = ["evaluate_group", "group_text", "mean_sd"]


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """``(mean, sd)`` of ``values``: sd = sqrt(sum (v - mean)^2 / (n - 1)), None for one value."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, sd


def _members(folder: str | os.PathLike) -> list[Path]:
    members = rundir.seed_members(folder)
    if not members:
        path = Path(folder)
        what = "not found" if not path.exists() else "holds no seed0/, seed1/, ... runs (iwae train --seeds)"
        raise CheckpointError(f"folder of seeds {path} {what}")
    return members


def evaluate_group(
    folder: str | os.PathLike,
    *,
    method: str = "lk",
    k: int = 5000,
    test_subset: int | None = None,
    seed: int = 0,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    device: str = "cpu",
    data_dir: str | None = None,
    dataset: str | None = None,
    progress: bool = False,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 5,
    schedule: str = "sigmoid",
    initial: str = "encoder",
    announce: Callable[[dict], None] | None = None,
    on_member: Callable[[dict], None] | None = None,
    accept_changed_data: bool = False,
    announce_lk: Callable[[dict], None] | None = None,
) -> dict:
    """Evaluates every member of a folder of seeds, as :func:`iwae.evaluate.evaluate` (``method="lk"``)
    or :func:`iwae.ais.ais_evaluate` (``"ais"``) evaluate a run, with the same arguments; the
    members' files are written in their folders.

    ``on_member`` is called with each member's entry as it is done (the CLI prints it); ``announce``
    with AIS's cost estimate before each member's AIS starts, ``announce_lk`` with L_k's
    (:func:`iwae.evaluate.lk_cost`) before each member's L_k. ``accept_changed_data``: as evaluate's.

    Returns:
        ``folder``, ``method``, ``members`` (per seed: ``seed``, ``run_dir``, ``result`` (the member's
        evaluation) and, for AIS, ``gaps`` (AIS - L_k on the same images, :func:`iwae.compare.ais_gaps`,
        as dicts)), ``n`` (the number of seeds), ``evaluation`` (the file stem each member has) and
        ``description``, and per number (``nll``, ``bits_per_dim`` where there is one,
        ``active_units``, and ``ais_gap`` against the largest k where every member has one) a dict
        ``{"mean", "sd", "stderr", "per_seed"}``: sd over seeds with n - 1 (None for one seed), and
        stderr = sd / sqrt(n), the standard error of the mean across seeds.

    Raises:
        CheckpointError: ``folder`` is not a folder of seeds; as evaluate and ais_evaluate otherwise.
    """
    if method not in ("lk", "ais"):
        raise ValueError(f"unknown method {method!r}; choose lk or ais")
    members = _members(folder)
    loaded: dict[tuple, object] = {}  # the data of the members' settings: loaded once for them all
    entries = []
    for run in members:
        entry = {"seed": rundir.member_seed(run), "run_dir": str(run)}
        if method == "lk":
            config = rundir.read_config(run)
            key = (dataset or config.dataset, config.binarization, config.dequantize)
            if dataset is None and key not in loaded:
                loaded[key] = config.load_data(data_dir)
            entry["result"] = evaluate(
                run,
                splits=loaded.get(key),
                dataset=dataset,
                data_dir=data_dir,
                k=k,
                test_subset=test_subset,
                memory_budget=memory_budget,
                seed=seed,
                device=device,
                progress=progress,
                accept_changed_data=accept_changed_data,
                announce=announce_lk,
            )
        else:
            entry["result"] = ais_evaluate(
                run,
                steps=steps,
                chains=chains,
                leapfrog=leapfrog,
                schedule=schedule,
                initial=initial,
                test_subset=test_subset,
                seed=seed,
                device=device,
                memory_budget=int(memory_budget),
                data_dir=data_dir,
                dataset=dataset,
                progress=progress,
                announce=announce,
                accept_changed_data=accept_changed_data,
            )
            stem = Path(entry["result"]["files"]["json"]).stem
            entry["gaps"] = [g.to_dict() for g in ais_gaps(run, stem)]
        entries.append(entry)
        if on_member is not None:
            on_member(entry)
    return summarise(folder, method, entries)


def summarise(folder: str | os.PathLike, method: str, entries: list[dict]) -> dict:
    """The summary :func:`evaluate_group` returns, of its members' ``entries``."""
    first = entries[0]["result"]
    out = {
        "folder": str(folder),
        "method": method,
        "n": len(entries),
        "evaluation": Path(first["files"]["json"]).stem if first.get("files") else None,
        "description": describe_evaluation(first),
        "members": entries,
    }
    numbers = {"nll": [e["result"]["nll"] for e in entries]}
    if all(e["result"].get("bits_per_dim") is not None for e in entries):
        numbers["bits_per_dim"] = [e["result"]["bits_per_dim"] for e in entries]
    if all("active_units" in e["result"] for e in entries):
        numbers["active_units"] = [e["result"]["active_units"] for e in entries]
    against = {e["gaps"][0]["b"] if e.get("gaps") else None for e in entries}
    if method == "ais" and None not in against and len(against) == 1:  # every seed against the same L_k
        numbers["ais_gap"] = [e["gaps"][0]["gap"] for e in entries]
    for name, values in numbers.items():
        mean, sd = mean_sd(values)
        out[name] = {
            "mean": mean,
            "sd": sd,
            "stderr": None if sd is None else sd / math.sqrt(len(values)),
            "per_seed": values,
        }
    return out


def _pm(value: float, error: float | None, digits: int = 2) -> str:
    """``value ± error`` with the decimals the error needs, at least ``digits``."""
    return with_error(value, error, least=digits)


def group_text(result: dict) -> str:
    """The lines ``iwae evaluate FOLDER`` prints for a result of :func:`evaluate_group`: a row per seed
    (its NLL ± s.e. over images), then the mean ± sd over seeds with n."""
    ais = result["method"] == "ais"
    bits = "bits_per_dim" in result
    header = ["seed", "test NLL (nats) ± s.e. over images"] + (["bits/dim"] if bits else [])
    gap_name = (
        f"AIS - {result['members'][0]['gaps'][0]['description_b'].split(' ', 1)[0]}" if "ais_gap" in result else ""
    )
    header += [f"{gap_name} ± paired s.e."] if gap_name else []
    header += [] if ais else ["active units"]
    rows = []
    for e in result["members"]:
        r = e["result"]
        row = [e["seed"], _pm(r["nll"], r["nll_stderr"])] + ([f"{r['bits_per_dim']:.4f}"] if bits else [])
        if ais and "ais_gap" in result:
            g = e["gaps"][0]
            row.append(f"{g['gap']:+.3f} ± {g['stderr']:.3f}")
        if not ais:
            row.append(r["active_units"])
        rows.append(row)
    n = result["n"]
    nll = result["nll"]
    summary = [
        (
            f"mean over {n} seed{'s' if n != 1 else ''}",
            f"{_pm(nll['mean'], nll['sd'])} nats  (mean ± sd over seeds, n - 1"
            + (f"; s.e. of the mean across seeds {nll['stderr']:.2f})" if nll["sd"] is not None else ": one seed)"),
        )
    ]
    if bits:
        b = result["bits_per_dim"]
        summary.append(("bits/dim", f"{_pm(b['mean'], b['sd'], 4)}  (mean ± sd over seeds)"))
    if "ais_gap" in result:
        g = result["ais_gap"]
        summary.append((gap_name, f"{_pm(g['mean'], g['sd'], 3)} nats  (mean ± sd over seeds)"))
    if "active_units" in result:
        a = result["active_units"]
        summary.append(("active units", f"{_pm(a['mean'], a['sd'], 1)}  (mean ± sd over seeds)"))
    summary.append(("evaluation", f"{result['description']} ({result['evaluation']} in each seed's folder)"))
    unconverged = [
        str(e["seed"])
        for e in result["members"]
        if any(not_converged(gap["gap"], gap["stderr"]) for gap in e.get("gaps", []))
    ]
    if ais and unconverged:
        where = f" for seed{'s' if len(unconverged) > 1 else ''} {', '.join(unconverged)}"
        this = "their AIS has" if len(unconverged) > 1 else "its AIS has"
        summary.append(("note", NOT_CONVERGED.format(name="AIS", n=RESOLVED_AT, where=where, this=this)))
    if n == 1:
        summary.append(
            ("note", "one seed: the ± above is evaluation noise only; train more seeds for the training noise")
        )
    return column_table(header, rows) + "\n\n" + label_table(summary)
