"""The package's structure, checked: the import-linter contracts in pyproject.toml (layers, no cycles,
figures and AIS apart, models and objectives independent, torch-free configs) hold, and a function-level
import is only ever a deferred heavy library, said so in a comment."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "iwae"

# the function-level imports the code may have, by file: each defers a library that is slow to import
# and needed by one path only (the command line imports the library, which loads PyTorch, only when a
# command runs; TrainConfig.load_data imports the data loaders, which load PyTorch, only when called;
# inductor takes seconds to import and only --compile step needs it; scipy.stats only for a comparison
# over a few seeds)
ALLOWED = {
    "cli/runs.py": "iwae",
    "cli/measure.py": "iwae",
    "cli/experiments.py": "iwae",
    "cli/figures.py": "iwae|torch",
    "cli/support.py": "torch|iwae",
    "config/train.py": "iwae",
    "figures/_base.py": "matplotlib",
    "experiments/executors.py": "ray",
    "rundir/metrics.py": "torch.utils.tensorboard",
    "data/benchmarks.py": "scipy.io",
    "compiled/program.py": "torch._inductor",
    "compare/verdict.py": "scipy.stats",
}


def _function_level_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, source line) of every import inside a function of ``path``."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom):
                module = "iwae" if inner.level else inner.module
            elif isinstance(inner, ast.Import):
                module = inner.names[0].name
            else:
                continue
            found.append((inner.lineno, module, lines[inner.lineno - 1]))
    return sorted(set(found))


def test_import_contracts_hold():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_function_level_imports_are_deferred_heavy_libraries_only():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        allowed = ALLOWED.get(rel, "").split("|")
        source = path.read_text().splitlines()
        for line, module, text in _function_level_imports(path):
            ok = any(module == a or module.startswith(a + ".") for a in allowed if a)
            # outside the command line, the comment saying why is on the line or the one above
            said = rel.startswith("cli/") or "deferred" in text or "deferred" in source[line - 2]
            if not (ok and said):
                offenders.append(f"{rel}:{line}: {text.strip()}")
    assert offenders == [], (
        "import these at the top of the module (a function-level import is only for a "
        "heavy library one path needs, with a comment saying 'deferred: why'):\n" + "\n".join(offenders)
    )


def test_the_check_sees_a_function_level_import(tmp_path):
    """The scan finds imports in functions and methods, not at module level."""
    path = tmp_path / "m.py"
    path.write_text(
        "import os\n\nclass A:\n    def f(self):\n        from .x import y\n\n"
        "def g():\n    import torch  # deferred: heavy\n"
    )
    assert [(line, module) for line, module, _ in _function_level_imports(path)] == [(5, "iwae"), (8, "torch")]
