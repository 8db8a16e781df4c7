"""Every code example of the documentation runs: the python and bash blocks of README.md and docs/**/*.md.

A page's blocks run in order in one temporary folder, so a later block can use the run an earlier
one trained: python blocks in a fresh interpreter (this one's), bash blocks under
``bash -euo pipefail`` with this environment's ``iwae`` first on PATH; both with ``IWAE_DATA_DIR``
at the shared data and no network needed. A block fails its page's test when it exits non-zero.

Only ``python`` and ``bash`` blocks run. Every other runnable-looking label (``sh``, ``shell``,
``console``, ``pycon``, ...) fails the test, so an example can never sit in the docs unrun: output,
synopses and commands that take hours are labelled ``text``. The README's quickstart is also
checked against the numbers the README states for it.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN = {"python", "bash"}  # the labels that are executed
# labels that look runnable but would not be run: refused, so that nothing runnable escapes the tests
REFUSED = {"py", "python3", "sh", "shell", "console", "zsh", "pycon", "ipython", "shell-session", "bash-session"}
BLOCK_TIMEOUT_S = 900  # wall clock: a busy machine may take several times a block's CPU time
# Every example runs in about a minute: its CPU time (the block's processes, one thread each) must stay
# under this. CPU time, not wall time, so that a busy machine does not fail a block that is small.
BLOCK_CPU_BUDGET_S = 60

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)(?P<info>[^\n]*)$")
TITLE = re.compile(r'title="(?P<title>[^"/]+)"')  # a block titled "my.yaml" is written to that file first


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    title: str | None = None  # a file block: written to this name in the page's folder before the next runs

    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, dedented (blocks may sit in lists and admonitions)."""
    found, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["lang"].lower()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page}:{i + 1}: a code fence that never closes")
        body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : j]]
        title = TITLE.search(m["info"])
        found.append(Block(page, i + 1, lang, textwrap.dedent("\n".join(body)) + "\n", title and title["title"]))
        i = j + 1
    return found


def pages() -> list[Path]:
    # docs/reports/ holds reports that `iwae report` wrote: output, with no examples of ours
    return [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "reports" not in p.relative_to(DOCS).parts)


def _env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["IWAE_DATA_DIR"] = str(data_dir)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"
    # tiny models: one thread is as fast, and spinning OpenMP threads crawl on a busy machine
    env["OMP_NUM_THREADS"] = "1"
    env.pop("IWAE_TEST_DATA_DIR", None)
    return env


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # of the finished children this process waited for
    return usage.ru_utime + usage.ru_stime


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs the block; the result's ``cpu_seconds`` is the CPU time of its processes (user + system)."""
    if block.lang == "python":
        script = cwd / f"_block_{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    before = _children_cpu_seconds()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    done.cpu_seconds = _children_cpu_seconds() - before
    return done


def run_page(page: Path, cwd: Path, data_dir: Path) -> dict[int, str]:
    """Runs the page's blocks in order in ``cwd``; returns each block's output by line."""
    env, outputs = _env(data_dir), {}
    for block in blocks(page):
        if block.lang not in RUN:
            if block.title:  # a file the page shows (an experiment file): the examples after it use it
                (cwd / block.title).write_text(block.code, encoding="utf-8")
            continue
        started = time.perf_counter()
        done = run_block(block, cwd, env)
        took = time.perf_counter() - started
        print(f"{block.where()} ({block.lang}): {took:.1f} s, {done.cpu_seconds:.1f} s of CPU")
        assert done.returncode == 0, (
            f"the {block.lang} example at {block.where()} failed (exit {done.returncode}):\n{block.code}\n"
            f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
        )
        assert done.cpu_seconds <= BLOCK_CPU_BUDGET_S, (
            f"the {block.lang} example at {block.where()} took {done.cpu_seconds:.0f} s of CPU, more than the "
            f"{BLOCK_CPU_BUDGET_S} s an example may: make it smaller (fewer epochs, images, samples), or label "
            f"it text if it is meant to take long"
        )
        outputs[block.line] = done.stdout + done.stderr
    return outputs


