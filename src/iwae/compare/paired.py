"""Paired comparisons: two runs' NLLs on the same test images, two folders of seeds (or lists of runs)
over their seeds, and two evaluations of one run (AIS against L_k).

The difference of two runs' NLLs, d_n = -L^A(x_n) + L^B(x_n), is averaged over the same images; the
images' own spread cancels in d_n, so its paired standard error std(d) / sqrt(N) is far smaller than
the two NLLs' standard errors combined (:func:`iwae.evaluate.paired_difference`). It measures the
evaluation's noise only (which test images, which importance samples), not the training's: another
seed of either run moves the difference by more. Over seeds (seed s of A paired with seed s of B),
the per-seed differences D_s are averaged and ``stderr_across_seeds`` = std_s(D_s) / sqrt(S) (S - 1
in the standard deviation) includes the run-to-run noise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..evaluate import paired_difference
from ..rundir import member_seed, seed_members
from .records import choose_evaluation, describe_evaluation, evaluation_kind, evaluation_records, load_bounds
from .verdict import verdict

__all__ = ["compare_runs", "EvaluationGap", "evaluation_gap", "ais_gaps"]

RunDir = str | os.PathLike


def _pair(run_a: Path, run_b: Path, stem_a: str, stem_b: str) -> dict:
    meta_a, l_a = load_bounds(run_a, stem_a)
    meta_b, l_b = load_bounds(run_b, stem_b)
    sha_a, sha_b = ((m.get("model") or {}).get("sha256") for m in (meta_a, meta_b))
    if sha_a is not None and sha_a == sha_b:
        raise ValueError(
            f"{run_a} and {run_b} hold the same model (model.safetensors sha256 {sha_a[:12]}...): "
            f"a run compared with itself (is one a copy of the other?)"
        )
    if len(l_a) < 2:
        raise ValueError(f"a paired standard error needs at least 2 test images, got {len(l_a)}")
    # NLL_A - NLL_B = (-L_A) - (-L_B) = L_B - L_A, per image
    diff, stderr = paired_difference(l_b, l_a)
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "nll_a": float(-l_a.mean()),
        "nll_b": float(-l_b.mean()),
        "nll_stderr_a": float(l_a.std(ddof=1) / math.sqrt(len(l_a))),
        "nll_stderr_b": float(l_b.std(ddof=1) / math.sqrt(len(l_b))),
        "difference": diff,
        "paired_stderr": stderr,
        # what the two standard errors would give without pairing, for contrast
        "unpaired_stderr": float(math.sqrt(l_a.var(ddof=1) / len(l_a) + l_b.var(ddof=1) / len(l_b))),
        "n_test": int(meta_a["n_test"]),
        "test_images": meta_a["test_images"],
    }


def _side(value: RunDir | Sequence[RunDir], name: str) -> tuple[str, list[Path], Path | None]:
    """``(kind, runs, folder)`` of one side: ``run`` (one run folder), ``seeds`` (a folder of
    seeds: its members, in seed order) or ``list`` (runs given one by one, paired by position)."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        members = seed_members(path)
        return ("seeds", members, path) if members else ("run", [path], None)
    runs = [Path(v) for v in value]
    grouped = [str(r) for r in runs if seed_members(r)]
    if grouped:
        raise ValueError(
            f"{name} lists {', '.join(grouped)}, a folder of seeds; give the folder alone (its seeds are "
            f"paired with the other folder's) or its runs one by one"
        )
    return "list", runs, None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def compare_runs(
    run_a: RunDir | Sequence[RunDir],
    run_b: RunDir | Sequence[RunDir],
    *,
    method: str = "lk",
    k: int | None = None,
    seed: int | None = None,
    test_subset: int | None = None,
    evaluation: str | None = None,
    accept_changed_data: bool = False,
) -> dict:
    """NLL(A) - NLL(B) on the same test images with its paired standard error (negative: A is better),
    and a verdict in words.

    Args:
        run_a, run_b: a run folder each; or a folder of seeds each (``iwae train --seeds``: seed s of
            A is paired with seed s of B, on the seeds both have); or equally long lists of runs
            (one per training seed, paired by position).
        method, k, seed, test_subset: which evaluation to use: of ``method`` (``lk``, the default, or
            ``ais``), narrowed by k, the number of test images and the seed of the samples where given.
            There must be exactly one that every run has (same method and settings, images and seed,
            :func:`iwae.compare.evaluations_match`); when several fit, the error lists them.
        evaluation: use this file stem (e.g. ``eval_k5000_n500_seed0``) instead.
        accept_changed_data: pair evaluations made on data files that changed since their runs were
            trained (``iwae evaluate --accept-changed-data``), deliberately.

    Returns:
        For one run a side: ``run_a``, ``run_b``, ``nll_a``, ``nll_b`` (each with ``nll_stderr_*``
        over images), ``difference``, ``paired_stderr``, ``unpaired_stderr``, ``n_test``,
        ``test_images``; for seeds: ``difference`` (the mean of the per-seed differences),
        ``stderr_across_seeds``, ``pooled_paired_stderr``, ``seeds`` (the number of pairs),
        ``seed_numbers`` (for folders of seeds), ``unmatched`` (seeds one folder has and the other
        has not), ``pairs`` (each pair's dict) and ``range`` (the smallest and largest per-seed
        difference). Both with ``evaluation`` (``{"a", "b", "description"}``: the file stems used and
        what they measured), ``method``, ``k``, ``seed`` and ``verdict`` (:func:`iwae.compare.verdict`).

    Raises:
        FileNotFoundError: a run or its evaluation is missing (the message names the command).
        ValueError: a run compared with itself, evaluations that do not pair, several that fit, or
            sides of different kinds or lengths.
    """
    kind_a, runs_a, folder_a = _side(run_a, "A")
    kind_b, runs_b, folder_b = _side(run_b, "B")
    if kind_a != kind_b:
        described = {"run": "one run", "seeds": "a folder of seeds", "list": "a list of runs"}
        raise ValueError(
            f"A is {described[kind_a]} and B is {described[kind_b]}: compare a run with a run, a folder "
            f"of seeds with a folder of seeds, or a list of runs with a list of as many"
        )
    if folder_a is not None and _same(folder_a, folder_b):
        raise ValueError(f"A and B are the same folder of seeds ({folder_a}): nothing to compare it with")
    unmatched = None
    if kind_a == "seeds":
        seeds_a = {member_seed(r): r for r in runs_a}
        seeds_b = {member_seed(r): r for r in runs_b}
        common = sorted(set(seeds_a) & set(seeds_b))
        if not common:
            raise ValueError(
                f"{folder_a} (seeds {sorted(seeds_a)}) and {folder_b} (seeds {sorted(seeds_b)}) have no seed in "
                f"common; seed s of one folder is paired with seed s of the other"
            )
        unmatched = {"a": sorted(set(seeds_a) - set(common)), "b": sorted(set(seeds_b) - set(common))}
        runs_a, runs_b = [seeds_a[s] for s in common], [seeds_b[s] for s in common]
    elif not runs_a or len(runs_a) != len(runs_b):
        raise ValueError(
            f"comparing over seeds pairs run i of A with run i of B: got {len(runs_a)} and {len(runs_b)} runs"
        )
    for a, b in zip(runs_a, runs_b):
        if _same(a, b):
            raise ValueError(
                f"A and B are the same run ({a}): a run compared with itself; two evaluations of one run "
                f"are compared by iwae.compare.evaluation_gap (AIS - L_k: iwae evaluate RUN --method ais)"
            )
    targets = {str(r): str(folder) for folder, runs in ((folder_a, runs_a), (folder_b, runs_b)) if folder for r in runs}
    chosen = choose_evaluation(
        runs_a + runs_b,
        method=method,
        k=k,
        test_subset=test_subset,
        seed=seed,
        evaluation=evaluation,
        targets=targets,
        accept_changed_data=accept_changed_data,
    )
    pairs = [_pair(a, b, chosen[a], chosen[b]) for a, b in zip(runs_a, runs_b)]
    record = evaluation_records(runs_a[0])[chosen[runs_a[0]]]
    kind = evaluation_kind(record)
    about = {
        "evaluation": {"a": chosen[runs_a[0]], "b": chosen[runs_b[0]], "description": describe_evaluation(record)},
        "method": kind["method"],
        "k": kind["settings"].get("k"),
        "seed": kind["seed"],
    }
    if kind_a == "run":
        result = {**pairs[0], **about}
    else:
        d = np.array([p["difference"] for p in pairs])
        s = len(d)
        result = {
            "difference": float(d.mean()),
            "stderr_across_seeds": float(d.std(ddof=1) / math.sqrt(s)) if s > 1 else None,  # strict JSON: no NaN
            "pooled_paired_stderr": float(math.sqrt(sum(p["paired_stderr"] ** 2 for p in pairs)) / s),
            "seeds": s,
            "pairs": pairs,
            "range": [float(d.min()), float(d.max())],
            "n_test": pairs[0]["n_test"],
            "test_images": pairs[0]["test_images"],
            **about,
        }
        if kind_a == "seeds":
            result.update(
                run_a=str(folder_a),
                run_b=str(folder_b),
                seed_numbers=[member_seed(r) for r in runs_a],
                unmatched=unmatched,
            )
    result["verdict"] = verdict(result)
    return result


