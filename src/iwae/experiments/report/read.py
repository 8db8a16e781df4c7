"""Reading what ``iwae reproduce`` wrote: the experiment folders, each checked as it is read, and the seed
groups of their runs (mean, standard deviation and per-seed values of every metric)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ... import rundir

__all__ = ["SPEC_FILE", "find_experiments", "read_reproduction", "seed_groups"]

SPEC_FILE = "reproduction.json"


def _reportable(folder: Path) -> bool:
    """An `iwae reproduce` folder (reproduction.json) or a folder of seeds (`iwae train --seeds`)."""
    return (folder / SPEC_FILE).is_file() or rundir.is_seed_group(folder)


def find_experiments(out_dir: str | os.PathLike) -> list[Path]:
    """``[out_dir]`` when it holds reproduction.json or is a folder of seeds (``iwae train --seeds``),
    else its subfolders that are either, sorted by name.

    Raises:
        FileNotFoundError: ``out_dir`` is not a folder.
        ValueError: neither ``out_dir`` nor any subfolder is one.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir} is not a folder; give the --out folder of `iwae reproduce`")
    if _reportable(out_dir):
        return [out_dir]
    found = sorted(p for p in out_dir.iterdir() if p.is_dir() and _reportable(p))
    if not found:
        raise ValueError(
            f"{out_dir} holds no {SPEC_FILE} and no seed0/, seed1/, ... runs, nor does any folder in it; "
            f"give the --out folder of `iwae reproduce` or of `iwae train --seeds` (or their parent)"
        )
    return found


_NUMBER = (int, float)


def _json_type(x) -> str:
    """JSON's name for a value's type, or for a type (of a tuple of types, the first)."""
    t = x if isinstance(x, (type, tuple)) else type(x)
    t = t[0] if isinstance(t, tuple) else t
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(t, t.__name__)


