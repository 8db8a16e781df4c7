"""Helpers the CLI tests share: invoke the ``iwae`` command in-process (or in a forked child that file
permissions stop, even as root), check a one-line user error."""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
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


# ----------------------------------------------------------------------------- as a user whom permissions stop
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


def _drop_file_capabilities() -> None:
    """Makes this (forked, single-threaded) process subject to file permissions even as root: clears the
    capabilities that let root write into a read-only folder (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
    CAP_FOWNER) with capset(2). Tests run as root here, whom chmod alone does not stop."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for bit in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        data[0].effective &= ~(1 << bit)
        data[0].permitted &= ~(1 << bit)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


@dataclass
class ChildResult:
    """What :func:`invoke_unprivileged` returns: click's Result's fields that the tests read."""

    exit_code: int
    output: str
    exception: str | None = None


def invoke_unprivileged(*args) -> ChildResult:
    """Runs ``iwae ARGS...`` as :func:`invoke` does, but in a forked child that file permissions stop
    (root drops the capabilities that override them): a read-only folder is read-only to it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.close(read)
            torch.set_num_threads(1)  # an OpenMP pool the parent started does not survive fork(): stay serial
            if os.geteuid() == 0:
                _drop_file_capabilities()
            result = invoke(*args)
            exception = None if result.exception is None else repr(result.exception)
            os.write(write, json.dumps([result.exit_code, result.output, exception]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and payload, f"the child failed: {payload!r}"
    exit_code, output, exception = json.loads(payload)
    return ChildResult(exit_code, output, exception)
