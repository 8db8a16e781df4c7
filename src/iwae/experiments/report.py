"""Reports of reproduced experiments: ``report.md`` and a self-contained ``report.html``.

    iwae report runs/table1                 # one experiment: the folder holds reproduction.json
    iwae report runs --no-figures           # every runs/*/reproduction.json, in turn, tables only
    from iwae.experiments.report import write_report
    markdown_path, html_path = write_report("runs/table1")

Reads what ``iwae reproduce`` writes: ``OUT/reproduction.json`` (the experiment, the protocol
used, the published table, one entry per run) and per run ``OUT/runs/<name>/`` with
``result.json`` when it finished (a result of other settings, see :func:`iwae.rundir.run_status`,
is shown as stale, without its numbers) or ``error.json`` when it failed. Per experiment the report
gives the protocol, then one table row per run: our metrics, the published value and
delta = ours - published (same keys, same signs), flagged when |delta| > 0.3 nats; active units,
epochs, train and evaluation time, hardware; then the figures the experiment asks for (training
curves, samples, latent spread, the (M, K) grid of Rainforth et al., a small gradient-SNR sweep),
as PNGs under ``OUT/report_figures/<experiment folder>/``. A figure that cannot be drawn becomes a
one-line note.

Seeds: the runs of an experiment with ``seeds`` share a ``group`` (:mod:`iwae.experiments.spec`); the
table then has one row per group, each metric the mean over its finished seeds ± their standard
deviation (n - 1 in the denominator; blank for one seed), n seeds beside it, and delta = mean -
published. ``per_seed=True`` (``iwae report --per-seed``) adds the table of every run; ``report.json``
holds, per group, the mean, the standard deviation and the per-seed values of every metric.

The HTML is the same Markdown rendered by python-markdown (``tables`` extension), with inline CSS
and every figure embedded as a base64 data URI: one file that renders offline, as it is.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

from .. import rundir
from ..checkpoint import atomic_write
from ..config.grid import GridPoint, canonical_run
from . import published
from .spec import FIGURES
from ..data import load_dataset
from ..data import resolve_binarize
from ..figures import plot_curves
from ..rundir import read_metrics
from ..figures import plot_samples
from ..train import load
from ..figures import plot_reconstructions
import torch
from ..data import fixed_binarization
from ..analysis.latent import ACTIVE_UNITS_IMAGES, ACTIVE_UNITS_SEED
from ..figures import plot_latent
from ..figures import plot_grid
import time
from ..estimators import ObjectiveSpec
from ..figures import plot_snr
from ..snr import fixed_batch, snr_sweep
from ..compare import compare_runs
import markdown

__all__ = ["find_experiments", "read_reproduction", "compare", "markdown_report", "render_html", "write_report",
           "seed_groups", "grid_rows", "grid_table", "comparisons", "summary", "FLAG_NATS"]

SPEC_FILE = "reproduction.json"
SUMMARY_FILE = "report.json"
FIGURE_DIR = "report_figures"
FLAG_NATS = 0.3  # |ours - published| above this many nats is flagged in the table
_TOLERANCE = 1e-9  # 85.84 - 85.54 is 0.30000000000001 in floating point: not above 0.3
# the metrics a table may show, in this order (published values use the same keys and signs): nll, log_p_hat,
# and per k of eval.bound_ks iwae{k} and neg_kl{k} = iwae{k} - log_p_hat (neg_kl when there is one k)
BOUND_KEY = re.compile(r"(?:iwae|neg_kl)(\d+)$")
MAX_PANELS = 6  # the samples figure: at most this many runs side by side
CURVES_PER_FIGURE = 6  # runs per training-curves figure (each run adds two legend entries)
LATENT_RUNS, LATENT_POINTS = 3, 1000  # runs and test images of the latent figure
# the report's SNR sweep: small enough for ~10-30 s on a CPU; `iwae snr` is the full study
SNR_KS, SNR_MS, SNR_GROUP_K = (1, 4, 16, 64), (1, 4, 16), 4
SNR_ESTIMATORS = ("reparam", "stl", "dreg")
SNR_REPEATS, SNR_BATCH = 30, 20
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1250px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; white-space: nowrap; }
td:last-child { white-space: normal; min-width: 12em; }
th { background: #eef; } tr:nth-child(even) td { background: #f7f7f7; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


# ----------------------------------------------------------------------------- reading the folders
def find_experiments(out_dir: str | os.PathLike) -> list[Path]:
    """``[out_dir]`` when it holds reproduction.json, else its subfolders that do, sorted by name.

    Raises:
        FileNotFoundError: ``out_dir`` is not a folder.
        ValueError: neither ``out_dir`` nor any subfolder holds a reproduction.json.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir} is not a folder; give the --out folder of `iwae reproduce`")
    if (out_dir / SPEC_FILE).is_file():
        return [out_dir]
    found = sorted(p for p in out_dir.iterdir() if (p / SPEC_FILE).is_file())
    if not found:
        raise ValueError(f"{out_dir} holds no {SPEC_FILE}, nor does any folder in it; "
                         f"give the --out folder of `iwae reproduce` (or its parent)")
    return found