# ----------------------------------------------------------------------------- two evaluations of one run
@dataclass(frozen=True)
class EvaluationGap:
    """Two evaluations of one run on the same test images, paired image by image.

    ``gap`` = (1/N) sum_n [v_a(x_n) - v_b(x_n)], where v_a and v_b are the per-image log-likelihood
    estimates of evaluations ``a`` and ``b`` (L_k, or AIS's log p-hat), in nats; ``stderr`` =
    std_n(v_a - v_b) / sqrt(N) (N - 1 in the standard deviation). Positive: ``a``'s estimates are the
    higher. Both L_k and AIS are stochastic lower bounds of log p(x), so for a = AIS and b = L_k the
    gap says how far L_k lies below log p(x) at least (AIS's own shortfall comes on top); it is
    NLL_b - NLL_a of the two evaluations' test NLLs.

    ``n_test`` images were paired: ``b`` may be an evaluation of more images, the first ``n_test`` of
    which are ``a``'s (``prefix`` is then True).
    """

    run_dir: str
    a: str
    b: str
    gap: float
    stderr: float
    n_test: int
    description_a: str
    description_b: str
    prefix: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _same_images(a: dict, b: dict) -> tuple[bool, bool]:
    """``(pairs, prefix)``: whether b's images include a's as its first ones (the same dataset and
    split, b measured at least as many), and whether b measured more."""
    ia, ib = evaluation_kind(a)["images"], evaluation_kind(b)["images"]
    same_set = all(ia[key] == ib[key] for key in ("dataset", "split", "of"))
    if not same_set or not isinstance(ia["first"], int) or not isinstance(ib["first"], int):
        return False, False
    return ib["first"] >= ia["first"], ib["first"] > ia["first"]


