"""Shared fixtures: the benchmark data folder, loaded MNIST splits, no network.

The shared benchmark files live in ``<repo parent>/shared/data`` (override with
``$IWAE_TEST_DATA_DIR``); tests that need them fail, with a message saying so, when they are absent.
(``tests/test_data.py`` skips its tests of a missing dataset folder, and fails them with
``IWAE_REQUIRE_DATA=1``, which ``.ci/run`` sets.)

Tests by kind: every test that needs the shared datasets carries the ``data`` marker, so that
``pytest -m "not data"`` runs the rest on a machine without them. The marker is added here to every
test that uses a fixture of :data:`DATA_FIXTURES` (directly or through another fixture), or one of
its module's ``DATA_FIXTURES``; a test that reads the data some other way is marked by hand.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from iwae.data import Splits, load_dataset

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


DATA_FIXTURES = ("shared_data_dir", "mnist_splits")  # a test using one of these needs the shared data


def pytest_collection_modifyitems(config, items):
    """Marks ``data`` every test whose fixtures (their whole closure) include a data fixture."""
    for item in items:
        needs = set(DATA_FIXTURES) | set(getattr(getattr(item, "module", None), "DATA_FIXTURES", ()))
        if needs & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)


def _data_dir() -> Path:
    return Path(os.environ.get("IWAE_TEST_DATA_DIR") or DEFAULT_DATA_DIR)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The root folder of the shared benchmark data (holds mnist/, fashion_mnist/, ...)."""
    root = _data_dir()
    if not (root / "mnist").is_dir():
        pytest.fail(f"shared data {root / 'mnist'} not found: set IWAE_TEST_DATA_DIR to the folder that holds mnist/")
    return root


@pytest.fixture(scope="session")
def mnist_splits(shared_data_dir: Path) -> Splits:
    """Real MNIST (59,600 / 400 / 10,000), loaded once per session, never downloaded."""
    return load_dataset("mnist", shared_data_dir, download=False)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests must never touch the network: any socket connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="session", autouse=True)
def _inductor_cache(tmp_path_factory):
    """The tests' compiled programs (--compile step) go to a folder of this session, not to the user's
    cache (~/.cache/iwae/inductor), unless $TORCHINDUCTOR_CACHE_DIR names one; the tests share them
    within the session (iwae.compiled.program keeps each program once per process)."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    yield
    del os.environ["TORCHINDUCTOR_CACHE_DIR"]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the tiny models here gain nothing from more, and on a shared, busy
    machine spinning OpenMP workers make runs many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _threads_back_to_one():
    """Commands run in-process (``--threads 2``, reproduce's in-process runs) set torch's threads for
    the whole process; put them back after each test. Beyond speed, a later test that forks (the
    fault-injection suite) would otherwise hang: GNU OpenMP's thread pool does not survive fork()."""
    yield
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
