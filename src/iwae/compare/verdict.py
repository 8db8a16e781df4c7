"""What a paired comparison says, in words: which run has the lower NLL, by how much, and whether the
difference is resolved at the usual 2 standard errors; and the lines ``iwae compare`` prints."""

from __future__ import annotations

import math

from ..tables import label_table

__all__ = ["RESOLVED_AT", "verdict", "compare_text", "gap_text", "SINGLE_RUN_NOTE"]

RESOLVED_AT = 2.0  # standard errors: a difference this many from 0 is called resolved
SINGLE_RUN_NOTE = (
    "one run a side: the ± is evaluation noise only (which test images, which importance samples), not "
    "training noise; another training seed of either run can move the difference by several times as "
    "much. To include it, train seeds (iwae train ... --seeds 0,1,2 --out DIR) and compare the folders "
    "(iwae compare DIR_A DIR_B)."
)


def _t_coverage(df: int, at: float) -> tuple[float, float]:
    """``(coverage, t95)``: the probability that a Student t with ``df`` degrees of freedom lies within
    ±``at``, and its two-sided 95% quantile."""
    # deferred: scipy.stats is slow to import, and only a comparison over a few seeds needs it
    from scipy.stats import t

    return float(2 * t.cdf(at, df) - 1), float(t.ppf(0.975, df))


def _across(stderr: float | None) -> str:
    return "n/a (one seed pair)" if stderr is None else f"{stderr:.3f}"


def verdict(result: dict) -> dict:
    """The verdict on a result of :func:`iwae.compare.compare_runs`.

    Returns:
        ``lower`` (``"A"``, ``"B"``, or None when the NLLs are equal), ``by`` (|NLL(A) - NLL(B)|, in
        nats), ``stderr`` and ``stderr_kind`` (the paired s.e. over images for one run a side; the
        s.e. across seeds for seeds, which includes training noise), ``ratio`` (by / stderr; None
        when the s.e. is 0, as it is when every image differs by the same amount),
        ``resolved`` (ratio >= 2), ``text`` (one line), ``note`` (what the s.e. leaves out, or how
        far 2 s.e. across few seeds is from 95%; None when nothing needs saying).
    """
    diff = result["difference"]
    across = result.get("stderr_across_seeds")
    seeds = result.get("seeds")
    if seeds and seeds > 1 and across is not None and math.isfinite(across):
        stderr, kind = across, f"s.e. across {seeds} seed pairs"
    else:
        stderr = result["pooled_paired_stderr"] if "pairs" in result else result["paired_stderr"]
        kind = f"paired s.e. over {result['n_test']} test images"
    lower = None if diff == 0 else ("A" if diff < 0 else "B")
    by = abs(diff)
    ratio = by / stderr if stderr > 0 else math.inf
    resolved = ratio >= RESOLVED_AT
    names = {"A": result.get("run_a", "A"), "B": result.get("run_b", "B")}
    if lower is None:
        text = "A and B have the same NLL on these images"
    else:
        times = f"{ratio:.1f}" if ratio < 1000 else "over 1000"
        text = f"{lower} ({names[lower]}) has the lower NLL, by {by:.3g} nats = {times} {kind}: " + (
            f"resolved at {RESOLVED_AT:g} s.e."
            if resolved
            else f"not resolved at {RESOLVED_AT:g} s.e. (the two may not differ)"
        )
    note = None
    if "pairs" not in result or not (seeds and seeds > 1):
        note = SINGLE_RUN_NOTE
    elif seeds < 30:
        coverage, t95 = _t_coverage(seeds - 1, RESOLVED_AT)
        note = (
            f"with {seeds} seed pairs, ±{RESOLVED_AT:g} s.e. across seeds covers only {coverage:.0%} of a t "
            f"distribution with {seeds - 1} degrees of freedom; 95% needs ±{t95:.2f} s.e."
            + (" More seeds narrow it." if seeds < 5 else "")
        )
    return {
        "lower": lower,
        "by": by,
        "stderr": stderr,
        "stderr_kind": kind,
        "ratio": ratio if math.isfinite(ratio) else None,  # JSON has no infinity
        "resolved": resolved,
        "text": text,
        "note": note,
    }


