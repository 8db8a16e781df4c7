"""What an experiment file may hold, checked before anything resolves: its keys, seeds, grid, evaluation,
published table and figures (:func:`check_spec`); and the runs a ``grid`` section generates."""

from __future__ import annotations

from ..config import TrainConfig
from ..config.grid import Run, distinct_runs, section_points
from ..errors import ExperimentError
from . import published as published_module

__all__ = ["check_spec", "run_entry", "PROTOCOLS", "FIGURES"]

PROTOCOLS = ("paper", "short")
FIGURES = ("curves", "samples", "reconstructions", "latent", "grid", "snr")
PROTOCOL_KEYS = {"test_subset", "eval_k", "description", "seeds"}  # protocol settings that are not TrainConfig fields
RUN_KEYS = {"name", "continue_from", "protocols", "published"}  # run entries that are not TrainConfig fields
AIS_KEYS = {"steps", "chains", "leapfrog", "test_subset"}  # evaluate.ais: settings of iwae.ais.ais_evaluate
TOP_KEYS = {
    "name",
    "title",
    "description",
    "name_format",
    "labels",
    "defaults",
    "matrix",
    "runs",
    "evaluate",
    "protocols",
    "published",
    "figures",
    "seeds",
    "grid",
    "compare",
}
# set per invocation, never by an experiment file: where and how a run executes
EXECUTION_KEYS = {"out", "data_dir", "device", "threads", "init_from", "init_sha256"}
_CONFIG_KEYS = set(TrainConfig.__dataclass_fields__)


def _check_seeds(seeds: object, source: str) -> list[int]:
    """``seeds`` if it is a non-empty list of distinct integers >= 0; else ExperimentError."""
    ok = isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ExperimentError(
            f"{source}: seeds must be a list of distinct integers >= 0, e.g. [0, 1, 2, 3], got {seeds!r}"
        )
    return list(seeds)


def _grid_runs(grid: dict) -> list[dict]:
    """One run entry per distinct training run of the grid's points (a file without ``runs``)."""
    return [run_entry(run) for run in distinct_runs(section_points(grid))]


def run_entry(run: Run) -> dict:
    """The experiment-file entry of a distinct run: its name and settings, and the row of Rainforth
    et al.'s table it corresponds to (M * K = 64 only; else ``published: null``)."""
    entry: dict = {"name": run.name, "objective": run.objective, "k": run.k}
    if run.objective in ("miwae", "piwae"):
        entry["m"] = run.m
    if run.objective == "ciwae":
        entry["beta"] = run.beta
    row = published_module.rainforth_by_run(run.k).get(run)
    entry["published"] = {"match": {"name": row["name"]}} if row else None
    return entry