_NUMBER = (int, float)


def _json_type(x) -> str:
    """JSON's name for a value's type, or for a type (of a tuple of types, the first)."""
    t = x if isinstance(x, (type, tuple)) else type(x)
    t = t[0] if isinstance(t, tuple) else t
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
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
    result = _check(found.raw, name, metrics=dict, spec=dict, hardware=dict, train_seconds=_NUMBER,
                    eval_seconds=_NUMBER)
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


def _merge(name: str, members: list[dict]) -> dict:
    done = [r for r in members if r["status"] == "done"]
    keys = list(dict.fromkeys(k for r in done for k in r["metrics"] if not k.endswith("_stderr")))
    per_seed = {k: [r["metrics"][k] for r in done if r["metrics"].get(k) is not None] for k in keys}
    mean = {k: sum(v) / len(v) for k, v in per_seed.items() if v}
    sd = {k: math.sqrt(sum((x - mean[k]) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
          for k, v in per_seed.items() if v}
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
    return {**first, "name": name, "status": status, "error": error, "result": result, "metrics": mean,
            "metrics_sd": sd, "per_seed": per_seed, "seeds": [r["config"].get("seed") for r in done],
            "n_seeds": len(done), "units_per_seed": units if len(units) > 1 else None,
            "runs": [r["name"] for r in members]}


def summary(exp: dict) -> dict:
    """What ``report.json`` holds of one experiment: per group (a run without seeds is a group of
    one) its seeds, and per metric the mean, the standard deviation over seeds and the per-seed values;
    and the paired comparisons the experiment names (:func:`comparisons`)."""
    groups = []
    for g in seed_groups(exp["runs"]):
        if "per_seed" in g:
            metrics = {k: {"mean": g["metrics"][k], "sd": g["metrics_sd"][k], "per_seed": v}
                       for k, v in g["per_seed"].items() if k in g["metrics"]}
        else:
            metrics = {k: {"mean": v, "sd": None, "per_seed": [v]} for k, v in g["metrics"].items()
                       if not k.endswith("_stderr") and v is not None}
        groups.append({"name": g["name"], "runs": g.get("runs", [g["name"]]), "status": g["status"],
                       "seeds": g.get("seeds", [g["config"].get("seed")] if g["status"] == "done" else []),
                       "n_seeds": g.get("n_seeds", int(g["status"] == "done")), "labels": g["labels"],
                       "published": g["published"], "metrics": metrics})
    return {"experiment": exp["experiment"], "dir": str(exp["dir"]), "protocol": (exp.get("protocol") or {}).get("name"),
            "groups": groups, "comparisons": comparisons(exp)}


# ----------------------------------------------------------------------------- formatting
def compare(ours: float | None, published: float | None) -> tuple[float | None, bool]:
    """``(delta, flagged)``: delta = ours - published (None when either is missing) and whether
    |delta| > :data:`FLAG_NATS`."""
    if ours is None or published is None:
        return None, False
    delta = float(ours) - float(published)
    return delta, abs(delta) > FLAG_NATS + _TOLERANCE


def _cell(value) -> str:
    """Text that cannot break a Markdown table row nor be read as HTML."""
    return str(value).replace("\n", " ").replace("|", "\\|").replace("<", "&lt;")


def _num(value, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _units(value) -> str:
    """Active units per stochastic layer, ``[21, 5]`` -> ``21+5``."""
    if value is None:
        return ""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s} s"


def _hardware(h: dict | None) -> str:
    """A short description: ``host: CPU or GPU, T threads, torch V``."""
    if not h:
        return ""
    threads = h.get("threads")
    parts = [str(h.get("gpu") or h.get("cpu") or h.get("device") or "unknown device"),
             f"{threads} thread{'s' if threads != 1 else ''}" if threads else None,
             f"torch {h['torch']}" if h.get("torch") else None]
    text = ", ".join(p for p in parts if p)
    return f"{h['host']}: {text}" if h.get("host") else text


# ----------------------------------------------------------------------------- the table: cells of one run
def _value(run: dict, key: str) -> str:
    """Our metric ``key`` with its standard error (log p-hat = -NLL has NLL's), or for a seed group
    its mean with the standard deviation over seeds."""
    value = run["metrics"].get(key)
    if "metrics_sd" in run:
        stderr = run["metrics_sd"].get(key)
    else:
        stderr = run["metrics"].get("nll_stderr" if key in ("nll", "log_p_hat") else f"{key}_stderr")
    return _num(value) + (f" ± {stderr:.2f}" if value is not None and stderr is not None else "")


def _delta(run: dict, key: str) -> str:
    delta, flagged = compare(run["metrics"].get(key), run["published"].get(key))
    return "" if delta is None else f"{delta:+.2f}" + (" ⚠" if flagged else "")


def _active_units(run: dict) -> str:
    ours, published = _units(run["result"].get("active_units")), _units(run["published"].get("active_units"))
    if run.get("units_per_seed"):  # seeds that disagree: each seed's
        ours = ", ".join(run["units_per_seed"])
    return f"{ours or '-'} / {published}" if published else ours


def _status(run: dict) -> str:
    status, after = run["status"], run.get("after")
    if status in ("failed", "unreadable", "stale"):
        error = run["error"] or "no message"
        return f"{status}: {error[:120] + '...' if len(error) > 120 else error}"
    if status == "blocked":
        return f"blocked: `{after}` did not finish" if after else "blocked"
    return f"{status}, after `{after}`" if after else status


# ----------------------------------------------------------------------------- the table
def _metrics(runs: list[dict]) -> dict[str, tuple[str, bool, str]]:
    """The metrics to show, ``{key: (column, higher is better, definition)}``: those evaluated or
    published, but log p-hat and NLL (the same number, negated) only once, in the sign of the
    published table."""
    ours, published = {k for r in runs for k in r["metrics"]}, {k for r in runs for k in r["published"]}
    ks = sorted({int(m[1]) for m in map(BOUND_KEY.match, ours | published) if m})
    keys = [key for key in ("nll", "bits_per_dim", "log_p_hat", *(f"iwae{n}" for n in ks), "neg_kl", *(f"neg_kl{n}" for n in ks))
            if key in ours | published]
    if "log_p_hat" in published and "nll" not in published:
        keys = [k for k in keys if k != "nll"]
    else:
        keys = [k for k in keys if k != "log_p_hat" or k in published or "nll" not in keys]
    eval_ks = {str(r["result"]["eval_k"]) for r in runs if r["result"].get("eval_k")}
    k = eval_ks.pop() if len(eval_ks) == 1 else "k"
    single = {str(r["eval"]["bound_ks"][0]) for r in runs if len(r["eval"].get("bound_ks") or []) == 1}
    bound = single.pop() if len(single) == 1 else "k"  # the k of neg_kl, which has none in its name
    metrics = {"nll": ("NLL", False, f"NLL = -mean L_{k} over the test images, ± its standard error over images"),
               "log_p_hat": ("log p-hat", True, f"log p-hat = mean L_{k}, ± its standard error over images"),
               "neg_kl": ("-KL(Q||P)", True, f"-KL(Q||P) = IWAE-{bound} - log p-hat"),
               "bits_per_dim": ("bits/dim", False, "bits/dim = the NLL as a code length (a dequantised density's "
                                                   "plus D ln 256) / (D ln 2), ± its standard error")}
    ais = [r["result"]["ais"] for r in runs if isinstance(r["result"].get("ais"), dict) and "nll_ais" in r["metrics"]]
    if ais:
        keys += ["nll_ais", "ais_gap"]
        how = "; ".join(sorted({f"T = {a.get('steps')}, C = {a.get('chains')}, L = {a.get('leapfrog')}" for a in ais}))
        n_ais = sorted({a["n_test"] for a in ais if isinstance(a.get("n_test"), int)})
        on = f"the first {', '.join(map(str, n_ais))} test images" if n_ais else "the test images"
        metrics["nll_ais"] = ("NLL (AIS)", False, f"NLL (AIS) = -mean AIS log p-hat ({how}) on {on}, ± its "
                                                  f"standard error over images")
        metrics["ais_gap"] = (f"AIS - L_{k}", True, f"AIS - L_{k} = mean (AIS log p-hat - L_{k}) on the same images, "
                                                   f"± its paired standard error: how far L_{k} lies below log p(x)")
    for n in ks:
        metrics[f"iwae{n}"] = (f"IWAE-{n}", True, f"IWAE-{n} = mean L_{n}")
        metrics[f"neg_kl{n}"] = (f"-KL(Q||P) at {n}", True, f"-KL(Q||P) at {n} = IWAE-{n} - log p-hat")
    return {key: metrics[key] for key in keys}


def _columns(runs: list[dict]) -> list[tuple[str, bool, Callable[[dict], object]]]:
    """The table's columns: ``(header, numeric, the cell of a run)``; a metric gets its published
    value and delta beside it when some run has a published value for it."""
    published = {k for r in runs for k in r["published"]}
    columns = [("run", False, lambda r: f"`{r.get('name')}`")]
    if any("n_seeds" in r for r in runs):
        columns.append(("seeds", True, lambda r: r.get("n_seeds", "")))
    columns += [(key, False, lambda r, key=key: "" if r["labels"].get(key) is None else r["labels"][key])
                for key in dict.fromkeys(k for r in runs for k in r["labels"])]
    for key, (name, _, _) in _metrics(runs).items():
        columns.append((name, True, lambda r, key=key: _value(r, key)))
        if key in published:
            columns += [(f"{name} published", True, lambda r, key=key: _num(r["published"].get(key))),
                        (f"delta {name}", True, lambda r, key=key: _delta(r, key))]
    columns += [("active units", True, _active_units),
                ("epochs", True, lambda r: r["result"].get("epochs", "")),
                ("train", True, lambda r: _duration(r["result"].get("train_seconds"))),
                ("eval", True, lambda r: _duration(r["result"].get("eval_seconds")))]
    if len({_hardware(r["result"].get("hardware")) for r in runs if r["result"]}) > 1:
        columns.append(("hardware", False, lambda r: _hardware(r["result"].get("hardware"))))
    return columns + [("status", False, _status)]


def _caption(runs: list[dict]) -> str:
    """What the table's columns mean: delta's sign, the flag, the metrics, the hardware if shared."""
    metrics, published = _metrics(runs), {k for r in runs for k in r["published"]}
    lower = [name for key, (name, higher, _) in metrics.items() if key in published and not higher]
    higher = [name for key, (name, higher, _) in metrics.items() if key in published and higher]
    parts = []
    if lower or higher:
        parts.append("delta = ours - published, in nats, in the published table's sign convention"
                     + (f"; for {', '.join(lower)} (lower is better) a negative delta means ours is better"
                        if lower else "")
                     + (f"; for {', '.join(higher)} (log-likelihoods, higher is better) a positive delta "
                        f"means ours is better" if higher else "")
                     + f". ⚠ marks |delta| > {FLAG_NATS:g} nats. Runs without a published number leave "
                       f"those cells blank.")
    if metrics:
        parts.append("; ".join(definition for *_, definition in metrics.values()) + ".")
    if any("n_seeds" in r for r in runs):
        parts.append("A row of several seeds gives the mean over its finished seeds ± their standard deviation "
                     "(n - 1), not the standard error over images; seeds: how many finished; delta = mean - "
                     "published; times are means per seed.")
    parts.append("Active units: A_u > 0.01, per stochastic layer, ours / published. "
                 "Times: training and evaluation, wall clock.")
    machines = {_hardware(r["result"].get("hardware")) for r in runs if r["result"]}
    if len(machines) == 1:
        parts.append(f"Hardware (all finished runs): {machines.pop()}.")
    counts = ", ".join(f"{n} {status}" for status, n in Counter(r["status"] for r in runs).items())
    return f"*{len(runs)} runs: {counts}.* " + " ".join(parts)


def _table(exp: dict, per_seed: bool = False) -> list[str]:
    """The results table of one experiment (a row per seed group, see :func:`seed_groups`), its
    caption and the failures, as Markdown lines; with ``per_seed`` and seeds, then a row per run."""
    grouped = seed_groups(exp["runs"])
    lines = _rows_table(grouped, exp["runs"])
    if per_seed and len(grouped) != len(exp["runs"]):
        lines += ["", "#### Per seed", ""] + _rows_table(exp["runs"], [])
    return lines


def _rows_table(runs: list[dict], members: list[dict]) -> list[str]:
    """A table of ``runs`` (runs or seed groups), its caption, and the failures among ``members``
    (the runs, when ``runs`` are groups) or ``runs``."""
    columns = _columns(runs)

    def row(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [row(_cell(header) for header, _, _ in columns),
             row("---:" if numeric else "---" for _, numeric, _ in columns)]
    lines += [row(_cell(cell(r)) for *_, cell in columns) for r in runs]
    lines += ["", _caption(runs)]
    failed = [r for r in (members or runs) if r["status"] in ("failed", "unreadable")]
    if failed:
        lines += ["", "Failed runs (message and traceback in `runs/NAME/error.json`):", ""]
        lines += [f"- `{r.get('name')}`: {_cell(r['error'])}" for r in failed]
    return lines


def _header(exp: dict) -> list[str]:
    """Title, description, protocol, executor and times, and the published source, as Markdown lines."""
    lines = [f"## {_cell(exp.get('title') or exp['experiment'])}", "", f"Experiment `{exp['experiment']}`.", ""]
    if exp.get("description"):
        lines += [str(exp["description"]).replace("<", "&lt;"), ""]
    protocol = exp.get("protocol") or {}
    settings = "; ".join(f"{k.replace('_', ' ')} {_setting(k, v)}" for k, v in (protocol.get("settings") or {}).items())
    lines.append(f"- **Protocol** `{protocol.get('name', 'unknown')}`: {_cell(protocol.get('description', ''))}"
                 + (f" Settings: {settings}." if settings else ""))
    lines.append(f"- **Executor**: {_cell(exp.get('executor') or 'unknown')}")
    wall = _duration(exp.get("wall_seconds")) or "not finished"
    lines.append(f"- **Started** {exp.get('started') or '?'}, **finished** {exp.get('finished') or 'not yet'}, "
                 f"**total wall time** {wall}")
    pub = exp.get("published")
    if pub:
        lines.append(f"- **Published**: {_cell(pub.get('citation', pub.get('key', '')))} "
                     f"Table `{pub.get('table', '?')}`. Sign convention: {_cell(pub.get('sign', 'as published'))}.")
    else:
        lines.append("- **Published**: no published table for this experiment.")
    return lines + [""]


def _setting(key: str, value) -> str:
    if value is None:  # None means "no limit" for subsets, the whole paper schedule for epochs
        return "all" if key.endswith("subset") else "full schedule" if key == "epochs" else "default"
    return str(value)


# ----------------------------------------------------------------------------- figures
def _done(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["status"] == "done" and (r["dir"] / rundir.MODEL).is_file()]


def _representatives(runs: list[dict], cap: int) -> list[dict]:
    """One finished run per label combination apart from k (the one with the largest k), at most ``cap``."""
    def k_of(r: dict) -> int:
        return int(r["labels"].get("k") or r["config"].get("k") or 0)

    chosen: dict[tuple, dict] = {}
    for r in _done(runs):
        labels = r["labels"] or {"name": r.get("name")}
        key = tuple((k, str(v)) for k, v in labels.items() if k != "k")
        if key not in chosen or k_of(r) > k_of(chosen[key]):
            chosen[key] = r
    if not chosen:
        raise ValueError("no finished run with a model.safetensors")
    return list(chosen.values())[:cap]


def _splits(run: dict, data_dir, cache: dict):
    """The run's dataset, loaded once per report and never downloaded (a report must not hit the network),
    from ``data_dir``, else the run's data_dir: its spec's, or its config.yaml's (where the data was at
    training time; `iwae reproduce` passes it per invocation, so the spec may not hold it)."""
    dataset = run["config"].get("dataset", "mnist")
    folder = data_dir or run["config"].get("data_dir") or rundir.read_config_values(run["dir"]).get("data_dir")
    mode = resolve_binarize(run["config"].get("binarize", "auto"), run["config"].get("likelihood", "bernoulli"))
    deq = bool(run["config"].get("dequantize", False))
    if (dataset, folder, mode, deq) not in cache:
        cache[(dataset, folder, mode, deq)] = load_dataset(dataset, folder, download=False, binarize=mode, dequantize=deq)
    return cache[(dataset, folder, mode, deq)]


Drawn = list[tuple[Path, str]]  # (figure file, caption) per figure a kind draws


def _fig_curves(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_curves of every run with a metrics.csv, finished or not, a few runs per figure."""
    runs = [r for r in exp["runs"] if rundir.has_metrics(r["dir"])]
    if not runs:
        raise ValueError("no run has a metrics.csv yet")
    out = []
    for i in range(0, len(runs), CURVES_PER_FIGURE):
        chunk = runs[i: i + CURVES_PER_FIGURE]
        part = f"-{i // CURVES_PER_FIGURE + 1}" if len(runs) > CURVES_PER_FIGURE else ""
        path = plot_curves({r["name"]: read_metrics(r["dir"]) for r in chunk}, fig_dir / f"curves{part}.png")
        out.append((path, f"Training curves of runs {i + 1}-{i + len(chunk)} of the {len(runs)} with a metrics.csv: "
                          f"training bound (solid) and validation L_k (dashed) per epoch."))
    return out


def _fig_samples(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_samples of a few finished runs (:func:`_representatives`)."""
    runs = _representatives(exp["runs"], MAX_PANELS)
    path = plot_samples({r["name"]: load(r["dir"]) for r in runs}, fig_dir / "samples.png")
    return [(path, f"64 samples from each of {len(runs)} finished runs (one per label combination, the largest k "
                   f"of each, at most {MAX_PANELS}): z ~ p(z), the means of p(x | z).")]


RECONSTRUCTIONS = 10  # test images per reconstruction panel


def _fig_reconstructions(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_reconstructions of a few finished runs of one dataset on its first test images."""
    runs = _representatives(exp["runs"], MAX_PANELS)
    dataset = runs[0]["config"].get("dataset", "mnist")
    runs = [r for r in runs if r["config"].get("dataset", "mnist") == dataset]  # one test set
    splits = _splits(runs[0], data_dir, cache)
    path = plot_reconstructions({r["name"]: load(r["dir"]) for r in runs}, splits.test[:RECONSTRUCTIONS],
                                fig_dir / "reconstructions.png", n=RECONSTRUCTIONS)
    return [(path, f"The first {RECONSTRUCTIONS} {splits.name} test images (top) and the means of "
                   f"p(x | z = E_q[z | x]) (bottom), for {len(runs)} runs.")]


def _fig_latent(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_latent of a few finished runs of one dataset on its first test images, by label."""
    runs = _representatives(exp["runs"], MAX_PANELS)
    dataset = runs[0]["config"].get("dataset", "mnist")
    runs = [r for r in runs if r["config"].get("dataset", "mnist") == dataset][:LATENT_RUNS]  # one test set
    splits = _splits(runs[0], data_dir, cache)
    x_units = splits.train[:ACTIVE_UNITS_IMAGES]
    if splits.dynamic:  # grey levels: binarize once, as evaluation does
        x_units = torch.from_numpy(fixed_binarization(x_units.numpy(), ACTIVE_UNITS_SEED))
    labels = None if splits.test_labels is None else splits.test_labels[:LATENT_POINTS]
    path = plot_latent({r["name"]: load(r["dir"]) for r in runs}, splits.test[:LATENT_POINTS],
                       fig_dir / "latent.png", labels=labels, x_units=x_units)
    return [(path, f"Posterior means E_q[z | x] of the first {min(LATENT_POINTS, len(splits.test))} {splits.name} "
                   f"test images in the two most active latent units, "
                   f"{'coloured by label' if labels is not None else 'unlabelled'}; {len(runs)} runs.")]


def grid_rows(exp: dict) -> list[dict]:
    """Rows in :func:`iwae.figures.plot_grid`'s (and grid.csv's) format, in grid order: per grid point
    that a finished run (or seed group: means over seeds) serves, as the engine recorded it in the
    run's ``points`` (experiments with a ``grid``), the run's metrics: IWAE-k (the first of its
    eval.bound_ks), log p-hat, -KL = IWAE-k - log p-hat, active units (summed over layers), times."""
    rows = []
    for r in seed_groups(exp["runs"]):
        bound_k = (r["eval"].get("bound_ks") or [None])[0]
        metrics, result = r["metrics"], r["result"]
        if r["status"] != "done" or f"iwae{bound_k}" not in metrics:
            continue
        bound, log_p = metrics[f"iwae{bound_k}"], metrics.get("log_p_hat", -metrics["nll"])
        train, evaluation = result.get("train_seconds"), result.get("eval_seconds")
        units = result.get("active_units")
        for p in r["points"]:
            rows.append({"objective": p["objective"], "m": p["m"], "k": p["k"], "beta": p["beta"],
                         "total": p["m"] * p["k"], "label": p["label"], "run": r["name"], "iwae_bound": bound,
                         "iwae_stderr": metrics.get(f"iwae{bound_k}_stderr"), "log_p_hat": log_p,
                         "log_p_hat_stderr": metrics.get("nll_stderr"), "neg_kl": metrics.get("neg_kl", bound - log_p),
                         "active_units": sum(units) if isinstance(units, list) else units, "iwae_k": bound_k,
                         "log_p_k": result.get("eval_k"), "n_test": result.get("n_test"),
                         "epochs": result.get("epochs"), "train_subset": r["config"].get("train_subset"),
                         "train_seconds": train, "eval_seconds": evaluation,
                         "seconds": None if train is None or evaluation is None else train + evaluation,
                         "index": p["index"]})
    if not rows:
        raise ValueError("no finished run has an IWAE-k bound (metric iwae{k}, k the first of eval.bound_ks) and "
                         "serves a grid point (runs record their points when the experiment has a grid; an older folder: "
                         "run `iwae reproduce` on it again)")
    return sorted(rows, key=lambda row: row["index"])


_grid_rows = grid_rows  # the name the figures use


def _published_for(row: dict) -> dict | None:
    point = GridPoint(row["objective"], row["m"], row["k"], row["beta"])
    return published.rainforth_by_run(point.total).get(canonical_run(point))


def grid_table(rows: list[dict]) -> str:
    """The grid as a Markdown table, one line per grid point, beside Rainforth et al.'s numbers where
    they exist (full protocol, M * K = 64, mean of 4 runs; as quoted by a public reproduction)."""

    def num(v, digits=2):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    iwae_k = rows[0]["iwae_k"] if rows else 64
    log_p_k = rows[0]["log_p_k"] if rows else 5000
    lines = [
        f"| point | run | IWAE-{iwae_k} | log p-hat (L_{log_p_k}) | -KL(Q‖P) | active units | time (s) "
        f"| published IWAE-64 | published log p-hat | published -KL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pub = _published_for(r) or {}
        lines.append(
            f"| {r['label']} | {r['run']} | {num(r['iwae_bound'])} | {num(r['log_p_hat'])} | {num(r['neg_kl'])} "
            f"| {r['active_units']} | {num(r['seconds'], 0)} | {num(pub.get('iwae64'))} "
            f"| {num(pub.get('log_p_hat'))} | {num(pub.get('neg_kl'))} |")
    lines.append("")
    lines.append(f"Published: {published.citation('rainforth2018')} Full protocol (3,280 epochs, all of MNIST, "
                 f"mean of 4 runs); numbers as quoted by a public reproduction of the paper's table.")
    return "\n".join(lines)


def _fig_grid(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_grid of the finished runs' grid points (Rainforth et al.'s Fig. 6)."""
    rows = _grid_rows(exp)
    path = plot_grid(rows, fig_dir / "grid.png", published=published.rainforth2018())
    bound = f"IWAE-{rows[0]['iwae_k']}"
    return [(path, f"{bound}, log p-hat and -KL(Q||P) = {bound} - log p-hat against (M, K) for MIWAE and PIWAE "
                   f"(top) and against beta for CIWAE (bottom), M * K = {rows[0]['total']}: {len(rows)} grid points "
                   f"with a finished run (identical objectives share one run, e.g. MIWAE(1,K) = PIWAE(1,K) = "
                   f"CIWAE(0) = IWAE). Stars: Rainforth et al. (2018), full protocol.")]


def _fig_snr(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """A small snr.snr_sweep (IWAE against K, MIWAE against M; reparam, STL, DReG) of one trained run."""
    def preference(r):  # Rainforth et al.'s model: IWAE, k = 50, reparameterised gradients
        c = r["config"]
        return (c.get("objective") == "iwae", c.get("estimator", "reparam") == "reparam", c.get("k") == 50,
                c.get("k", 0))

    done = _done(exp["runs"])
    if not done:
        raise ValueError("no finished run with a model.safetensors")
    run = max(done, key=preference)  # the first of the best
    splits = _splits(run, data_dir, cache)
    x = fixed_batch(splits, min(SNR_BATCH, len(splits.train)))
    specs = [ObjectiveSpec("iwae", k, estimator=e) for e in SNR_ESTIMATORS for k in SNR_KS]
    specs += [ObjectiveSpec("miwae", m * SNR_GROUP_K, m, estimator=e) for e in SNR_ESTIMATORS for m in SNR_MS]
    t0 = time.perf_counter()
    rows = snr_sweep(load(run["dir"]), x, specs, SNR_REPEATS, seed=0)
    seconds = time.perf_counter() - t0
    path = plot_snr(rows, fig_dir / "snr.png", title=f"Gradient SNR of run {run['name']} "
                    f"(R = {SNR_REPEATS} estimates per point, batch {len(x)})")
    return [(path, f"Gradient SNR of the trained run `{run['name']}`: median |mean| / std over the encoder's and "
                   f"the decoder's parameters, R = {SNR_REPEATS} gradient estimates per point on one fixed batch of "
                   f"the first {len(x)} training images (binarized once); IWAE at K = "
                   f"{', '.join(map(str, SNR_KS))}, MIWAE(M, {SNR_GROUP_K}) at M = {', '.join(map(str, SNR_MS))}; "
                   f"estimators {', '.join(SNR_ESTIMATORS)}; slopes are log-log fits. A small sweep "
                   f"({seconds:.0f} s): `iwae snr RUN_DIR --repeats 200` is the full study.")]


DRAW = {kind: globals()[f"_fig_{kind}"] for kind in FIGURES}  # the kinds an experiment may ask for


def _figures(exp: dict, out_dir: Path, data_dir, cache: dict, counter: list[int]) -> list[str]:
    """Draws the experiment's figures under ``out_dir/report_figures`` and returns their Markdown."""
    lines = ["### Figures", ""]
    fig_dir = out_dir / FIGURE_DIR / exp["dir"].resolve().name  # unique among the experiments of a parent
    for kind in exp.get("figures") or []:
        if kind not in FIGURES:
            lines += [f"*Figure `{_cell(kind)}` not drawn: unknown kind (known: {', '.join(FIGURES)}).*", ""]
            continue
        try:
            drawn = DRAW[kind](exp, fig_dir, data_dir, cache)
        except Exception as e:  # a figure is an extra: say why it is missing rather than lose the report
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            lines += [f"*Figure `{kind}` not drawn: {_cell(reason)}.*", ""]
            continue
        for path, caption in drawn:
            counter[0] += 1
            lines += [f"![{kind}]({quote(Path(path).relative_to(out_dir).as_posix())})", "",
                      f"**Figure {counter[0]}.** {caption}", ""]
    return lines if len(lines) > 2 else []


# ----------------------------------------------------------------------------- the report
def markdown_report(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                    figures: bool = True, per_seed: bool = False) -> str:
    """The report of every experiment under ``out_dir`` (see :func:`find_experiments`) as Markdown;
    with ``figures``, also draws the figures under ``out_dir/report_figures/``, which it links to
    relatively. ``data_dir`` overrides the runs' ``data_dir`` for the figures that need data;
    ``per_seed`` adds a table of every run below each table of seed groups."""
    out_dir = Path(out_dir)
    experiments = [read_reproduction(p) for p in find_experiments(out_dir)]
    try:
        from importlib.metadata import version

        by = f"iwae {version('iwae')}"
    except Exception:  # not installed as a distribution: the report is still valid
        by = "iwae"
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = [f"`{e['experiment']}`" for e in experiments]
    lines = ["# Reproduction report", "",
             f"Generated {now} by {by} from `{out_dir}`: {len(experiments)} experiment"
             f"{'s' if len(experiments) != 1 else ''} ({', '.join(names)}).", ""]
    cache: dict = {}
    counter = [0]
    for exp in experiments:
        lines += _header(exp) + ["### Results", ""] + _table(exp, per_seed) + [""] + _grid_section(exp)
        lines += _compare_section(exp)
        if figures:
            lines += _figures(exp, out_dir, data_dir, cache, counter)
        elif exp.get("figures"):
            lines += [f"*Figures ({', '.join(map(str, exp['figures']))}) not drawn: --no-figures.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def comparisons(exp: dict) -> list[dict]:
    """The paired comparisons the experiment names (``compare: [[A, B], ...]``), one dict each:
    ``a``, ``b``, ``seeds`` (those both have finished) and :func:`iwae.compare.compare_runs`'s result
    on their evaluations (L_k of the experiment's k, seed and test images), or ``error``."""
    def finished(name: str) -> dict:
        return {r["config"].get("seed", 0): r for r in exp["runs"]
                if (r.get("group") or r["name"]) == name and r["status"] == "done"}

    out = []
    for a, b in exp.get("compare") or []:
        runs_a, runs_b = finished(a), finished(b)
        seeds = sorted(set(runs_a) & set(runs_b))
        entry = {"a": a, "b": b, "seeds": seeds}
        if not seeds:
            entry["error"] = "no seed of both has finished"
        else:
            ev = runs_a[seeds[0]]["eval"]
            side = (lambda runs: str(runs[seeds[0]]["dir"]) if len(seeds) == 1 else [str(runs[s]["dir"]) for s in seeds])
            try:
                entry["result"] = compare_runs(side(runs_a), side(runs_b), k=ev.get("k", 5000), seed=ev.get("seed", 0),
                                               test_subset=ev.get("test_subset"))
            except (OSError, ValueError) as e:
                entry["error"] = str(e).splitlines()[0]
        out.append(entry)
    return out


def _compare_section(exp: dict) -> list[str]:
    """The table of :func:`comparisons`: NLL(A) - NLL(B) with its paired standard error, and over
    seeds with the standard error across seeds, for the pairs the experiment names."""
    entries = comparisons(exp)
    if not entries:
        return []
    lines = ["### Paired comparisons", "",
             "| A | B | seeds | NLL(A) - NLL(B) | s.e. across seeds | paired s.e. | unpaired s.e. | test images |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in entries:
        r = e.get("result")
        if r is None:
            lines.append(f"| `{e['a']}` | `{e['b']}` | {len(e['seeds'])} | {_cell(e['error'])} |  |  |  |  |")
            continue
        several = "pairs" in r
        across = _num(r["stderr_across_seeds"]) if several else ""
        paired = _num(r["pooled_paired_stderr"] if several else r["paired_stderr"])
        unpaired = "" if several else _num(r["unpaired_stderr"])
        lines.append(f"| `{e['a']}` | `{e['b']}` | {len(e['seeds'])} | {r['difference']:+.2f} | {across} | {paired} | "
                     f"{unpaired} | {r['n_test']} |")
    lines += ["", "*NLL(A) - NLL(B) on the same test images from the per-image bounds evaluation saved "
              "(negative: A is better). Paired s.e. = std of the per-image differences / sqrt(N) (pooled over "
              "seed pairs); with several seeds the difference is the mean over seed pairs, and its s.e. across "
              "seeds includes the run-to-run noise: a difference is larger than that noise when it is several "
              "of those from 0.*", ""]
    return lines


def _grid_section(exp: dict) -> list[str]:
    """The grid's table (:func:`iwae.grid.grid_table`: one line per grid point, beside Rainforth et
    al.'s numbers) for an experiment whose runs serve grid points, else nothing."""
    if not any(r["points"] for r in exp["runs"]):
        return []
    try:
        table = grid_table(grid_rows(exp))
    except ValueError as e:
        return ["### Grid points", "", f"*Not shown: {_cell(str(e).splitlines()[0])}.*", ""]
    return ["### Grid points", "", table, ""]


def render_html(markdown_text: str, base_dir: str | os.PathLike, title: str = "Reproduction report") -> str:
    """A self-contained HTML page of ``markdown_text``: inline CSS, and every relative image (resolved
    against ``base_dir``) embedded as a base64 data URI."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    base_dir = Path(base_dir)

    def embed(match: re.Match) -> str:
        src = unquote(html.unescape(match.group(1)))
        path = base_dir / src
        if "://" in src or not path.is_file():
            return match.group(0)
        mime = "image/png" if path.suffix.lower() == ".png" else f"image/{path.suffix.lstrip('.').lower()}"
        return f'src="data:{mime};base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    body = re.sub(r'src="([^"]+)"', embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_report(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 figures: bool = True, per_seed: bool = False) -> tuple[Path, Path]:
    """Writes ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/report.json`` (the
    :func:`summary` of each experiment: means, standard deviations and per-seed values), each
    atomically, and, with ``figures``, the PNGs under ``out_dir/report_figures/``. Returns the
    Markdown and HTML paths.

    Raises:
        FileNotFoundError: ``out_dir`` is not a folder.
        ValueError: no reproduction.json in ``out_dir`` or its subfolders, or one is not valid JSON.
    """
    out_dir = Path(out_dir)
    text = markdown_report(out_dir, data_dir, figures, per_seed)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    with atomic_write(md_path, "wb") as f:  # bytes: UTF-8 whatever the locale (the table has ± and ⚠)
        f.write(text.encode("utf-8"))
    titles = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    page = render_html(text, out_dir, title="Reproduction report" + (f": {titles[0]}" if len(titles) == 1 else ""))
    with atomic_write(html_path, "wb") as f:
        f.write(page.encode("utf-8"))
    summaries = [summary(read_reproduction(p)) for p in find_experiments(out_dir)]
    with atomic_write(out_dir / SUMMARY_FILE) as f:
        json.dump({"experiments": summaries}, f, indent=1)
    return md_path, html_path
