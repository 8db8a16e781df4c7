"""Paired comparisons of two runs' test NLL, on the same test images, and over seeds.

    from iwae.compare import compare_runs
    compare_runs("runs/iwae-k5", "runs/vae-k5")                          # one run a side
    compare_runs(["runs/iwae-s0", "runs/iwae-s1"], ["runs/vae-s0", "runs/vae-s1"])   # seeds paired

Evaluation saves the per-image bounds L_k(x_n) beside its JSON
(``RUN/{iwae.evaluate.eval_name(k, seed, test_subset)}.npy``). The difference of two runs' NLLs,
d_n = -L_k^A(x_n) + L_k^B(x_n), is averaged over the same images; the images' own spread cancels in
d_n, so its paired standard error std(d) / sqrt(N) is far smaller than the two NLLs' standard errors
combined (:func:`iwae.evaluate.paired_difference`).

Two evaluations are paired only when :func:`iwae.rundir.comparable` finds nothing that differs: the
same test tensor (its SHA-256, recorded by the evaluation after binarization or dequantisation), the same
method and settings (L_k's k; AIS's T, C, L, schedule and initial distribution), the same units (a code
length or a density), and data files unchanged since training (or accepted deliberately with
``accept_changed_data``). Otherwise the comparison is refused with its one-line reason; an evaluation
written before these records existed is refused with the command that makes it again.

Over seeds (lists of runs, paired by position: seed s of A with seed s of B), the per-seed
differences D_s are averaged; ``stderr_across_seeds`` = std_s(D_s) / sqrt(S) includes the
run-to-run (training) noise, ``pooled_paired_stderr`` = sqrt(sum_s se_s^2) / S only the test
images' and the Monte Carlo noise within each pair. A difference is larger than the run-to-run
noise when it is several ``stderr_across_seeds`` from 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .evaluate import paired_difference
from .rundir import comparable, eval_name, evaluation_files, read_evaluation
from .tables import label_table

__all__ = ["load_bounds", "compare_runs", "compare_text", "comparable"]

RunDir = str | os.PathLike


def _evaluate_command(run_dir: Path, k: int, seed: int, test_subset: int | None, evaluation: str | None = None) -> str:
    if evaluation is not None:  # another method's files (AIS: iwae.ais.ais_evaluate)
        return f"the evaluation that writes {evaluation}.json (for ais_...: iwae evaluate {run_dir} --method ais)"
    flags = (
        f" --k {k}"
        + (f" --test-subset {test_subset}" if test_subset is not None else "")
        + (f" --seed {seed}" if seed != 0 else "")
    )
    return f"iwae evaluate {run_dir}{flags}"


def load_bounds(
    run_dir: RunDir, *, k: int = 5000, seed: int = 0, test_subset: int | None = None, evaluation: str | None = None
) -> tuple[dict, np.ndarray]:
    """The evaluation JSON of a run and its per-image bounds L_k(x_n) (float64, in test-set order).

    ``evaluation`` names another file stem instead of ``eval_name(k, seed, test_subset)``, e.g. an
    AIS evaluation's ``iwae.ais.ais_eval_name(...)``.

    Raises:
        FileNotFoundError: the run or the evaluation is missing (the message names the
            ``iwae evaluate`` command that writes it).
        ValueError: the files do not agree with each other (the bounds are not the JSON's N images).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    name = evaluation if evaluation is not None else eval_name(k, seed, test_subset)
    files = {kind: run_dir / f for kind, f in evaluation_files(name).items()}
    json_path, npy_path = files["json"], files["bounds"]
    if not json_path.is_file() or not npy_path.is_file():
        missing = json_path if not json_path.is_file() else npy_path
        raise FileNotFoundError(
            f"{missing} not found; make it with: {_evaluate_command(run_dir, k, seed, test_subset, evaluation)}"
        )
    try:
        meta, bounds = read_evaluation(run_dir, name)
    except CheckpointError as e:  # a truncated or foreign file
        cause = e.__cause__ or e
        raise ValueError(
            f"cannot read the evaluation {run_dir / name}.*: "
            f"{str(cause).splitlines()[0] if str(cause) else repr(cause)}; "
            f"write it again with: {_evaluate_command(run_dir, k, seed, test_subset, evaluation)}"
        ) from None
    if not isinstance(meta, dict) or "n_test" not in meta or "test_images" not in meta:
        raise ValueError(f"{json_path} is not an evaluation of iwae (no n_test or test_images)")
    if bounds.ndim != 1 or len(bounds) != meta["n_test"]:
        raise ValueError(
            f"{npy_path} holds {bounds.shape} values but {json_path.name} says n_test = "
            f"{meta['n_test']}; write it again with: "
            f"{_evaluate_command(run_dir, k, seed, test_subset, evaluation)}"
        )
    if not np.isfinite(bounds).all():
        raise ValueError(f"{npy_path} holds non-finite bounds")
    images = meta["test_images"] if isinstance(meta["test_images"], dict) else {}
    if not images.get("sha256"):
        raise ValueError(
            f"{json_path} records no SHA-256 of its test images (written by an older iwae), so it cannot be "
            f"checked to be on the same images as another; make it again with: "
            f"{_evaluate_command(run_dir, k, seed, test_subset, evaluation)}"
        )
    return meta, bounds.astype(np.float64)


def _pair(
    run_a: RunDir,
    run_b: RunDir,
    k: int,
    seed: int,
    test_subset: int | None,
    evaluation: str | None,
    accept_changed_data: bool = False,
) -> dict:
    meta_a, l_a = load_bounds(run_a, k=k, seed=seed, test_subset=test_subset, evaluation=evaluation)
    meta_b, l_b = load_bounds(run_b, k=k, seed=seed, test_subset=test_subset, evaluation=evaluation)
    why = comparable(meta_a, meta_b, accept_changed_data=accept_changed_data)
    if why is not None:
        raise ValueError(f"cannot pair the evaluations of {run_a} and {run_b}: {why}")
    if len(l_a) < 2:
        raise ValueError(f"a paired standard error needs at least 2 test images, got {len(l_a)}")
    # NLL_A - NLL_B = (-L_A) - (-L_B) = L_B - L_A, per image
    diff, stderr = paired_difference(l_b, l_a)
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "nll_a": float(-l_a.mean()),
        "nll_b": float(-l_b.mean()),
        "difference": diff,
        "paired_stderr": stderr,
        # what the two standard errors would give without pairing, for contrast
        "unpaired_stderr": float(math.sqrt(l_a.var(ddof=1) / len(l_a) + l_b.var(ddof=1) / len(l_b))),
        "n_test": int(meta_a["n_test"]),
        "test_images": meta_a["test_images"],
    }