def evaluation_gap(run_dir: RunDir, a: str, b: str) -> EvaluationGap:
    """The paired gap between evaluations ``a`` and ``b`` (file stems) of the run ``run_dir``:
    mean of v_a - v_b over the same images with its paired standard error (:class:`EvaluationGap`).
    ``b`` may cover more images than ``a``: its first ones are paired.

    Raises:
        FileNotFoundError: a run or evaluation is missing.
        ValueError: ``a`` and ``b`` are the same evaluation, or not of the same images.
    """
    if a == b:
        raise ValueError(f"evaluations a and b are both {a}: compare two different evaluations")
    meta_a, v_a = load_bounds(run_dir, a)
    meta_b, v_b = load_bounds(run_dir, b)
    pairs, prefix = _same_images(meta_a, meta_b)
    if not pairs:
        what = f"{a} ({describe_evaluation(meta_a)}) and {b} ({describe_evaluation(meta_b)})"
        if _same_images(meta_b, meta_a)[0]:  # b's images are a's first ones: the other order pairs them
            raise ValueError(f"{what}: b must cover a's images; swap a and b (the gap is then a - b's negative)")
        raise ValueError(f"{what} are not of the same test images; evaluate them on the same --test-subset")
    gap, stderr = paired_difference(v_a, v_b[: len(v_a)])
    return EvaluationGap(
        str(run_dir), a, b, gap, stderr, len(v_a), describe_evaluation(meta_a), describe_evaluation(meta_b), prefix
    )


def ais_gaps(run_dir: RunDir, ais: str | None = None) -> list[EvaluationGap]:
    """AIS - L_k on the same images (:class:`EvaluationGap`, a = the AIS evaluation ``ais``, b = an L_k
    evaluation), for every L_k evaluation of the run that covers the AIS evaluation's images, the
    largest k first (and of one k, the one of exactly those images first). Empty when there is none.

    ``ais``: the AIS evaluation's file stem; None: the run's only AIS evaluation.

    Raises:
        FileNotFoundError: the run, or an AIS evaluation, is missing.
        ValueError: ``ais`` is None and the run has several AIS evaluations.
    """
    records = evaluation_records(run_dir)
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    if ais is None:
        found = [s for s, r in records.items() if evaluation_kind(r)["method"] == "ais"]
        if len(found) != 1:
            raise (ValueError if found else FileNotFoundError)(
                f"{run_dir} has {len(found) or 'no'} AIS evaluations{': ' + ', '.join(found) if found else ''}; "
                + ("name one (ais=STEM)" if found else "make one with: iwae evaluate RUN --method ais")
            )
        ais = found[0]
    if ais not in records:
        raise FileNotFoundError(f"{Path(run_dir) / ais}.json not found (or not an evaluation)")
    candidates = []
    for stem, record in records.items():
        if evaluation_kind(record)["method"] != "lk":
            continue
        pairs, prefix = _same_images(records[ais], record)
        if pairs:
            candidates.append((-(record.get("k") or 0), prefix, stem))
    return [evaluation_gap(run_dir, ais, stem) for *_, stem in sorted(candidates)]