def compare_text(result: dict) -> str:
    """The lines ``iwae compare`` prints for a result of :func:`iwae.compare.compare_runs`."""
    n = f"{result['n_test']} test images"
    v = result.get("verdict") or verdict(result)
    evaluation = result.get("evaluation") or {}
    used = evaluation.get("description", "")
    if evaluation.get("a"):
        stems = evaluation["a"] if evaluation["a"] == evaluation.get("b") else f"{evaluation['a']}, {evaluation['b']}"
        used += f" ({stems})"
    if "pairs" not in result:
        rows = [
            ("NLL A", f"{result['nll_a']:.3f} ± {result['nll_stderr_a']:.3f}  ({result['run_a']}; ± s.e. over {n})"),
            ("NLL B", f"{result['nll_b']:.3f} ± {result['nll_stderr_b']:.3f}  ({result['run_b']})"),
            (
                "A - B",
                f"{result['difference']:+.3f} ± {result['paired_stderr']:.3f}  (paired s.e. over {n}; "
                f"unpaired it would be ± {result['unpaired_stderr']:.3f})",
            ),
        ]
    else:
        lo, hi = result["range"]
        seeds = result.get("seed_numbers") or list(range(result["seeds"]))
        what = "seed" if result.get("seed_numbers") else "pair"
        rows = [(side, result[key]) for side, key in (("A", "run_a"), ("B", "run_b")) if key in result]
        rows += [
            (
                "A - B",
                f"{result['difference']:+.3f} ± {_across(result['stderr_across_seeds'])}  (mean over {result['seeds']} "
                f"seed pairs ± s.e. across seeds, training noise included)",
            ),
            ("seed pairs", f"range over {lo:+.3f} … {hi:+.3f}"),
            ("within pairs", f"± {result['pooled_paired_stderr']:.3f}  (pooled paired s.e. over {n})"),
            *(
                (f"{what} {s}", f"{p['difference']:+.3f} ± {p['paired_stderr']:.3f}  (paired s.e.)")
                for s, p in zip(seeds, result["pairs"])
            ),
        ]
        left_out = {side: seeds for side, seeds in (result.get("unmatched") or {}).items() if seeds}
        if left_out:
            rows.append(
                (
                    "left out",
                    "; ".join(
                        f"seeds {', '.join(map(str, s))} of {side.upper()} (not in the other)"
                        for side, s in left_out.items()
                    ),
                )
            )
    rows += [("evaluation", used), ("verdict", v["text"])]
    if v.get("note"):
        rows.append(("note", v["note"]))
    return label_table(rows)


def not_converged(gap: float, stderr: float) -> bool:
    """Whether an AIS - L_k gap says the AIS has not converged: AIS below the L_k by more than
    RESOLVED_AT paired standard errors (both are lower bounds of log p(x), so the L_k is then the tighter)."""
    return gap + RESOLVED_AT * stderr < 0


NOT_CONVERGED = (
    "{name} lies below an L_k by more than {n:g} s.e.{where}: {this} not converged (more --steps or "
    "--chains); both are lower bounds of log p(x), so there the L_k is the tighter"
)


def gap_text(gaps: list, name: str = "AIS") -> str:
    """The lines ``iwae evaluate --method ais`` adds: AIS - L_k on the same images for each L_k
    evaluation of the run (:func:`iwae.compare.ais_gaps`)."""
    rows = []
    for g in gaps:
        k = g.description_b.split(" ", 1)[0]  # L_5000
        images = f"the first {g.n_test} images of {g.b}" if g.prefix else f"the same {g.n_test} images ({g.b})"
        rows.append(
            (
                f"{name} - {k}",
                f"{g.gap:+.3f} ± {g.stderr:.3f} nats  (mean per-image log p-hat - {k} ± paired s.e., on {images}; "
                f"positive: {k} lies below AIS's estimate of log p(x))",
            )
        )
    if any(not_converged(g.gap, g.stderr) for g in gaps):
        rows.append(("note", NOT_CONVERGED.format(name=name, n=RESOLVED_AT, where="", this=f"this {name} has")))
    return label_table(rows) if rows else ""