def check_spec(spec: object, source: str) -> dict:
    """``spec`` (an experiment file's content) if it holds what an experiment may hold, with the runs of its
    ``grid`` when it has no ``runs``; else an ExperimentError naming ``source`` and what is wrong."""
    if not isinstance(spec, dict):
        raise ExperimentError(f"{source} must hold a mapping")
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ExperimentError(
            f"{source}: unknown keys {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}"
        )
    for key in ("name", "protocols"):
        if key not in spec:
            raise ExperimentError(f"{source} has no {key!r}")
    if spec.get("grid") is not None:
        if not isinstance(spec["grid"], dict) or set(spec["grid"]) - {"total", "ms", "betas"}:
            raise ExperimentError(f"{source}: grid must be a mapping of total, ms and betas, got {spec['grid']!r}")
        try:
            section_points(spec["grid"])
        except (ValueError, TypeError) as e:
            raise ExperimentError(f"{source}: grid: {e}") from None
        if "runs" not in spec:
            spec = {**spec, "runs": _grid_runs(spec["grid"])}
    if "runs" not in spec:
        raise ExperimentError(f"{source} has no 'runs' (nor a grid to generate them)")
    if "seeds" in spec:
        _check_seeds(spec["seeds"], source)
    if not isinstance(spec["runs"], list) or not spec["runs"] or not all(isinstance(r, dict) for r in spec["runs"]):
        raise ExperimentError(f"{source}: runs must be a non-empty list of mappings")
    if "name_format" not in spec and not all("name" in r for r in spec["runs"]):
        raise ExperimentError(f"{source}: give every run a name, or a name_format")
    if not isinstance(spec["protocols"], dict) or not all(isinstance(p, dict) for p in spec["protocols"].values()):
        raise ExperimentError(f"{source}: protocols must map names to settings")
    for name, proto in spec["protocols"].items():
        if "seeds" in proto:
            _check_seeds(proto["seeds"], f"{source}: protocol {name}")
    matrix = spec.get("matrix") or {}
    if not isinstance(matrix, dict) or not all(isinstance(v, list) and v for v in matrix.values()):
        raise ExperimentError(f"{source}: matrix must map settings to non-empty lists")
    for raw in spec["runs"]:
        bad = set(raw) - _CONFIG_KEYS - RUN_KEYS
        if bad or set(raw) & EXECUTION_KEYS:
            raise ExperimentError(
                f"{source}: a run sets {', '.join(sorted(bad or set(raw) & EXECUTION_KEYS))}, "
                f"which is not a run setting"
            )
    pairs = spec.get("compare")
    if pairs is not None and (
        not isinstance(pairs, list)
        or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) and p[0] != p[1] for p in pairs
        )
    ):
        raise ExperimentError(
            f"{source}: compare must be a list of pairs of two different run names, e.g. "
            f"[[iwae-k5, vae-k5]], got {pairs!r}"
        )
    for key in ("defaults", "evaluate", "published"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise ExperimentError(f"{source}: {key} must be a mapping, got {spec[key]!r}")
    evaluation = spec.get("evaluate") or {}
    unknown = set(evaluation) - {"k", "bound_ks", "seed", "ais"}
    if unknown:
        raise ExperimentError(
            f"{source}: evaluate has unknown keys {', '.join(sorted(unknown))}; allowed: k, bound_ks, seed, ais"
        )
    ais = evaluation.get("ais")
    if ais is not None and (
        not isinstance(ais, dict) or set(ais) - AIS_KEYS or not all(type(v) is int and v >= 1 for v in ais.values())
    ):
        raise ExperimentError(
            f"{source}: evaluate.ais must map some of {', '.join(sorted(AIS_KEYS))} to integers >= 1, got {ais!r}"
        )
    ks = (
        [evaluation.get("k", 5000), *evaluation.get("bound_ks", [])]
        if isinstance(evaluation.get("bound_ks", []), list)
        else [None]
    )
    if not all(type(k) is int and k >= 1 for k in ks) or type(evaluation.get("seed", 0)) is not int:
        raise ExperimentError(f"{source}: evaluate needs k >= 1, a list bound_ks of integers >= 1 and an integer seed")
    for raw in spec["runs"]:
        protocols = raw.get("protocols") or {}
        if not isinstance(protocols, dict) or not all(isinstance(v, dict) for v in protocols.values()):
            raise ExperimentError(f"{source}: a run's protocols must map protocol names to settings")
        if raw.get("published") is not None and not isinstance(raw["published"], dict):
            raise ExperimentError(f"{source}: a run's published must be a mapping or null")
    pub = spec.get("published")
    if pub:
        papers = published_module.load()["papers"]
        if pub.get("paper") not in papers or pub.get("table") not in papers[pub["paper"]]:
            raise ExperimentError(f"{source}: published needs paper (one of {', '.join(papers)}) and a table of it")
    labels = spec.get("labels", [])
    if not isinstance(labels, list) or set(labels) - _CONFIG_KEYS:
        raise ExperimentError(f"{source}: labels must be a list of run settings, got {labels!r}")
    figures = spec.get("figures", [])
    if not isinstance(figures, list):
        raise ExperimentError(f"{source}: figures must be a list, e.g. [curves, samples]")
    unknown = set(figures) - set(FIGURES)
    if unknown:
        raise ExperimentError(
            f"{source}: unknown figures {', '.join(sorted(unknown))}; choose among {', '.join(FIGURES)}"
        )
    return spec
