"""The report as files: ``report.md``, a self-contained ``report.html`` (python-markdown, sanitised by
nh3, inline CSS, figures embedded as data URIs) and ``report.json``.

An experiment file is input from anyone (its title and description go into the report), so the HTML
is cleaned by a maintained sanitiser, nh3 (Ammonia), rather than by hand: only its allowed tags and
attributes stay, and links and images only with the schemes http, https and mailto, or relative.
Only then are images embedded, and only files inside the report's own folder (resolved, symbolic
links included): ``![x](/home/me/.ssh/id_rsa)`` or a link in the folder pointing out of it is not
embedded (the image keeps its alt text)."""

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
import nh3

from ... import rundir, strict_json
from ...checkpoint import atomic_write
from .figures import _figures
from .grid import _grid_section
from .read import SPEC_FILE, find_experiments, read_reproduction, seed_groups
from .seeds import SEEDS_KIND, read_seed_folder, seed_header
from .tables import _compare_section, _header, _table, comparisons

__all__ = ["markdown_report", "render_html", "write_report", "summary", "read_folder", "SUMMARY_FILE"]

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


def read_folder(folder: str | os.PathLike) -> dict:
    """The experiment of an `iwae reproduce` folder (:func:`read_reproduction`), or a folder of seeds
    read as one (:func:`read_seed_folder`)."""
    if (Path(folder) / SPEC_FILE).is_file():
        return read_reproduction(folder)
    return read_seed_folder(folder)


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
    experiments = [read_folder(p) for p in find_experiments(out_dir)]
    try:
        by = f"iwae {version('iwae')}"
    except Exception:  # not installed as a distribution: the report is still valid
        by = "iwae"
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = [f"`{e['experiment']}`" for e in experiments]
    seeds_only = all(e.get("kind") == SEEDS_KIND for e in experiments)
    what = "folder of seeds" if seeds_only else "experiment"
    lines = [
        "# Report" if seeds_only else "# Reproduction report",
        "",
        f"Generated {now} by {by} from `{out_dir}`: {len(experiments)} {what}"
        f"{'s' if len(experiments) != 1 else ''} ({', '.join(names)}).",
        "",
    ]
    cache: dict = {}
    counter = [0]
    for exp in experiments:
        seeds = exp.get("kind") == SEEDS_KIND
        header = seed_header(exp) if seeds else _header(exp)
        lines += header + ["### Results", ""] + _table(exp, per_seed or seeds) + [""] + _grid_section(exp)
        lines += _compare_section(exp)
        if figures:
            lines += _figures(exp, out_dir, data_dir, cache, counter)
        elif exp.get("figures"):
            lines += [f"*Figures ({', '.join(map(str, exp['figures']))}) not drawn: --no-figures.*", ""]
    return "\n".join(lines).rstrip() + "\n"


URL_SCHEMES = {"http", "https", "mailto"}  # and relative URLs: what a link or image of the report may use
# Markdown tables align their columns with style="text-align: ..."; no other style is kept
_ATTRIBUTES = {**nh3.ALLOWED_ATTRIBUTES, "th": {*nh3.ALLOWED_ATTRIBUTES["th"], "style"}}
_ATTRIBUTES["td"] = {*nh3.ALLOWED_ATTRIBUTES["td"], "style"}
_EMBEDDED = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
}


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, every link resolved, is a file inside ``folder`` (resolved too)."""
    try:
        return path.resolve().is_relative_to(folder.resolve()) and path.resolve().is_file()
    except (OSError, RuntimeError):  # a loop of links
        return False


def render_html(markdown_text: str, base_dir: str | os.PathLike, title: str = "Reproduction report") -> str:
    """A self-contained HTML page of ``markdown_text``: sanitised by nh3 (tags, attributes and URL
    schemes allowed, see the module's docstring), inline CSS, and every relative image that is a file
    inside ``base_dir`` (links resolved) embedded as a base64 data URI; other local images are not
    embedded (their ``src`` is dropped, their alt text stays)."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    body = nh3.clean(body, attributes=_ATTRIBUTES, url_schemes=URL_SCHEMES, filter_style_properties={"text-align"})
    base_dir = Path(base_dir)

    def embed(match: re.Match) -> str:
        src = unquote(html.unescape(match.group(1)))
        if src.startswith(("http://", "https://")):
            return match.group(0)  # a remote image, as the author linked it
        path = base_dir / src
        mime = _EMBEDDED.get(path.suffix.lower())
        if mime is None or not _inside(path, base_dir):  # outside the report's folder: not embedded
            return f'data-not-embedded="{html.escape(src)}"'
        return f'src="data:{mime};base64,{base64.b64encode(path.resolve().read_bytes()).decode("ascii")}"'

    body = re.sub(r'src="([^"]*)"', embed, body)  # after nh3 only <img> has a src
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


@rundir.locks("iwae report", lambda a: a["out_dir"])  # two reports do not write one folder at once
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
    summaries = [summary(read_folder(p)) for p in find_experiments(out_dir)]
    with atomic_write(out_dir / SUMMARY_FILE) as f:
        strict_json.dump({"experiments": summaries}, f, indent=1)
    return md_path, html_path
