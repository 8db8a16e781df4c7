"""The evaluations in run folders, and which one two runs (or two folders of seeds) have in common.

An evaluation is a JSON record and the per-image values beside it (``RUN/eval_k...`` for L_k, written
by :func:`iwae.evaluate.evaluate`; ``RUN/ais_...`` for AIS, by :func:`iwae.ais.ais_evaluate`). Two
runs are compared on an evaluation that both have: the same method and settings (k; AIS's T, C, L,
schedule and initial distribution), the same test images and the same seed of the samples. Whether
two records are such a pair is decided in one place, :func:`evaluations_match`;
:func:`choose_evaluation` finds the pair, or says what each run has and how to choose or make one.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..rundir import comparable, eval_name, evaluation_files, list_evaluations, read_evaluation

__all__ = [
    "METHODS",
    "evaluation_kind",
    "describe_evaluation",
    "evaluations_match",
    "evaluation_records",
    "choose_evaluation",
    "load_bounds",
    "make_command",
]

METHODS = ("lk", "ais")  # L_k (iwae evaluate) and AIS (iwae evaluate --method ais)
AIS_SETTINGS = ("steps", "chains", "leapfrog", "schedule", "initial")


def evaluation_kind(record: Mapping) -> dict:
    """What an evaluation record measured, as the fields two comparable records share: ``method``
    (``lk`` or ``ais``), ``settings`` (``{"k"}`` for L_k; T, C, L, schedule and initial for AIS),
    ``images`` (dataset, split, the first N of how many), ``n`` (images measured) and ``seed``."""
    method = "ais" if "steps" in record else "lk"
    settings = {key: record.get(key) for key in AIS_SETTINGS} if method == "ais" else {"k": record.get("k")}
    images = record.get("test_images") if isinstance(record.get("test_images"), Mapping) else {}
    return {
        "method": method,
        "settings": settings,
        "images": {key: images.get(key) for key in ("dataset", "split", "first", "of")},
        "n": record.get("n_test"),
        "seed": record.get("seed"),
    }


def _method_text(kind: dict) -> str:
    s = kind["settings"]
    if kind["method"] == "lk":
        return f"L_{s['k']}"
    return (
        f"AIS (T = {s['steps']}, C = {s['chains']}, L = {s['leapfrog']}, {s['schedule']} schedule, "
        f"from the {s['initial']})"
    )


def _images_text(kind: dict) -> str:
    images = kind["images"]
    first, of = images.get("first"), images.get("of")
    which = f"all {of}" if first == of else f"the first {first} of {of}"
    return f"{which} {images.get('dataset')} test images"


def describe_evaluation(record: Mapping) -> str:
    """One line saying what an evaluation measured: ``L_5000 on the first 500 of 10000 mnist test
    images, seed 0``."""
    kind = evaluation_kind(record)
    return f"{_method_text(kind)} on {_images_text(kind)}, seed {kind['seed']}"


def evaluations_match(a: Mapping, b: Mapping, *, accept_changed_data: bool = False) -> str | None:
    """None when evaluation records ``a`` and ``b`` measured two models the same way on the same
    images, so that their per-image values pair; else why not, in a few words.

    Compared here: the method and its settings (k; AIS's T, C, L, schedule, initial distribution),
    the test images (dataset, split, the first N of how many, N measured) and the seed of the samples;
    then :func:`iwae.rundir.comparable`: the SHA-256 of the test tensor measured, the units (a code length
    or a density) and data files unchanged since training (unless ``accept_changed_data``). Every
    comparison of two runs asks this function, so that what makes two evaluations comparable is decided
    in this one place.
    """
    ka, kb = evaluation_kind(a), evaluation_kind(b)
    if ka["method"] != kb["method"] or ka["settings"] != kb["settings"]:
        return f"different methods or settings ({_method_text(ka)} vs {_method_text(kb)})"
    if ka["images"] != kb["images"] or ka["n"] != kb["n"]:
        return f"different test images ({ka['n']} images {ka['images']} vs {kb['n']} images {kb['images']})"
    if ka["seed"] != kb["seed"]:
        return f"different seeds of the samples ({ka['seed']} vs {kb['seed']})"
    # the integrity of the records themselves: the digest of the exact test tensor (binarization
    # included), the units, the data files (iwae.rundir.comparable, the one rule of which pairs)
    why = comparable(a, b, accept_changed_data=accept_changed_data)
    for record in (a, b):  # an evaluation older than the test tensor's digest: name the command that remakes it
        images = record.get("test_images") if isinstance(record.get("test_images"), Mapping) else {}
        run = (record.get("model") or {}).get("run_dir") if isinstance(record.get("model"), Mapping) else None
        if why is not None and not images.get("sha256") and run:
            return f"{why}; make it again with: {make_command(run, evaluation_kind(record))}"
    return why


def evaluation_records(run_dir: str | os.PathLike) -> dict[str, dict]:
    """The evaluations of a run by file stem, each its JSON record (unreadable or foreign JSON files,
    e.g. half-written by an old version, are left out: they cannot be chosen)."""
    out = {}
    for stem in list_evaluations(run_dir):
        try:
            record = json.loads((Path(run_dir) / f"{stem}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "n_test" in record and "test_images" in record:
            out[stem] = record
    return out


def make_command(target: str | os.PathLike, kind: dict) -> str:
    """The ``iwae evaluate`` command that writes an evaluation of ``kind`` (:func:`evaluation_kind`)
    into ``target`` (a run, or a folder of seeds: every member)."""
    images = kind["images"]
    subset = images.get("first") if images.get("first") != images.get("of") else None
    flags = []
    if kind["method"] == "ais":
        s = kind["settings"]
        flags += ["--method ais", f"--steps {s['steps']}", f"--chains {s['chains']}", f"--leapfrog {s['leapfrog']}"]
        flags += [f"--schedule {s['schedule']}"] if s.get("schedule") not in (None, "sigmoid") else []
        flags += [f"--initial {s['initial']}"] if s.get("initial") not in (None, "encoder") else []
    else:
        flags.append(f"--k {kind['settings']['k']}")
    flags += [f"--test-subset {subset}"] if subset is not None else []
    flags += [f"--seed {kind['seed']}"] if kind.get("seed") not in (None, 0) else []
    return f"iwae evaluate {shlex.quote(str(target))} " + " ".join(flags)


def _filter_command(target: str | os.PathLike, method: str, k: int | None, test_subset, seed) -> str:
    """The ``iwae evaluate`` command for the evaluation the filters ask for (L_5000 where no k is given)."""
    flags = ["--method ais"] if method == "ais" else [f"--k {k or 5000}"]
    flags += [f"--test-subset {test_subset}"] if test_subset is not None else []
    flags += [f"--seed {seed}"] if seed not in (None, 0) else []
    return f"iwae evaluate {shlex.quote(str(target))} " + " ".join(flags)


def _selected(record: dict, method: str, k: int | None, test_subset: int | None, seed: int | None) -> bool:
    kind = evaluation_kind(record)
    return (
        kind["method"] == method
        and (k is None or kind["settings"].get("k") == k)
        and (test_subset is None or kind["n"] == test_subset)
        and (seed is None or kind["seed"] == seed)
    )


def _listing(records: Mapping[str, dict]) -> str:
    return ", ".join(f"{stem} ({describe_evaluation(r)})" for stem, r in records.items()) or "none"


def choose_evaluation(
    runs: Sequence[str | os.PathLike],
    *,
    method: str = "lk",
    k: int | None = None,
    test_subset: int | None = None,
    seed: int | None = None,
    evaluation: str | None = None,
    targets: Mapping[str, str] | None = None,
    accept_changed_data: bool = False,
) -> dict[Path, str]:
    """The evaluation every run of ``runs`` has, as each run's file stem.

    With ``evaluation`` (a file stem), that one. Otherwise the evaluations of ``method`` (``lk`` or
    ``ais``) narrowed by ``k``, ``test_subset`` (N images) and ``seed`` where given, that all runs
    have and :func:`evaluations_match` pairs; there must be exactly one. ``targets`` maps a run to
    what the suggested ``iwae evaluate`` command should name (a member's folder of seeds).

    Raises:
        FileNotFoundError: a run is missing, or some run lacks the evaluation (the message names the
            ``iwae evaluate`` command that makes it).
        ValueError: several evaluations fit (the message lists them and how to choose one), or the
            runs' evaluations of one name do not pair (the message says why).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    runs = [Path(r) for r in runs]
    for run in runs:
        if not run.is_dir():
            raise FileNotFoundError(f"run directory {run} not found")
    targets = dict(targets or {})

    def target(run: Path) -> str:
        return targets.get(str(run), str(run))

    records = {run: evaluation_records(run) for run in runs}
    if evaluation is not None:
        missing = [run for run in runs if evaluation not in records[run]]
        if missing:
            run = missing[0]
            have = next((records[r][evaluation] for r in runs if evaluation in records[r]), None)
            how = (
                make_command(target(run), evaluation_kind(have))
                if have
                else f"the iwae evaluate command that writes {evaluation}.json"
            )
            raise FileNotFoundError(f"{run / evaluation}.json not found; make it with: {how}")
        chosen = dict.fromkeys(runs, evaluation)
        _check_pairs(chosen, records, accept_changed_data)
        return chosen

    mine = {run: {s: r for s, r in records[run].items() if _selected(r, method, k, test_subset, seed)} for run in runs}
    reference = next((run for run in runs if mine[run]), None)
    if reference is None:
        what = "L_k" if method == "lk" else "AIS"
        narrowed = ", ".join(
            f"{name} {value}" for name, value in (("k", k), ("test subset", test_subset), ("seed", seed)) if value
        )
        where = " or ".join(dict.fromkeys(target(r) for r in runs))
        commands = " and ".join(dict.fromkeys(_filter_command(target(r), method, k, test_subset, seed) for r in runs))
        raise FileNotFoundError(
            f"no {what} evaluation{' with ' + narrowed if narrowed else ''} in {where}; make it with: {commands}"
        )
    candidates = []
    refused: dict[str, str] = {}
    for stem, record in mine[reference].items():
        chosen = {reference: stem}
        for run in runs:
            if run == reference:
                continue
            fits = [
                s
                for s, r in mine[run].items()
                if evaluations_match(record, r, accept_changed_data=accept_changed_data) is None
            ]
            if not fits:
                if stem in mine[run]:  # a namesake that does not pair: say why
                    refused[stem] = (
                        f"{reference} and {run}: "
                        f"{evaluations_match(record, mine[run][stem], accept_changed_data=accept_changed_data)}"
                    )
                break
            chosen[run] = stem if stem in fits else fits[0]
        else:
            candidates.append(chosen)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        listed = _listing({c[reference]: records[reference][c[reference]] for c in candidates})
        raise ValueError(
            f"{len(candidates)} evaluations fit ({listed}); choose one with --evaluation NAME "
            f"(or narrow with --k, --test-subset, --seed)"
        )
    if refused:
        stem, why = next(iter(refused.items()))
        raise ValueError(f"the evaluations {stem} do not pair: {why}; a paired comparison needs the same images")
    # none fits: name the first run that lacks the reference's first evaluation, and its command
    first = next(iter(mine[reference].values()))
    lacking = next(
        r
        for r in runs
        if not any(
            evaluations_match(first, x, accept_changed_data=accept_changed_data) is None for x in mine[r].values()
        )
    )
    raise FileNotFoundError(
        f"{target(lacking)} has no evaluation that {target(reference)} has ({_listing(mine[reference])}; "
        f"{target(lacking)} has {_listing(mine[lacking])}); make it with: "
        f"{make_command(target(lacking), evaluation_kind(first))}"
    )


def _check_pairs(chosen: Mapping[Path, str], records: Mapping[Path, dict], accept_changed_data: bool) -> None:
    runs = list(chosen)
    first = records[runs[0]][chosen[runs[0]]]
    for run in runs[1:]:
        why = evaluations_match(first, records[run][chosen[run]], accept_changed_data=accept_changed_data)
        if why:
            raise ValueError(
                f"{runs[0]}'s {chosen[runs[0]]} and {run}'s {chosen[run]} do not pair: {why}; "
                f"a paired comparison needs the same images"
            )


def load_bounds(
    run_dir: str | os.PathLike,
    name: str | None = None,
    *,
    k: int = 5000,
    seed: int = 0,
    test_subset: int | None = None,
    evaluation: str | None = None,
) -> tuple[dict, np.ndarray]:
    """The record of evaluation ``name`` of a run and its per-image values (float64, test-set order);
    without ``name``, of ``evaluation`` (the same), else of L_k's ``eval_name(k, seed, test_subset)``.

    Raises:
        FileNotFoundError: the run or the evaluation is missing.
        ValueError: the files are unreadable or do not agree with each other.
    """
    run_dir = Path(run_dir)
    name = name or evaluation or eval_name(k, seed, test_subset)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    files = {kind: run_dir / f for kind, f in evaluation_files(name).items()}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
    try:
        meta, bounds = read_evaluation(run_dir, name)
    except CheckpointError as e:  # a truncated or foreign file
        cause = e.__cause__ or e
        raise ValueError(
            f"cannot read the evaluation {run_dir / name}.*: "
            f"{str(cause).splitlines()[0] if str(cause) else repr(cause)}; write it again"
        ) from None
    if not isinstance(meta, dict) or "n_test" not in meta or "test_images" not in meta:
        raise ValueError(f"{files['json']} is not an evaluation of iwae (no n_test or test_images)")
    if bounds.ndim != 1 or len(bounds) != meta["n_test"]:
        raise ValueError(
            f"{files['bounds']} holds {bounds.shape} values but {files['json'].name} says n_test = "
            f"{meta['n_test']}; write it again with: {make_command(run_dir, evaluation_kind(meta))}"
        )
    if not np.isfinite(bounds).all():
        raise ValueError(f"{files['bounds']} holds non-finite values")
    return meta, bounds.astype(np.float64)
