"""A folder of seeds (``iwae train --seeds 0,1,2 --out D``) read as the report reads an experiment:
one row per evaluation that every seed has (mean ± sd over the seeds), a row per seed below it, and
the seeds' training curves.

Each member's evaluations are its ``eval_...`` (L_k) and ``ais_...`` (AIS) records; an evaluation is
reported when every member has one that pairs with the others' (:func:`iwae.compare.evaluations_match`:
the same settings, test images and seed), so that the mean over seeds is a mean of like with like. An
AIS row carries AIS - L_k on the same images where the seeds have that L_k too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import rundir
from ...compare import ais_gaps, describe_evaluation, evaluation_kind, evaluation_records, evaluations_match
from ...config import TrainConfig

__all__ = ["read_seed_folder", "SEEDS_KIND"]

SEEDS_KIND = "seeds"  # exp["kind"] of a folder of seeds (an experiment folder has none)


def _common(members: list[Path]) -> list[dict[Path, str]]:
    """The evaluations every member has, each as member -> its file stem (L_k first, then AIS, each by
    file name): those of the first member for which every other member has a record that pairs."""
    records = {m: evaluation_records(m) for m in members}
    first = members[0]
    found = []
    for stem, record in records[first].items():
        chosen = {first: stem}
        for m in members[1:]:
            fits = [s for s, r in records[m].items() if evaluations_match(record, r) is None]
            if not fits:
                break
            chosen[m] = stem if stem in fits else fits[0]
        else:
            found.append(chosen)
    return sorted(found, key=lambda c: (evaluation_kind(records[first][c[first]])["method"] == "ais", c[first]))


def _label(record: dict) -> str:
    """A short name of an evaluation for the table's label column: ``L_5000, 500 images``."""
    kind = evaluation_kind(record)
    s = kind["settings"]
    method = f"L_{s['k']}" if kind["method"] == "lk" else f"AIS T={s['steps']} C={s['chains']} L={s['leapfrog']}"
    extra = (
        ""
        if kind["method"] == "lk" or (s["schedule"], s["initial"]) == ("sigmoid", "encoder")
        else (f" {s['schedule']}, from the {s['initial']}")
    )
    seed = f", seed {kind['seed']}" if kind["seed"] else ""
    return f"{method}{extra}, {kind['n']} images{seed}"


def _run(folder: Path, member: Path, stem: str, config: dict) -> dict:
    """One member's row for evaluation ``stem``: the fields :mod:`.tables` reads of a run."""
    record = evaluation_records(member)[stem]
    kind = evaluation_kind(record)
    metrics: dict = {}
    result: dict = {
        "epochs": (record.get("model") or {}).get("epoch"),
        "train_seconds": rundir.training_seconds(member) or None,
        "eval_seconds": record.get("seconds"),
        "hardware": record.get("runtime"),
    }
    if kind["method"] == "lk":
        metrics.update(nll=record["nll"], nll_stderr=record.get("nll_stderr"))
        if record.get("bits_per_dim") is not None and record.get("nll_discrete"):
            metrics["bits_per_dim"] = record["bits_per_dim"]
            metrics["bits_per_dim_stderr"] = record["nll_stderr"] * record["bits_per_dim"] / record["nll_discrete"]
        result.update(eval_k=record.get("k"), active_units=record.get("active_units_per_layer"))
    else:
        metrics.update(nll_ais=record["nll"], nll_ais_stderr=record.get("nll_stderr"))
        gaps = ais_gaps(member, stem)
        if gaps:
            metrics.update(ais_gap=gaps[0].gap, ais_gap_stderr=gaps[0].stderr)
            result["eval_k"] = int(gaps[0].description_b.split(" ", 1)[0][2:])  # L_5000 -> 5000
        result["ais"] = {key: record.get(key) for key in ("steps", "chains", "leapfrog", "n_test")}
    result["metrics"] = metrics
    seed = rundir.member_seed(member)
    return {
        "name": member.name,
        "group": f"{folder.name}, {_label(record)}",
        "dir": member,
        "status": "done",
        "error": None,
        "result": result,
        "metrics": metrics,
        "labels": {"evaluation": _label(record)},
        "published": {},
        "config": {**config, "seed": seed},
        "eval": {},
        "points": [],
        "description": describe_evaluation(record),
    }


def read_seed_folder(folder: str | os.PathLike) -> dict:
    """A folder of seeds as an experiment of :func:`iwae.experiments.report.read_reproduction`'s shape:
    ``kind`` (:data:`SEEDS_KIND`), ``experiment`` (the folder's name), ``dir``, ``runs`` (a row per
    member and common evaluation, grouped per evaluation), ``members`` (the member folders),
    ``settings`` (the members' config.yaml values that they share), ``evaluations`` (the common
    evaluations' descriptions), ``missing`` (the evaluations only some members have) and
    ``figures`` (the training curves).

    Raises:
        ValueError: ``folder`` is not a folder of seeds.
    """
    folder = Path(folder)
    members = rundir.seed_members(folder)
    if not members:
        raise ValueError(f"{folder} is not a folder of seeds (seed0/, seed1/, ... each with a config.yaml)")
    configs = {m: rundir.read_config_values(m) for m in members}
    defaults = TrainConfig().to_dict()
    shared = {
        k: v
        for k, v in configs[members[0]].items()
        if all(configs[m].get(k) == v for m in members) and (k == "dataset" or v != defaults.get(k, v))
    }
    shared.pop("out", None)
    common = _common(members)
    runs = [_run(folder, m, chosen[m], configs[m]) for chosen in common for m in members]
    every = {s for chosen in common for s in chosen.values()}
    missing = sorted({s for m in members for s in evaluation_records(m)} - every)
    if not runs:  # nothing to report yet: a row per seed says so
        runs = [
            {
                "name": m.name,
                "dir": m,
                "status": "not evaluated",
                "error": None,
                "result": {},
                "metrics": {},
                "labels": {},
                "published": {},
                "config": {**configs[m], "seed": rundir.member_seed(m)},
                "eval": {},
                "points": [],
            }
            for m in members
        ]
    return {
        "kind": SEEDS_KIND,
        "experiment": folder.name,
        "title": f"Seeds in {folder}",
        "dir": folder,
        "runs": runs,
        "members": members,
        "settings": shared,
        "evaluations": [describe_evaluation(evaluation_records(members[0])[c[members[0]]]) for c in common],
        "missing": missing,
        "figures": ["curves"],
        "published": None,
        "protocol": {},
    }


def seed_header(exp: dict) -> list[str]:
    """The lines above a folder of seeds' table: what the runs are and which evaluations were found."""
    seeds = [rundir.member_seed(m) for m in exp["members"]]
    settings = "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in exp["settings"].items() if k != "seed")
    lines = [
        f"## Seeds in `{exp['dir']}`",
        "",
        f"A folder of {len(seeds)} runs (`iwae train --seeds {','.join(map(str, seeds))}`), alike but for the seed.",
        "",
        f"- **Settings** (config.yaml, shared by every seed; the others at their defaults): {settings}.",
    ]
    if exp["evaluations"]:
        lines.append(f"- **Evaluations** that every seed has: {'; '.join(exp['evaluations'])}.")
    else:
        lines.append(f"- **Evaluations**: none that every seed has; make them with `iwae evaluate {exp['dir']}`.")
    if exp["missing"]:
        lines.append(
            f"- Not reported, as some seeds lack them: {', '.join(f'`{s}`' for s in exp['missing'])} "
            f"(`iwae evaluate {exp['dir']}` with their settings evaluates every seed)."
        )
    return lines + [""]