def compare_runs(
    run_a: RunDir | Sequence[RunDir],
    run_b: RunDir | Sequence[RunDir],
    *,
    k: int = 5000,
    seed: int = 0,
    test_subset: int | None = None,
    evaluation: str | None = None,
    accept_changed_data: bool = False,
) -> dict:
    """NLL(A) - NLL(B) on the same test images with its paired standard error (negative: A is better).

    Args:
        run_a, run_b: a run directory each, or equally long lists of them (one per training seed,
            paired by position).
        k, seed, test_subset: which evaluation to read (``iwae evaluate RUN --k K --seed S
            [--test-subset N]``), the same for every run.
        evaluation: read this file stem instead (e.g. an AIS evaluation, ``iwae.ais.ais_eval_name``).
        accept_changed_data: pair evaluations made on data files that changed since their runs were
            trained (``iwae evaluate --accept-changed-data``), deliberately.

    Returns:
        For one run a side: ``run_a``, ``run_b``, ``nll_a``, ``nll_b``, ``difference``,
        ``paired_stderr``, ``unpaired_stderr``, ``n_test``, ``test_images``, ``k``, ``seed``.
        For lists: ``difference`` (the mean of the per-seed differences), ``stderr_across_seeds``,
        ``pooled_paired_stderr``, ``seeds`` (the number of pairs) and ``pairs`` (each pair's dict).

    Raises:
        FileNotFoundError: a run or its evaluation is missing.
        ValueError: the evaluations may not be paired (:func:`iwae.rundir.comparable` says why; one without
            a test-image SHA-256 must be made again), or the lists differ in length.
    """
    single = isinstance(run_a, (str, os.PathLike)) and isinstance(run_b, (str, os.PathLike))
    if single:
        return {**_pair(run_a, run_b, k, seed, test_subset, evaluation, accept_changed_data), "k": k, "seed": seed}
    runs_a = [run_a] if isinstance(run_a, (str, os.PathLike)) else list(run_a)
    runs_b = [run_b] if isinstance(run_b, (str, os.PathLike)) else list(run_b)
    if not runs_a or len(runs_a) != len(runs_b):
        raise ValueError(
            f"comparing over seeds pairs run i of A with run i of B: got {len(runs_a)} and {len(runs_b)} runs"
        )
    pairs = [_pair(a, b, k, seed, test_subset, evaluation, accept_changed_data) for a, b in zip(runs_a, runs_b)]
    if any(p["test_images"].get("sha256") != pairs[0]["test_images"].get("sha256") for p in pairs):
        raise ValueError("the seeds' evaluations are on different test images; evaluate all runs on the same ones")
    d = np.array([p["difference"] for p in pairs])
    s = len(d)
    return {
        "difference": float(d.mean()),
        "stderr_across_seeds": float(d.std(ddof=1) / math.sqrt(s)) if s > 1 else math.nan,
        "pooled_paired_stderr": float(math.sqrt(sum(p["paired_stderr"] ** 2 for p in pairs)) / s),
        "seeds": s,
        "pairs": pairs,
        "n_test": pairs[0]["n_test"],
        "test_images": pairs[0]["test_images"],
        "k": k,
        "seed": seed,
    }


def compare_text(result: dict) -> str:
    """The lines ``iwae compare`` prints for a result of :func:`compare_runs`."""
    n = f"{result['n_test']} test images"
    if "pairs" not in result:
        return label_table(
            [
                ("NLL A", f"{result['nll_a']:.3f}  ({result['run_a']})"),
                ("NLL B", f"{result['nll_b']:.3f}  ({result['run_b']})"),
                (
                    "A - B",
                    f"{result['difference']:+.3f} ± {result['paired_stderr']:.3f}  (paired s.e. over {n}; "
                    f"unpaired it would be ± {result['unpaired_stderr']:.3f})",
                ),
            ]
        )
    return label_table(
        [
            (
                "A - B",
                f"{result['difference']:+.3f} ± {result['stderr_across_seeds']:.3f}  (mean over {result['seeds']} "
                f"seed pairs ± s.e. across seeds)",
            ),
            ("within pairs", f"± {result['pooled_paired_stderr']:.3f}  (pooled paired s.e. over {n})"),
            *(
                (f"seed pair {i}", f"{p['difference']:+.3f} ± {p['paired_stderr']:.3f}")
                for i, p in enumerate(result["pairs"])
            ),
        ]
    )
