"""Reports of reproduced experiments: ``report.md`` and a self-contained ``report.html``.

    iwae report runs/table1                 # one experiment: the folder holds reproduction.json
    iwae report runs --no-figures           # every runs/*/reproduction.json, in turn, tables only
    from iwae.experiments.report import write_report
    markdown_path, html_path = write_report("runs/table1")

Reads what ``iwae reproduce`` writes: ``OUT/reproduction.json`` (the experiment, the protocol
used, the published table, one entry per run) and per run ``OUT/runs/<name>/`` with
``result.json`` when it finished (a result of other settings, see :func:`iwae.rundir.run_status`,
is shown as stale, without its numbers) or ``error.json`` when it failed. Per experiment the report
gives the protocol, then one table row per run: our metrics, the published value and
delta = ours - published (same keys, same signs), flagged when |delta| > 0.3 nats; active units,
epochs, train and evaluation time, hardware; then the figures the experiment asks for (training
curves, samples, latent spread, the (M, K) grid of Rainforth et al., a small gradient-SNR sweep),
as PNGs under ``OUT/report_figures/<experiment folder>/``. A figure that cannot be drawn becomes a
one-line note.

Seeds: the runs of an experiment with ``seeds`` share a ``group`` (:mod:`iwae.experiments.spec`); the
table then has one row per group, each metric the mean over its finished seeds ± their standard
deviation (n - 1 in the denominator; blank for one seed), n seeds beside it, and delta = mean -
published. ``per_seed=True`` (``iwae report --per-seed``) adds the table of every run; ``report.json``
holds, per group, the mean, the standard deviation and the per-seed values of every metric.

A folder of seeds (``iwae train --seeds 0,1,2 --out D``; ``iwae report D``) is read as an experiment
of its own (:mod:`.seeds`): a row per evaluation that every seed has, mean ± sd over the seeds, the
seeds' rows below it, and their training curves.

The package: :mod:`.read` (the folders, seed groups), :mod:`.seeds` (a folder of seeds),
:mod:`.tables` (the tables, paired comparisons), :mod:`.grid` (the (M, K) grid's rows and table),
:mod:`.figures` (the figures of each kind) and :mod:`.render` (report.md, report.html, report.json).

The HTML is the same Markdown rendered by python-markdown (``tables`` extension), with inline CSS
and every figure embedded as a base64 data URI: one file that renders offline, as it is.
"""

from .figures import DRAW, FIGURE_DIR
from .grid import grid_rows, grid_table
from .read import SPEC_FILE, find_experiments, read_reproduction, seed_groups
from .render import SUMMARY_FILE, markdown_report, read_folder, render_html, summary, write_report
from .seeds import read_seed_folder
from .tables import FLAG_NATS, compare, comparisons

__all__ = [
    "find_experiments",
    "read_reproduction",
    "read_seed_folder",
    "read_folder",
    "compare",
    "markdown_report",
    "render_html",
    "write_report",
    "seed_groups",
    "grid_rows",
    "grid_table",
    "comparisons",
    "summary",
    "FLAG_NATS",
    "FIGURE_DIR",
    "DRAW",
    "SPEC_FILE",
    "SUMMARY_FILE",
]
