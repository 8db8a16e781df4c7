"""iwae.runtime: the default thread count (never more than the free cores), and the device line."""

from __future__ import annotations

import pytest
import torch

from iwae import runtime
from iwae.errors import ConfigError


@pytest.fixture
def no_thread_variables(monkeypatch):
    for name in runtime.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("cores, load, free", [(2, 0.1, 2), (2, 1.4, 1), (2, 6.5, 1), (16, 3.2, 13), (16, 40.0, 1)])
def test_free_cores_are_the_cores_the_load_average_leaves(monkeypatch, cores, load, free):
    monkeypatch.setattr(runtime, "cores", lambda: cores)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    assert runtime.free_cores() == free


def test_free_cores_without_a_load_average(monkeypatch):
    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(runtime, "cores", lambda: 4)
    monkeypatch.setattr(runtime.os, "getloadavg", unavailable)
    assert runtime.free_cores() == 4


def test_the_default_threads_never_exceed_the_free_cores(monkeypatch, no_thread_variables):
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "free_cores", lambda: 1)  # a busy 2-core machine
    assert runtime.choose_threads() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "free_cores", lambda: 8)  # never more than torch's own default
    assert runtime.choose_threads() == 2 and torch.get_num_threads() == 2
    assert runtime.choose_threads(3) == 3 and torch.get_num_threads() == 3  # asked for: as asked, even if busy
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        runtime.choose_threads(0)


def test_a_thread_count_chosen_in_the_environment_is_kept(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(runtime, "free_cores", lambda: 1)
    assert runtime.choose_threads() == 2 and torch.get_num_threads() == 2


def test_the_commands_and_train_use_the_default(monkeypatch, no_thread_variables, tmp_path):
    """--threads absent: the CLI's commands and train() cap torch's threads at the free cores."""
    from iwae.cli.support import set_threads
    from iwae.data import Splits
    from iwae.train import TrainConfig, train

    monkeypatch.setattr(runtime, "free_cores", lambda: 1)
    torch.set_num_threads(2)
    set_threads(None)
    assert torch.get_num_threads() == 1
    set_threads(2)
    assert torch.get_num_threads() == 2
    x = (torch.rand(40, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    splits = Splits("toy", x[:30], x[30:35], x[35:], False, image_shape=(4, 4))
    config = TrainConfig(k=1, epochs=1, latent_dims=[2], hidden_dims=[[8]], out=str(tmp_path / "run"))
    train(config, progress=False, splits=splits)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    train(
        TrainConfig(**{**config.to_dict(), "threads": 2, "out": str(tmp_path / "two")}), progress=False, splits=splits
    )
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(
    "record, line",
    [
        ({"device": "cpu", "gpu": None, "torch": "2.13.0+cpu", "cuda": None}, "cpu, torch 2.13.0+cpu"),
        (
            {"device": "cpu", "gpu": None, "torch": "2.14.1+cu130", "cuda": "13.0"},
            "cpu, torch 2.14.1+cu130 (a build for CUDA 13.0, not used on the CPU)",
        ),
        (
            {"device": "cuda:0", "gpu": "NVIDIA H100", "torch": "2.14.1+cu130", "cuda": "13.0"},
            "cuda:0 (NVIDIA H100), torch 2.14.1+cu130, built for CUDA 13.0",
        ),
    ],
)
def test_the_device_line_says_the_cuda_version_is_the_builds(record, line):
    assert runtime.runtime_text(record) == line
