"""Experiments as data: a YAML file lists the training runs of a published experiment and its protocols.

    from iwae.experiments.spec import load_experiment
    exp = load_experiment("table1")                      # shipped: iwae/experiments/table1.yaml
    runs = exp.resolve("short", datasets=["mnist"])      # [RunSpec(name="mnist-l1-vae-k1", ...), ...]

An experiment file holds (see the shipped files in ``iwae/experiments/`` for complete examples)::

    name: table1
    title: ...                       # one line
    description: ...                 # free text
    name_format: "{dataset}-l{layers}-{objective}-k{k}"   # run names, from the run's settings
    labels: [dataset, layers, objective, k]              # the settings the report shows per run
    defaults: {batch_size: 20}       # TrainConfig settings of every run
    matrix: {dataset: [mnist, omniglot], layers: [1, 2]} # every run once per combination
    runs:                            # TrainConfig settings, plus name, continue_from, protocols, published
      - {objective: vae, k: 1}
      - {objective: iwae, k: 5}
    evaluate: {k: 5000, bound_ks: [], seed: 0}           # test L_k, further bounds, seed
    #   and optionally ais: {steps: 1000, chains: 16, leapfrog: 5, test_subset: 200}: AIS on the first
    #   test images beside L_k (iwae.ais.ais_evaluate), reported as NLL (AIS) and AIS - L_k
    compare: [[iwae-k5, vae-k5]]                         # pairs the report compares on the same images
    protocols:                       # named protocols: TrainConfig settings and test_subset
      paper: {epochs: null, test_subset: null}
      short: {epochs: 13, test_subset: 2000, description: ...}
    published:                       # where each run's published numbers are, or null
      paper: burda2016
      table: table1
      match: [dataset, layers, k]    # row fields equal to the run's settings (or a mapping of fixed values)
      values: {nll: "{objective}_nll"}            # our metric: the row's column (formatted with the run's settings)
      active_units: "{objective}_active"
    figures: [curves, samples, latent]
    seeds: [0, 1, 2, 3]              # every run once per training seed (also per protocol)
    grid: {total: 64, ms: [1, 8, 64], betas: [0, 0.5, 1]}  # Rainforth et al.'s (M, K) and beta sweep

``seeds`` (top level, or in a protocol, which wins) trains every run once per seed, each its own
run: seed 0 keeps the run's name (so an earlier one-seed folder is reused), seed s > 0 adds
``-s<s>`` (``iwae-k64-s1``); a continued run continues the run of its own seed. The runs of one
seed list share a ``group`` (the name without the suffix), over which ``iwae report`` gives the
mean and standard deviation. The test evaluation's seed (``evaluate.seed``) stays the same.

``grid`` names the points of Rainforth et al.'s study (:mod:`iwae.grid`): MIWAE and PIWAE at
(M, total / M) for every M in ``ms`` (default: all divisors), CIWAE at every beta. Each run
records the points it serves (identical objectives are one run: MIWAE(1, K) = PIWAE(1, K) =
CIWAE(0) = IWAE); a file without ``runs`` gets one run per distinct point, named as
:meth:`iwae.grid.Run.name`.

A run's settings are, in order of precedence: the command line's overrides, the run's own
``protocols[name]``, the experiment's ``protocols[name]``, the run, its matrix combination,
``defaults``. ``continue_from: RUN`` starts the run from RUN's trained model (``init_from``) and
makes it wait for RUN. A run's ``published`` entry is merged over the experiment's (``null``: none).
Every run is checked (its TrainConfig built, its published row found) when the file is resolved,
before anything trains.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..config.grid import points_of
from ..errors import ExperimentError
from ..rundir.names import check_run_name
from . import published as published_module
from .schema import (
    _CONFIG_KEYS,
    EXECUTION_KEYS,
    FIGURES,
    PROTOCOL_KEYS,
    PROTOCOLS,
    RUN_KEYS,
    _check_seeds,
    _grid_runs,
    check_spec,
    run_entry,
)

__all__ = [
    "Experiment",
    "RunSpec",
    "ExperimentError",
    "load_experiment",
    "experiment_from_dict",
    "shipped_experiments",
    "PROTOCOLS",
    "FIGURES",
    "run_entry",
]


@dataclass(frozen=True)
class RunSpec:
    """One resolved training run of an experiment.

    ``config`` holds the TrainConfig settings that define the run (without out, data_dir, device,
    threads); ``eval`` the test evaluation: ``k`` (L_k for the NLL), ``bound_ks`` (further bounds
    reported as ``iwae{k}``), ``test_subset`` and ``seed``; ``after`` the run it continues, if any;
    ``labels`` the settings the report shows; ``published`` our metric names mapped to the
    published numbers, in our sign convention, plus ``active_units``, or None; ``group`` the name
    shared by the runs of one seed list (None: the run has no seeds list); ``points`` the grid
    points it serves, ``{label, objective, m, k, beta, index}`` each (index: the point's place in
    the grid).
    """

    name: str
    config: dict
    eval: dict
    after: str | None = None
    labels: dict = field(default_factory=dict)
    published: dict | None = None
    group: str | None = None
    points: list = field(default_factory=list)

    def train_config(
        self, out: str | os.PathLike, *, data_dir: str | None = None, device: str = "cpu", threads: int | None = None
    ) -> TrainConfig:
        """The run's TrainConfig writing to ``out``; a continued run starts from ``out/../<after>``."""
        init = str(Path(out).parent / self.after) if self.after else None
        return TrainConfig.from_dict(
            {
                **self.config,
                "out": str(out),
                "data_dir": data_dir,
                "device": device,
                "threads": threads,
                "init_from": init,
            }
        )

    @property
    def total_epochs(self) -> int:
        """Epochs the run trains (its ``epochs``, or the whole paper schedule)."""
        return TrainConfig.from_dict({**self.config, "out": "unused"}).total_epochs

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "config": self.config,
            "eval": self.eval,
            "after": self.after,
            "labels": self.labels,
            "published": self.published,
            "group": self.group,
            "points": self.points,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(
            d["name"],
            d["config"],
            d["eval"],
            d.get("after"),
            d.get("labels", {}),
            d.get("published"),
            d.get("group"),
            d.get("points") or [],
        )