# ----------------------------------------------------------------------------- the rule itself
def test_pages_are_found():
    found = {p.relative_to(ROOT).as_posix() for p in pages()}
    assert {"README.md", "docs/index.md", "docs/getting-started.md", "docs/guide/evaluation.md"} <= found


def test_every_runnable_looking_block_is_labelled_python_or_bash():
    refused = [f"{b.where()} ({b.lang})" for p in pages() for b in blocks(p) if b.lang in REFUSED]
    assert not refused, (
        "these blocks would not run: label them python or bash (run by this test) or text "
        "(not run): " + ", ".join(refused)
    )


def test_the_block_parser_sees_indented_blocks_labels_and_titles(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n```python\nprint(1)\n```\n\n- item\n\n    ```bash\n    echo 2\n    ```\n\n"
        '```text\nnot run\n```\n\n```yaml title="a.yaml"\nk: 5\n```\n',
        encoding="utf-8",
    )
    found = [(b.lang, b.code, b.title) for b in blocks(page)]
    assert found == [
        ("python", "print(1)\n", None),
        ("bash", "echo 2\n", None),
        ("text", "not run\n", None),
        ("yaml", "k: 5\n", "a.yaml"),
    ]


def test_getting_started_shows_the_readmes_quickstart():
    """The quickstart runs once, from the README (it trains on all of MNIST); Getting started shows it
    as text, and must show the same commands."""

    def quickstart(page, lang):
        return [b.code for b in blocks(page) if b.lang == lang and "--out runs/quickstart" in b.code]

    readme = quickstart(ROOT / "README.md", "bash")
    assert len(readme) == 1, "README.md should hold one bash block that trains runs/quickstart"
    assert readme == quickstart(DOCS / "getting-started.md", "text")


def test_a_block_over_its_cpu_budget_fails_its_page(tmp_path, shared_data_dir, monkeypatch):
    page = tmp_path / "slow.md"
    page.write_text(
        "```python\nimport time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    pass\n```\n",
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    run_page(page, work, shared_data_dir)  # 1.5 s of CPU is within the budget
    monkeypatch.setattr(sys.modules[__name__], "BLOCK_CPU_BUDGET_S", 1)
    with pytest.raises(AssertionError, match=r"took \d+ s of CPU, more than the 1 s an example may"):
        run_page(page, work, shared_data_dir)


def test_a_failing_block_fails_its_page(tmp_path, shared_data_dir):
    page = tmp_path / "bad.md"
    page.write_text("```bash\necho fine\n```\n\n```python\nraise SystemExit(3)\n```\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(AssertionError, match="exit 3"):
        run_page(page, work, shared_data_dir)


# ----------------------------------------------------------------------------- the pages


@pytest.mark.parametrize(
    "page", [p for p in pages() if any(b.lang in RUN for b in blocks(p))], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_examples_run(page, tmp_path, shared_data_dir):
    outputs = run_page(page, tmp_path, shared_data_dir)
    if page.name == "README.md":
        _check_quickstart_numbers(page, outputs)


def _check_quickstart_numbers(page: Path, outputs: dict[int, str]) -> None:
    """The README states the quickstart's test NLL and active units: they must be what it prints."""
    text = page.read_text(encoding="utf-8")
    claim = re.search(r"test NLL (\d+\.\d+) ± (\d+\.\d+)[^.]*?, (\d+) active units", text)
    assert claim, "README.md no longer states the quickstart's numbers as 'test NLL X ± S, N active units'"
    printed = "\n".join(outputs.values())
    nll = re.search(r"test NLL \(nats\)\s+(\d+\.\d+) ± (\d+\.\d+)", printed)
    units = re.search(r"active units\s+(\d+)", printed)
    assert nll and units, f"the quickstart printed no NLL / active units:\n{printed[-2000:]}"
    # the same machine kind gives the same digits; another CPU may round a few matrix products otherwise
    assert abs(float(nll[1]) - float(claim[1])) <= 0.05, f"README says NLL {claim[1]}, the quickstart printed {nll[1]}"
    assert abs(float(nll[2]) - float(claim[2])) <= 0.02, f"README says s.e. {claim[2]}, printed {nll[2]}"
    assert abs(int(units[1]) - int(claim[3])) <= 1, f"README says {claim[3]} active units, printed {units[1]}"
