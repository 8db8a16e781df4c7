"""The report's tables in Markdown: one row per run (or seed group) with our metrics beside the published
ones and their difference, flagged above :data:`FLAG_NATS`; the protocol above it; the paired comparisons."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

from ...compare import compare_runs
from ...rundir import eval_name
from ...tables import with_error
from .read import _units, seed_groups, trained_text

__all__ = ["FLAG_NATS", "compare", "comparisons"]

FLAG_NATS = 0.3  # |ours - published| above this many nats is flagged in the table
_TOLERANCE = 1e-9  # 85.84 - 85.54 is 0.30000000000001 in floating point: not above 0.3
# the metrics a table may show, in this order (published values use the same keys and signs): nll, log_p_hat,
# and per k of eval.bound_ks iwae{k} and neg_kl{k} = iwae{k} - log_p_hat (neg_kl when there is one k)
BOUND_KEY = re.compile(r"(?:iwae|neg_kl)(\d+)$")


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
    parts = [
        str(h.get("gpu") or h.get("cpu") or h.get("device") or "unknown device"),
        f"{threads} thread{'s' if threads != 1 else ''}" if threads else None,
        f"torch {h['torch']}" if h.get("torch") else None,
    ]
    text = ", ".join(p for p in parts if p)
    return f"{h['host']}: {text}" if h.get("host") else text


# ----------------------------------------------------------------------------- the table: cells of one run
def _error(run: dict, key: str) -> float | None:
    """The ± of our metric ``key`` in a row: for a seed group the standard deviation over its seeds,
    else the metric's standard error (log p-hat = -NLL has NLL's)."""
    if "metrics_sd" in run:
        return run["metrics_sd"].get(key)
    return run["metrics"].get("nll_stderr" if key in ("nll", "log_p_hat") else f"{key}_stderr")


def _value(run: dict, key: str) -> str:
    """Our metric ``key`` ± its error (:func:`_error`), with as many decimals as the error needs
    (bits/dim's s.e. is often 0.001-0.01: two decimals would hide it)."""
    value = run["metrics"].get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return with_error(value, _error(run, key), least=3 if key == "bits_per_dim" else 2)


def _pm_label(runs: list[dict], key: str) -> str:
    """What the ± of column ``key`` is, for its header: the sd over seeds (seed groups), the s.e. over
    images (single runs; paired for AIS - L_k), or both where a table mixes them."""
    groups = any(r["metrics"].get(key) is not None and "metrics_sd" in r and _error(r, key) is not None for r in runs)
    single = any(
        r["metrics"].get(key) is not None and "metrics_sd" not in r and _error(r, key) is not None for r in runs
    )
    over_images = "± paired s.e. over images" if key == "ais_gap" else "± s.e. over images"
    if groups and single:
        return f"mean ± sd over seeds; one run: {over_images}"
    if groups:
        return "mean ± sd over seeds"
    return over_images if single else ""


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


def _trained(run: dict) -> str:
    """How a run (or each seed of a group) was trained: alone, or batched with others."""
    return run["trained"] if "trained" in run else trained_text(run["result"])


# ----------------------------------------------------------------------------- the table
def _metrics(runs: list[dict]) -> dict[str, tuple[str, bool, str]]:
    """The metrics to show, ``{key: (column, higher is better, definition)}``: those evaluated or
    published, but log p-hat and NLL (the same number, negated) only once, in the sign of the
    published table."""
    ours, published = {k for r in runs for k in r["metrics"]}, {k for r in runs for k in r["published"]}
    ks = sorted({int(m[1]) for m in map(BOUND_KEY.match, ours | published) if m})
    keys = [
        key
        for key in (
            "nll",
            "bits_per_dim",
            "log_p_hat",
            *(f"iwae{n}" for n in ks),
            "neg_kl",
            *(f"neg_kl{n}" for n in ks),
        )
        if key in ours | published
    ]
    if "log_p_hat" in published and "nll" not in published:
        keys = [k for k in keys if k != "nll"]
    else:
        keys = [k for k in keys if k != "log_p_hat" or k in published or "nll" not in keys]
    eval_ks = {str(r["result"]["eval_k"]) for r in runs if r["result"].get("eval_k")}
    k = eval_ks.pop() if len(eval_ks) == 1 else "k"
    single = {str(r["eval"]["bound_ks"][0]) for r in runs if len(r["eval"].get("bound_ks") or []) == 1}
    bound = single.pop() if len(single) == 1 else "k"  # the k of neg_kl, which has none in its name
    metrics = {
        "nll": ("NLL", False, f"NLL = -mean L_{k} over the test images, ± its standard error over images"),
        "log_p_hat": ("log p-hat", True, f"log p-hat = mean L_{k}, ± its standard error over images"),
        "neg_kl": ("-KL(Q||P)", True, f"-KL(Q||P) = IWAE-{bound} - log p-hat"),
        "bits_per_dim": (
            "bits/dim",
            False,
            "bits/dim = the NLL as a code length (a dequantised density's "
            "plus D ln 256) / (D ln 2), ± its standard error",
        ),
    }
    ais = [r["result"]["ais"] for r in runs if isinstance(r["result"].get("ais"), dict) and "nll_ais" in r["metrics"]]
    if ais:
        keys += ["nll_ais", "ais_gap"]
        how = "; ".join(sorted({f"T = {a.get('steps')}, C = {a.get('chains')}, L = {a.get('leapfrog')}" for a in ais}))
        n_ais = sorted({a["n_test"] for a in ais if isinstance(a.get("n_test"), int)})
        on = f"the first {', '.join(map(str, n_ais))} test images" if n_ais else "the test images"
        metrics["nll_ais"] = (
            "NLL (AIS)",
            False,
            f"NLL (AIS) = -mean AIS log p-hat ({how}) on {on}, ± its standard error over images",
        )
        metrics["ais_gap"] = (
            f"AIS - L_{k}",
            True,
            f"AIS - L_{k} = mean (AIS log p-hat - L_{k}) on the same images, "
            f"± its paired standard error: how far L_{k} lies below log p(x)",
        )
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
    columns += [
        (key, False, lambda r, key=key: "" if r["labels"].get(key) is None else r["labels"][key])
        for key in dict.fromkeys(k for r in runs for k in r["labels"])
    ]
    for key, (name, _, _) in _metrics(runs).items():
        label = _pm_label(runs, key)
        columns.append((f"{name} ({label})" if label else name, True, lambda r, key=key: _value(r, key)))
        if key in published:
            columns += [
                (f"{name} published", True, lambda r, key=key: _num(r["published"].get(key))),
                (f"delta {name}", True, lambda r, key=key: _delta(r, key)),
            ]
    columns += [
        ("active units", True, _active_units),
        ("epochs", True, lambda r: r["result"].get("epochs", "")),
        ("train", True, lambda r: _duration(r["result"].get("train_seconds"))),
        ("eval", True, lambda r: _duration(r["result"].get("eval_seconds"))),
    ]
    if any(_trained(r) not in ("", "alone") for r in runs):  # some run was one batched model with others
        columns.append(("trained", False, _trained))
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
        parts.append(
            "delta = ours - published, in nats, in the published table's sign convention"
            + (f"; for {', '.join(lower)} (lower is better) a negative delta means ours is better" if lower else "")
            + (
                f"; for {', '.join(higher)} (log-likelihoods, higher is better) a positive delta means ours is better"
                if higher
                else ""
            )
            + f". ⚠ marks |delta| > {FLAG_NATS:g} nats. Runs without a published number leave "
            f"those cells blank."
        )
    if metrics:
        parts.append("; ".join(definition for *_, definition in metrics.values()) + ".")
    if any("n_seeds" in r for r in runs):
        parts.append(
            "A row of several seeds gives the mean over its finished seeds ± their standard deviation "
            "(n - 1), not the standard error over images; seeds: how many finished; delta = mean - "
            "published; times are means per seed."
        )
    parts.append(
        "Active units: A_u > 0.01, per stochastic layer, ours / published. Times: training and evaluation, wall clock."
    )
    if any(_trained(r) not in ("", "alone") for r in runs):
        parts.append(
            "Trained: alone, or as one batched model of N runs (result.json's trained_as names them); "
            "a batched run and the same run alone differ by float rounding that training amplifies "
            "(see the guide's page on batched runs)."
        )
    machines = {_hardware(r["result"].get("hardware")) for r in runs if r["result"]}
    if len(machines) == 1:
        parts.append(f"Hardware (all finished runs): {machines.pop()}.")
    counts = ", ".join(f"{n} {status}" for status, n in Counter(r["status"] for r in runs).items())
    return f"*{runs_phrase(len(runs))}: {counts}.* " + " ".join(parts)


def runs_phrase(n: int, adjective: str = "") -> str:
    """'1 run', '2 runs' (with an adjective between: '1 finished run')."""
    return f"{n} {adjective}run{'' if n == 1 else 's'}"


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

    lines = [
        row(_cell(header) for header, _, _ in columns),
        row("---:" if numeric else "---" for _, numeric, _ in columns),
    ]
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
    overrides = protocol.get("overrides") if isinstance(protocol.get("overrides"), dict) else {}

    def listed(items) -> str:
        return "; ".join(f"{k.replace('_', ' ')} {_setting(k, v)}" for k, v in items)

    settings = listed((k, v) for k, v in (protocol.get("settings") or {}).items() if k not in overrides)
    lines.append(
        f"- **Protocol** `{protocol.get('name', 'unknown')}`: {_cell(protocol.get('description', ''))}"
        + (f" Settings: {settings}." if settings else "")
        + (
            f" **Overridden** on the command line: {listed(overrides.items())} (where the description "
            f"says otherwise, these apply)."
            if overrides
            else ""
        )
    )
    lines.append(f"- **Executor**: {_cell(exp.get('executor') or 'unknown')}")
    wall = _duration(exp.get("wall_seconds")) or "not finished"
    lines.append(
        f"- **Started** {exp.get('started') or '?'}, **finished** {exp.get('finished') or 'not yet'}, "
        f"**total wall time** {wall}"
    )
    pub = exp.get("published")
    if pub:
        lines.append(
            f"- **Published**: {_cell(pub.get('citation', pub.get('key', '')))} "
            f"Table `{pub.get('table', '?')}`. Sign convention: {_cell(pub.get('sign', 'as published'))}."
        )
    else:
        lines.append("- **Published**: no published table for this experiment.")
    return lines + [""]


def _setting(key: str, value) -> str:
    if value is None:  # None means "no limit" for subsets, the whole paper schedule for epochs
        return "all" if key.endswith("subset") else "full schedule" if key == "epochs" else "default"
    return str(value)


def comparisons(exp: dict) -> list[dict]:
    """The paired comparisons the experiment names (``compare: [[A, B], ...]``), one dict each:
    ``a``, ``b``, ``seeds`` (those both have finished) and :func:`iwae.compare.compare_runs`'s result
    on their evaluations (L_k of the experiment's k, seed and test images), or ``error``."""

    def finished(name: str) -> dict:
        return {
            r["config"].get("seed", 0): r
            for r in exp["runs"]
            if (r.get("group") or r["name"]) == name and r["status"] == "done"
        }

    out = []
    for a, b in exp.get("compare") or []:
        runs_a, runs_b = finished(a), finished(b)
        seeds = sorted(set(runs_a) & set(runs_b))
        entry = {"a": a, "b": b, "seeds": seeds}
        if not seeds:
            entry["error"] = "no seed of both has finished"
        else:
            ev = runs_a[seeds[0]]["eval"]

            def side(runs: dict, seeds: list = seeds) -> str | list[str]:
                return str(runs[seeds[0]]["dir"]) if len(seeds) == 1 else [str(runs[s]["dir"]) for s in seeds]

            try:
                entry["result"] = compare_runs(
                    side(runs_a),
                    side(runs_b),
                    evaluation=eval_name(ev.get("k", 5000), ev.get("seed", 0), ev.get("test_subset")),
                )
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
    lines = [
        "### Paired comparisons",
        "",
        "| A | B | seeds | NLL(A) - NLL(B) | s.e. across seeds | paired s.e. | unpaired s.e. | test images |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in entries:
        r = e.get("result")
        if r is None:
            lines.append(f"| `{e['a']}` | `{e['b']}` | {len(e['seeds'])} | {_cell(e['error'])} |  |  |  |  |")
            continue
        several = "pairs" in r
        across = _num(r["stderr_across_seeds"]) if several else ""
        paired = _num(r["pooled_paired_stderr"] if several else r["paired_stderr"])
        unpaired = "" if several else _num(r["unpaired_stderr"])
        lines.append(
            f"| `{e['a']}` | `{e['b']}` | {len(e['seeds'])} | {r['difference']:+.2f} | {across} | {paired} | "
            f"{unpaired} | {r['n_test']} |"
        )
    lines += [
        "",
        "*NLL(A) - NLL(B) on the same test images from the per-image bounds evaluation saved "
        "(negative: A is better). Paired s.e. = std of the per-image differences / sqrt(N) (pooled over "
        "seed pairs); with several seeds the difference is the mean over seed pairs, and its s.e. across "
        "seeds includes the run-to-run noise: a difference is larger than that noise when it is several "
        "of those from 0.*",
        "",
    ]
    return lines
