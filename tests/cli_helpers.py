"""Helpers the CLI tests share: invoke the ``iwae`` command in-process, check a one-line user error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from iwae.cli import main
from iwae.data import Splits


def invoke(*args):
    """Runs ``iwae ARGS...`` (each argument str()-ed) and returns click's Result; exceptions are caught."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_one_line_error(result, phrase: str) -> str:
    """Exit status 2, no traceback, and exactly one ``Error`` line, which contains ``phrase``; returns it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and phrase in errors[0], result.output
    return errors[0]


def small_npz(folder: Path, splits: Splits, n_train: int, n_other: int = 20) -> str:
    """The first ``n_train`` training and ``n_other`` validation and test MNIST images (grey levels)
    as a user ``.npz`` in ``folder``, so the CLI loads them fast; returns its ``npz:PATH`` name."""
    path = folder / f"mnist-{n_train}.npz"
    np.savez(
        path,
        train=splits.train[:n_train].numpy(),
        valid=splits.valid[:n_other].numpy(),
        test=splits.test[:n_other].numpy(),
    )
    return f"npz:{path}"
