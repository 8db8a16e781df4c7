"""The experiment engine: experiment files, planning and execution, published numbers, reports.

    from iwae.experiments import load_experiment, reproduce, write_report
    reproduce("table1", "runs/table1", datasets=["mnist"])   # train and evaluate each run
    write_report("runs/table1")                              # report.md, report.html, report.json

- :mod:`iwae.experiments.spec`: the experiment file format (runs, protocols, seeds, grid) -> runs.
- :mod:`iwae.experiments.engine`: plan, execute, executors (inline, worker processes, Ray).
- :mod:`iwae.experiments.published`: the papers' numbers (``iwae/references/published.yaml``).
- :mod:`iwae.experiments.report`: reproduced runs beside the published numbers, mean ± sd over seeds.

The shipped experiment files (``table1.yaml``, ``rainforth.yaml``, ...) are package data in this folder.
"""

from . import engine, published, report, spec
from .engine import Summary, plan, reproduce
from .report import markdown_report, read_reproduction, write_report
from .spec import Experiment, ExperimentError, RunSpec, experiment_from_dict, load_experiment, shipped_experiments

__all__ = [
    "engine",
    "published",
    "report",
    "spec",
    "Experiment",
    "ExperimentError",
    "RunSpec",
    "Summary",
    "experiment_from_dict",
    "load_experiment",
    "markdown_report",
    "plan",
    "read_reproduction",
    "reproduce",
    "shipped_experiments",
    "write_report",
]