@dataclass
class Experiment:
    """An experiment file, read and checked; :meth:`resolve` turns it into runs."""

    name: str
    title: str
    description: str
    source: str
    spec: dict  # the file's content

    @property
    def figures(self) -> list[str]:
        return list(self.spec.get("figures", []))

    @property
    def comparisons(self) -> list[list[str]]:
        """The pairs ``[A, B]`` of run names (a seed group's name for a run with seeds) whose paired
        difference of test NLLs the report shows (the file's ``compare``)."""
        return [list(pair) for pair in self.spec.get("compare") or []]

    @property
    def protocols(self) -> dict[str, dict]:
        return self.spec["protocols"]

    def published_table(self) -> dict | None:
        """``{key, table, citation, sign}`` of the published table the runs are compared with, or None."""
        pub = self.spec.get("published")
        if not pub:
            return None
        data = published_module.load()
        table = data["papers"][pub["paper"]][pub["table"]]
        sign = table.get("sign", "nll")
        return {
            "key": pub["paper"],
            "table": pub["table"],
            "caption": table.get("caption", ""),
            "citation": published_module.citation(pub["paper"]),
            "sign": f"{sign}: {data['sign_conventions'][sign]}",
        }

    def protocol_settings(self, protocol: str, overrides: dict | None = None) -> dict:
        """The protocol's settings with ``overrides`` applied (what the report records as 'used')."""
        if protocol not in self.protocols:
            raise ExperimentError(
                f"{self.name} has no protocol {protocol!r}; choose one of {', '.join(self.protocols)}"
            )
        settings = {k: v for k, v in self.protocols[protocol].items() if k != "description"}
        return {**settings, **(overrides or {})}

    def resolve(
        self,
        protocol: str = "short",
        *,
        datasets: list[str] | None = None,
        only: list[str] | None = None,
        overrides: dict | None = None,
    ) -> list[RunSpec]:
        """The runs under ``protocol``, restricted to ``datasets`` and to the names matching ``only``
        (shell patterns; a continued run brings the run it continues), with ``overrides`` (TrainConfig
        settings, ``test_subset``, ``eval_k``) over every run's settings.

        Raises:
            ExperimentError: unknown protocol, a selection that matches nothing, an invalid run.
        """
        overrides = dict(overrides or {})
        bad = set(overrides) - _CONFIG_KEYS - PROTOCOL_KEYS
        if bad or set(overrides) & EXECUTION_KEYS:
            raise ExperimentError(f"cannot override {', '.join(sorted(bad or set(overrides) & EXECUTION_KEYS))}")
        self.protocol_settings(protocol)
        seeds = self.seeds(protocol)
        if seeds is not None and "seed" in overrides:
            raise ExperimentError(f"{self.name} trains seeds {seeds}: cannot override seed (override seeds instead)")
        # seed by seed: every run of the first seed (a complete table) before any of the next
        resolved = [
            self._resolve_run(raw, combo, protocol, overrides, seed)
            for seed in (seeds or [None])
            for raw, combo in self._expanded()
        ]
        runs = {r.name: r for r in resolved}
        if len(runs) != len(resolved):
            names = [r.name for r in resolved]
            dup = next(n for n in names if names.count(n) > 1)
            raise ExperimentError(f"{self.source}: two runs are named {dup}; give them distinct names")
        for r in resolved:
            if r.after and r.after not in runs:
                raise ExperimentError(f"{self.source}: run {r.name} continues {r.after}, which is not a run")
        _check_acyclic(runs, self.source)
        named = {r.group or r.name for r in resolved}
        for pair in self.comparisons:
            unknown = [n for n in pair if n not in named]
            if unknown:
                raise ExperimentError(
                    f"{self.source}: compare names {unknown[0]}, which is not a run; its runs are "
                    f"{', '.join(sorted(named))}"
                )
        selected = list(runs.values())
        if datasets is not None:
            wanted = {d.strip().lower().replace("_", "-") for d in datasets if d.strip()}
            known = {r.config["dataset"] for r in runs.values()}
            if not wanted:
                raise ExperimentError("--datasets lists no dataset")
            if wanted - known:
                raise ExperimentError(
                    f"{self.name} has no runs on {', '.join(sorted(wanted - known))}; "
                    f"its datasets are {', '.join(sorted(known))}"
                )
            selected = [r for r in selected if r.config["dataset"] in wanted]
        if only:
            missing = [p for p in only if not any(fnmatch.fnmatchcase(r.name, p) for r in selected)]
            if missing:
                raise ExperimentError(
                    f"--only {missing[0]} matches no run of {self.name}; its runs are "
                    f"{', '.join(r.name for r in selected)}"
                )
            selected = [r for r in selected if any(fnmatch.fnmatchcase(r.name, p) for p in only)]
        chosen = {r.name for r in selected}
        for name in list(chosen):  # a continued run needs the run it continues
            while runs[name].after:
                name = runs[name].after
                chosen.add(name)
        # the file's order, except that a run always comes after the run it continues
        ordered: list[RunSpec] = []
        for r in runs.values():
            chain = [r]
            while chain[-1].after:
                chain.append(runs[chain[-1].after])
            for c in reversed(chain):
                if c.name in chosen and c not in ordered:
                    ordered.append(c)
        return ordered

    def seeds(self, protocol: str, overrides: dict | None = None) -> list[int] | None:
        """The training seeds of every run under ``protocol`` (its ``seeds``, else the file's), or None
        when neither sets any (each run then has the seed of its settings)."""
        seeds = (overrides or {}).get("seeds", self.protocols[protocol].get("seeds", self.spec.get("seeds")))
        return None if seeds is None else _check_seeds(seeds, self.source)

    # -------------------------------------------------------------------- internals
    def _expanded(self) -> list[tuple[dict, dict]]:
        matrix = self.spec.get("matrix") or {}
        combos = [dict(zip(matrix, values)) for values in itertools.product(*matrix.values())] or [{}]
        raws = self.spec.get("runs") or _grid_runs(self.spec["grid"])
        return [(raw, combo) for combo in combos for raw in raws]

    def _resolve_run(self, raw: dict, combo: dict, protocol: str, overrides: dict, seed: int | None = None) -> RunSpec:
        proto = self.protocols[protocol]
        run_proto = (raw.get("protocols") or {}).get(protocol, {})
        settings = {
            **(self.spec.get("defaults") or {}),
            **combo,
            **{k: v for k, v in raw.items() if k not in RUN_KEYS},
            **{k: v for k, v in proto.items() if k not in ("description", "seeds")},
            **run_proto,
            **{k: v for k, v in overrides.items() if k != "seeds"},
        }
        settings.pop("seeds", None)
        if seed is not None:
            settings["seed"] = seed
        evaluation = dict(self.spec.get("evaluate") or {})
        eval_spec = {
            "k": settings.pop("eval_k", evaluation.get("k", 5000)),
            "bound_ks": list(evaluation.get("bound_ks", [])),
            **({"ais": dict(evaluation["ais"])} if evaluation.get("ais") else {}),
            "test_subset": settings.pop("test_subset", None),
            "seed": evaluation.get("seed", 0),
        }
        fmt_values = {**TrainConfig(out="x").to_dict(), **settings}
        try:
            group = raw["name"] if "name" in raw else self.spec["name_format"].format(**fmt_values)
        except (KeyError, IndexError) as e:
            raise ExperimentError(f"{self.source}: name_format needs {e}, which a run does not set") from None
        if isinstance(group, int) and not isinstance(group, bool):  # YAML reads name: 2016 as a number
            group = str(group)
        group = _plain(group, "run name", self.source)
        suffix = f"-s{seed}" if seed else ""  # seed 0 keeps the name: a one-seed folder is reused
        name = _plain(group + suffix, "run name", self.source)
        if raw.get("continue_from"):
            after = _plain(
                str(raw["continue_from"]).format(**fmt_values) + suffix, f"run {name}: continue_from", self.source
            )
        else:
            after = None
        for key, value in settings.items():
            default = TrainConfig.__dataclass_fields__[key].default if key in _CONFIG_KEYS else None
            if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
                raise ExperimentError(
                    f"{self.source}: run {name}: {key} must be a number, got {value!r} (YAML reads "
                    f"1e-4 without a dot as text: write 1.0e-4)"
                )
        try:
            config = TrainConfig.from_dict({**settings, "out": "unused"})
        except (ValueError, TypeError) as e:
            raise ExperimentError(f"{self.source}: run {name}: {e}") from None
        config_dict = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_KEYS}
        labels = {k: config_dict.get(k) if _applies(k, config_dict) else None for k in self.spec.get("labels", [])}
        pub_spec = self.spec.get("published")
        if "published" in raw:
            pub_spec = None if raw["published"] is None else {**(pub_spec or {}), **raw["published"]}
        points = points_of(config_dict, self.spec["grid"]) if self.spec.get("grid") else []
        return RunSpec(
            name,
            config_dict,
            eval_spec,
            after,
            labels,
            self._published_values(name, pub_spec, fmt_values),
            None if seed is None else group,
            points,
        )

    def _published_values(self, name: str, pub: dict | None, values: dict) -> dict | None:
        if not pub or not pub.get("values"):
            return None
        try:
            table = published_module.load()["papers"][pub["paper"]][pub["table"]]
        except (KeyError, TypeError):
            raise ExperimentError(
                f"{self.source}: run {name}: published needs a known paper and table, got "
                f"{pub.get('paper')!r} {pub.get('table')!r}"
            ) from None
        if not isinstance(pub["values"], dict):
            raise ExperimentError(f"{self.source}: published values must map our metrics to the table's columns")
        match = pub.get("match", [])
        if isinstance(match, list) and set(match) - set(values):
            raise ExperimentError(
                f"{self.source}: published match lists {', '.join(sorted(set(match) - set(values)))}, "
                f"which is not a run setting"
            )
        wanted = {f: values[f] for f in match} if isinstance(match, list) else dict(match)
        rows = [r for r in table["rows"] if all(r.get(f) == v for f, v in wanted.items())]
        if len(rows) != 1:
            raise ExperimentError(
                f"{self.source}: run {name}: {len(rows)} rows of {pub['paper']} {pub['table']} "
                f"match {wanted}; expected one (set published: null for a run without one)"
            )
        row = rows[0]
        scale = pub.get("scale", 1)  # -1 turns a published log-likelihood into our positive NLL
        out = {}
        for metric, column in pub["values"].items():
            try:
                column = str(column).format(**values)
            except (KeyError, IndexError) as e:
                raise ExperimentError(
                    f"{self.source}: published column {column!r} needs {e}, not a run setting"
                ) from None
            if column not in row:
                raise ExperimentError(f"{self.source}: {pub['paper']} {pub['table']} has no column {column!r}")
            out[metric] = scale * row[column]
        if pub.get("active_units"):
            out["active_units"] = row[pub["active_units"].format(**values)]
        return out


