"""The (M, K) grid in a report: the rows of the grid points the finished runs serve, and their table
beside Rainforth et al.'s numbers (also ``iwae grid``'s grid.md)."""

from __future__ import annotations

import math

from ...config.grid import GridPoint, canonical_run
from .. import published
from .read import seed_groups
from .tables import _cell

__all__ = ["grid_rows", "grid_table"]


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
            rows.append(
                {
                    "objective": p["objective"],
                    "m": p["m"],
                    "k": p["k"],
                    "beta": p["beta"],
                    "total": p["m"] * p["k"],
                    "label": p["label"],
                    "run": r["name"],
                    "iwae_bound": bound,
                    "iwae_stderr": metrics.get(f"iwae{bound_k}_stderr"),
                    "log_p_hat": log_p,
                    "log_p_hat_stderr": metrics.get("nll_stderr"),
                    "neg_kl": metrics.get("neg_kl", bound - log_p),
                    "active_units": sum(units) if isinstance(units, list) else units,
                    "iwae_k": bound_k,
                    "log_p_k": result.get("eval_k"),
                    "n_test": result.get("n_test"),
                    "epochs": result.get("epochs"),
                    "train_subset": r["config"].get("train_subset"),
                    "train_seconds": train,
                    "eval_seconds": evaluation,
                    "seconds": None if train is None or evaluation is None else train + evaluation,
                    "index": p["index"],
                }
            )
    if not rows:
        raise ValueError(
            "no finished run has an IWAE-k bound (metric iwae{k}, k the first of eval.bound_ks) and "
            "serves a grid point (runs record their points when the experiment has a grid; an older folder: "
            "run `iwae reproduce` on it again)"
        )
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
            f"| {num(pub.get('log_p_hat'))} | {num(pub.get('neg_kl'))} |"
        )
    lines.append("")
    lines.append(
        f"Published: {published.citation('rainforth2018')} Full protocol (3,280 epochs, all of MNIST, "
        f"mean of 4 runs); numbers as quoted by a public reproduction of the paper's table."
    )
    return "\n".join(lines)


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
