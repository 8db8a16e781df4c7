"""Paired comparisons of runs' test NLLs on the same test images: one run a side, two folders of seeds,
or two evaluations of one run; each with a verdict in words.

    from iwae.compare import compare_runs, compare_text, ais_gaps
    compare_runs("runs/iwae-k5", "runs/vae-k5")              # one run a side: the evaluation both have
    compare_runs("runs/iwae-seeds", "runs/vae-seeds")        # folders of seeds (iwae train --seeds)
    compare_runs(["runs/iwae-s0", "runs/iwae-s1"], ["runs/vae-s0", "runs/vae-s1"])   # paired by position
    ais_gaps("runs/iwae-k5")                                 # AIS - L_k of one run, on the same images

Evaluation saves the per-image values beside its JSON record (``RUN/eval_k...`` for L_k, ``RUN/ais_...``
for AIS). A comparison uses the evaluation every run has (:func:`choose_evaluation`; whether two
records pair is decided by :func:`evaluations_match` alone), refuses a run compared with itself, and
says which run has the lower NLL and whether the difference is resolved at 2 standard errors
(:func:`verdict`). One run a side, the standard error is evaluation noise only; over seeds it
includes the training noise.

The package: :mod:`.records` (the evaluations of a run and the choice among them), :mod:`.paired`
(the comparisons) and :mod:`.verdict` (the words and the printed lines).
"""

from .paired import EvaluationGap, ais_gaps, compare_runs, evaluation_gap
from .records import (
    choose_evaluation,
    describe_evaluation,
    evaluation_kind,
    evaluation_records,
    evaluations_match,
    load_bounds,
)
from .verdict import NOT_CONVERGED, RESOLVED_AT, compare_text, gap_text, not_converged, verdict

__all__ = [
    "compare_runs",
    "compare_text",
    "verdict",
    "RESOLVED_AT",
    "NOT_CONVERGED",
    "not_converged",
    "EvaluationGap",
    "evaluation_gap",
    "ais_gaps",
    "gap_text",
    "choose_evaluation",
    "evaluations_match",
    "evaluation_kind",
    "evaluation_records",
    "describe_evaluation",
    "load_bounds",
]