def _applies(setting: str, config: dict) -> bool:
    """Whether a setting means anything for this run (a VAE's beta does not): the report leaves the others blank."""
    if setting == "beta":
        return config["objective"] == "ciwae"
    if setting == "m":
        return config["objective"] in ("miwae", "piwae")
    if setting == "components":
        return config["prior"] != "normal"
    return True


def _plain(name: str, what: str, source: str) -> str:
    """``name`` if it is a plain run name (:func:`iwae.rundir.names.check_run_name`): a run's folder is
    ``OUT/runs/NAME``, which must lie inside ``OUT`` (no ``/``, ``..``, absolute path, ...)."""
    try:
        return check_run_name(name, what)
    except ValueError as e:
        raise ExperimentError(f"{source}: {e}") from None


def _check_acyclic(runs: dict[str, RunSpec], source: str) -> None:
    for r in runs.values():
        seen = [r.name]
        while runs[seen[-1]].after:
            nxt = runs[seen[-1]].after
            if nxt in seen:
                raise ExperimentError(f"{source}: runs continue each other in a circle: {' -> '.join(seen + [nxt])}")
            seen.append(nxt)


# ----------------------------------------------------------------------------- loading
def shipped_experiments() -> list[str]:
    """Names of the experiment files shipped with the package."""
    folder = resources.files("iwae").joinpath("experiments")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_experiment(name_or_path: str | os.PathLike) -> Experiment:
    """A shipped experiment by name (``table1``) or an experiment file by path, checked and resolved once.

    Raises:
        ExperimentError: unknown name, unreadable file, invalid content, a run that does not resolve.
    """
    path = Path(name_or_path)
    looks_like_path = path.suffix in (".yaml", ".yml") or len(path.parts) > 1
    if looks_like_path or (path.is_file() and str(name_or_path) not in shipped_experiments()):
        if not path.is_file():
            raise ExperimentError(f"experiment file {path} not found")
        source, text = str(path), path.read_text()
    else:
        if str(name_or_path) not in shipped_experiments():
            raise ExperimentError(
                f"unknown experiment {name_or_path!r}; choose one of "
                f"{', '.join(shipped_experiments())}, or give a path to a .yaml file"
            )
        source = f"iwae/experiments/{name_or_path}.yaml"
        text = resources.files("iwae").joinpath(f"experiments/{name_or_path}.yaml").read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ExperimentError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
    return experiment_from_dict(spec, source)


def experiment_from_dict(spec: dict, source: str = "<experiment>") -> Experiment:
    """An experiment from its content (what an experiment file holds), checked and resolved once;
    ``source`` names it in messages. :func:`iwae.grid.grid_experiment` builds its grid this way.

    Raises:
        ExperimentError: invalid content, a run that does not resolve.
    """
    spec = check_spec(copy.deepcopy(spec), source)
    exp = Experiment(
        _plain(str(spec["name"]), "experiment name", source),  # names the default --out, runs/NAME-PROTOCOL
        str(spec.get("title", spec["name"])),
        str(spec.get("description", "")).strip(),
        source,
        copy.deepcopy(spec),
    )
    for protocol in exp.protocols:  # every run of every protocol resolves, or the file is refused now
        exp.resolve(protocol)
    return exp
