"""Tests for scripts/mutation_check.py: its entries still match the code, name real tests, and a
drifted entry is reported, not counted as killed."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_entry_matches_the_code_once_and_names_existing_tests(script):
    names = [m.name for m in script.MUTATIONS]
    assert len(set(names)) == len(names)
    for m in script.MUTATIONS:
        assert script._check_entry(ROOT, m) is None, m.name  # else: update the entry to the new code
        assert m.old != m.new, m.name
        if m.equivalent:
            continue
        assert m.tests and m.why, m.name
        for test in m.tests:
            file, _, name = test.partition("::")
            assert (ROOT / file).is_file(), (m.name, test)
            if name:
                base = name.split("[")[0]
                assert re.search(rf"^def {re.escape(base)}\(", (ROOT / file).read_text(), re.M), (m.name, test)


def test_a_drifted_entry_is_reported(script, tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    missing = script.Mutation("m", "a.py", "y = 2", "y = 3", ("t",))
    twice = script.Mutation("m", "a.py", "x = 1", "x = 2", ("t",))
    nofile = script.Mutation("m", "b.py", "x = 1", "x = 2", ("t",))
    assert "occurs 0 times" in script._check_entry(tmp_path, missing)
    assert "occurs 2 times" in script._check_entry(tmp_path, twice)
    assert "not found" in script._check_entry(tmp_path, nofile)


def test_unknown_mutation_name_exits_2(script, capsys):
    assert script.main(["--only", "no-such-mutation"]) == 2
    assert "unknown mutation no-such-mutation" in capsys.readouterr().err
