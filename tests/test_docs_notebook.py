"""The tutorial notebooks of the documentation run from top to bottom.

They are stored as text (jupytext percent-format scripts, ``docs/tutorials/*.py``), rendered by the
site (mkdocs-jupyter), and executed here as notebooks by nbclient, in a temporary folder with the
shared data: a cell that raises fails the test, with the cell's error.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def test_there_is_a_tutorial():
    assert TUTORIALS, "docs/tutorials/ holds no notebook"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, tmp_path, shared_data_dir, monkeypatch):
    notebook = jupytext.read(path)
    assert sum(cell.cell_type == "code" for cell in notebook.cells) >= 3, "jupytext read no code cells"
    monkeypatch.setenv("IWAE_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel is a child process: the in-process network guard of conftest does not reach it, and
    # it needs none (the data are local); its sockets to this process are ZeroMQ's, not socket.connect
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert any(out.get("output_type") == "display_data" and "image/png" in out.get("data", {}) for out in outputs), (
        "the tutorial drew no figure"
    )
    assert (tmp_path / "runs" / "tutorial-iwae-k5" / "model.safetensors").is_file()
