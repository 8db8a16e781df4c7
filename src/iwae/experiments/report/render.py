"""The report as files: ``report.md``, a self-contained ``report.html`` (python-markdown, inline CSS,
figures embedded as data URIs) and ``report.json``."""

from __future__ import annotations

import base64
import datetime
import html
import os
import re
from importlib.metadata import version
from pathlib import Path
from urllib.parse import unquote

import markdown

from ... import strict_json
from ...checkpoint import atomic_write
from .figures import _figures
from .grid import _grid_section
from .read import find_experiments, read_reproduction, seed_groups
from .tables import _compare_section, _header, _table, comparisons

__all__ = ["markdown_report", "render_html", "write_report", "summary", "SUMMARY_FILE"]

SUMMARY_FILE = "report.json"
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1250px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; white-space: nowrap; }
td:last-child { white-space: normal; min-width: 12em; }
th { background: #eef; } tr:nth-child(even) td { background: #f7f7f7; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def summary(exp: dict) -> dict:
    """What ``report.json`` holds of one experiment: per group (a run without seeds is a group of
    one) its seeds, and per metric the mean, the standard deviation over seeds and the per-seed values;
    and the paired comparisons the experiment names (:func:`comparisons`)."""
    groups = []
    for g in seed_groups(exp["runs"]):
        if "per_seed" in g:
            metrics = {
                k: {"mean": g["metrics"][k], "sd": g["metrics_sd"][k], "per_seed": v}
                for k, v in g["per_seed"].items()
                if k in g["metrics"]
            }
        else:
            metrics = {
                k: {"mean": v, "sd": None, "per_seed": [v]}
                for k, v in g["metrics"].items()
                if not k.endswith("_stderr") and v is not None
            }
        groups.append(
            {
                "name": g["name"],
                "runs": g.get("runs", [g["name"]]),
                "status": g["status"],
                "seeds": g.get("seeds", [g["config"].get("seed")] if g["status"] == "done" else []),
                "n_seeds": g.get("n_seeds", int(g["status"] == "done")),
                "labels": g["labels"],
                "published": g["published"],
                "metrics": metrics,
            }
        )
    return {
        "experiment": exp["experiment"],
        "dir": str(exp["dir"]),
        "protocol": (exp.get("protocol") or {}).get("name"),
        "groups": groups,
        "comparisons": comparisons(exp),
    }


def markdown_report(
    out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, figures: bool = True, per_seed: bool = False
) -> str:
    """The report of every experiment under ``out_dir`` (see :func:`find_experiments`) as Markdown;
    with ``figures``, also draws the figures under ``out_dir/report_figures/``, which it links to
    relatively. ``data_dir`` overrides the runs' ``data_dir`` for the figures that need data;
    ``per_seed`` adds a table of every run below each table of seed groups."""
    out_dir = Path(out_dir)
    experiments = [read_reproduction(p) for p in find_experiments(out_dir)]
    try:
        by = f"iwae {version('iwae')}"
    except Exception:  # not installed as a distribution: the report is still valid
        by = "iwae"
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = [f"`{e['experiment']}`" for e in experiments]
    lines = [
        "# Reproduction report",
        "",
        f"Generated {now} by {by} from `{out_dir}`: {len(experiments)} experiment"
        f"{'s' if len(experiments) != 1 else ''} ({', '.join(names)}).",
        "",
    ]
    cache: dict = {}
    counter = [0]
    for exp in experiments:
        lines += _header(exp) + ["### Results", ""] + _table(exp, per_seed) + [""] + _grid_section(exp)
        lines += _compare_section(exp)
        if figures:
            lines += _figures(exp, out_dir, data_dir, cache, counter)
        elif exp.get("figures"):
            lines += [f"*Figures ({', '.join(map(str, exp['figures']))}) not drawn: --no-figures.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_html(markdown_text: str, base_dir: str | os.PathLike, title: str = "Reproduction report") -> str:
    """A self-contained HTML page of ``markdown_text``: inline CSS, and every relative image (resolved
    against ``base_dir``) embedded as a base64 data URI."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    base_dir = Path(base_dir)

    def embed(match: re.Match) -> str:
        src = unquote(html.unescape(match.group(1)))
        path = base_dir / src
        if "://" in src or not path.is_file():
            return match.group(0)
        mime = "image/png" if path.suffix.lower() == ".png" else f"image/{path.suffix.lstrip('.').lower()}"
        return f'src="data:{mime};base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    body = re.sub(r'src="([^"]+)"', embed, body)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(
    out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, figures: bool = True, per_seed: bool = False
) -> tuple[Path, Path]:
    """Writes ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/report.json`` (the
    :func:`summary` of each experiment: means, standard deviations and per-seed values), each
    atomically, and, with ``figures``, the PNGs under ``out_dir/report_figures/``. Returns the
    Markdown and HTML paths.

    Raises:
        FileNotFoundError: ``out_dir`` is not a folder.
        ValueError: no reproduction.json in ``out_dir`` or its subfolders, or one is not valid JSON.
    """
    out_dir = Path(out_dir)
    text = markdown_report(out_dir, data_dir, figures, per_seed)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    with atomic_write(md_path, "wb") as f:  # bytes: UTF-8 whatever the locale (the table has ± and ⚠)
        f.write(text.encode("utf-8"))
    titles = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    page = render_html(text, out_dir, title="Reproduction report" + (f": {titles[0]}" if len(titles) == 1 else ""))
    with atomic_write(html_path, "wb") as f:
        f.write(page.encode("utf-8"))
    summaries = [summary(read_reproduction(p)) for p in find_experiments(out_dir)]
    with atomic_write(out_dir / SUMMARY_FILE) as f:
        strict_json.dump({"experiments": summaries}, f, indent=1)
    return md_path, html_path