def _check(value, where: str, every=None, **shape) -> dict:
    """``value`` if it is a JSON object whose values have the types ``shape`` gives for their key
    (``every`` for the other keys; any when None), or are null. Raises ValueError saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must hold a JSON object, found {_json_type(value)}")
    for key, item in value.items():
        types = shape.get(key, every)
        if types is not None and item is not None and not isinstance(item, types):
            raise ValueError(f"{where}: {key!r} must be {_json_type(types)}, found {_json_type(item)}")
    return value


def _read_json(path: Path, name: str | None = None, **shape) -> dict:
    """The JSON object in ``path``, checked by :func:`_check`; messages call the file ``name`` (default: its path)."""
    name = name or str(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{name} is not readable JSON ({str(e).splitlines()[0]})") from e
    return _check(value, name, **shape)


def _result(run: dict) -> tuple[str, dict, str | None]:
    """``(status, result, message)`` of a run from the files in its folder (reproduction.json may have
    been written before the run ended), by :func:`iwae.rundir.run_status`: failed, done or stale; with
    neither result.json nor error.json the status written in reproduction.json stands. Raises
    ValueError for a file that cannot be read or used."""
    found = rundir.run_status(run["dir"], run)
    name = None if found.file is None else f"runs/{run['name']}/{found.file}"  # short: it goes in a table cell
    if found.status is None:
        status = str(run.get("status") or "pending")
        return ("unreadable", {}, "result.json missing") if status == "done" else (status, {}, None)
    if found.status == "unreadable" and not found.raw:
        raise ValueError(f"{name} {found.message}")
    if found.status == "failed":
        return "failed", {}, found.message
    result = _check(
        found.raw, name, metrics=dict, spec=dict, hardware=dict, train_seconds=_NUMBER, eval_seconds=_NUMBER
    )
    _check(result.get("metrics") or {}, f"{name}: metrics", every=_NUMBER)
    if found.status == "unreadable":
        raise ValueError(f"{name} {found.message}")
    if found.status == "stale":
        return "stale", {}, f"{found.message}, rerun `iwae reproduce`"
    return "done", result, None


def read_reproduction(exp_dir: str | os.PathLike) -> dict:
    """reproduction.json of ``exp_dir``, with ``dir`` (``exp_dir``), each run completed with ``dir``
    (its run folder), ``status`` (see :func:`_result`), ``result`` (its result.json, ``{}`` when it has
    no current one), ``metrics`` (ours), ``error`` (a one-line message or None), and ``labels``,
    ``published``, ``config`` and ``eval`` as dicts (``{}`` for none). An unreadable or malformed
    result or error file makes the run ``unreadable``, with the reason, so one bad file hides no other run.

    Raises:
        ValueError: reproduction.json is missing, not JSON, has no list of runs, or is not shaped as
            `iwae reproduce` writes it.
    """
    exp_dir = Path(exp_dir)
    path = exp_dir / SPEC_FILE
    exp = _read_json(path, runs=list, protocol=dict, published=dict, figures=list, wall_seconds=_NUMBER)
    if not isinstance(exp.get("runs"), list):
        raise ValueError(f"{path} has no list of runs ('runs'); was it written by `iwae reproduce`?")
    _check(exp.get("protocol") or {}, f"{path}: protocol", settings=dict)
    exp["experiment"], exp["dir"] = exp.get("experiment") or exp_dir.name, exp_dir
    for i, run in enumerate(exp["runs"]):
        where = f"{path}: runs[{i}]"
        _check(run, where, name=str, config=dict, eval=dict, labels=dict, published=dict)
        missing = [key for key in ("name", "config", "eval") if run.get(key) is None]
        if missing:
            raise ValueError(f"{where} has no {' or '.join(missing)}; was it written by `iwae reproduce`?")
        _check(run.get("published") or {}, f"{where}: published", every=_NUMBER, active_units=(list, int, float))
        _check(run["eval"], f"{where}: eval", bound_ks=list)
        # a name that is not one plain folder name would point outside runs/: nothing is read there
        rundir.check_run_name(run["name"], f"{where}: run name")
        run["dir"] = exp_dir / "runs" / run["name"]
        try:
            run["status"], run["result"], run["error"] = _result(run)
        except ValueError as e:
            run["status"], run["result"], run["error"] = "unreadable", {}, str(e)
        run["metrics"] = run["result"].get("metrics") or {}
        for key in ("labels", "published", "config", "eval"):
            run[key] = run.get(key) or {}
        run["points"] = run.get("points") or []
    return exp


# ----------------------------------------------------------------------------- seeds
def seed_groups(runs: list[dict]) -> list[dict]:
    """``runs`` (of :func:`read_reproduction`) with the runs of one seed group merged into one entry,
    in the order of each group's first run; the runs of no group pass unchanged.

    A group's ``metrics`` are the means over its finished seeds, ``metrics_sd`` their sample standard
    deviations sqrt(sum (v - mean)^2 / (n - 1)) (None for n < 2), ``per_seed`` the values in seed
    order, ``seeds`` the seeds of the finished runs and ``n_seeds`` their number; ``status`` is
    ``done`` when every seed finished, ``N of M seeds done`` when some did, else the first run's.
    """
    order: dict[str, list[dict]] = {}
    for r in runs:
        order.setdefault(r.get("group") or f"\0{r['name']}", []).append(r)
    out = []
    for key, members in order.items():
        out.append(members[0] if key.startswith("\0") else _merge(key, members))
    return out


def trained_text(result: dict | None) -> str:
    """How a run was trained, from its result.json's ``trained_as``: ``alone``, ``batched (N runs)``
    (one batched model of N runs, this one included), or its stretches in order (``alone, then batched
    (2 runs) from step 40``); ``""`` when the result does not say (an older run)."""
    stretches = (result or {}).get("trained_as") or []
    parts = []
    for i, stretch in enumerate(stretches):
        others = stretch.get("batched_with") or []
        text = f"batched ({len(others) + 1} runs)" if others else "alone"
        parts.append(text if i == 0 else f"{text} from step {stretch.get('from_step')}")
    return ", then ".join(parts)


def _merge(name: str, members: list[dict]) -> dict:
    done = [r for r in members if r["status"] == "done"]
    keys = list(dict.fromkeys(k for r in done for k in r["metrics"] if not k.endswith("_stderr")))
    per_seed = {k: [r["metrics"][k] for r in done if r["metrics"].get(k) is not None] for k in keys}
    mean = {k: sum(v) / len(v) for k, v in per_seed.items() if v}
    sd = {
        k: math.sqrt(sum((x - mean[k]) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
        for k, v in per_seed.items()
        if v
    }
    first = done[0] if done else members[0]
    result = dict(first["result"])
    for key in ("train_seconds", "eval_seconds"):
        times = [r["result"][key] for r in done if r["result"].get(key) is not None]
        result[key] = sum(times) / len(times) if times else None
    units = list(dict.fromkeys(_units(r["result"].get("active_units")) for r in done))
    if done and len(done) == len(members):
        status, error = "done", None
    elif done:
        status, error = f"{len(done)} of {len(members)} seeds done", None
    else:
        status, error = first["status"], first["error"]
    return {
        **first,
        "name": name,
        "status": status,
        "error": error,
        "result": result,
        "metrics": mean,
        "metrics_sd": sd,
        "per_seed": per_seed,
        "seeds": [r["config"].get("seed") for r in done],
        "n_seeds": len(done),
        "units_per_seed": units if len(units) > 1 else None,
        "trained": ", ".join(dict.fromkeys(trained_text(r["result"]) for r in done)),  # each seed's, once
        "runs": [r["name"] for r in members],
    }


def _units(value) -> str:
    """Active units per stochastic layer, ``[21, 5]`` -> ``21+5``."""
    if value is None:
        return ""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
