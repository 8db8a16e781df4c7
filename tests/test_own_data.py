"""Your own data (``npz:PATH``) after training: the path is stored absolute, so the run evaluates from any
folder; a moved file is given to ``evaluate`` explicitly, and anything but the run's kind of data is refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, invoke

from iwae.config import TrainConfig
from iwae.errors import DataError
from iwae.evaluate import evaluate
from iwae.rundir import check_moved_data, open_run, read_config


def _arrays(folder: Path, name: str = "fm.npz", pixels: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    np.savez(
        path,
        train=rng.integers(0, 256, (60, pixels), dtype=np.uint8),
        test=rng.integers(0, 256, (12, pixels), dtype=np.uint8),
    )
    return path


def test_a_relative_npz_path_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(dataset="npz:data/fm.npz").dataset == f"npz:{tmp_path / 'data' / 'fm.npz'}"
    assert TrainConfig(dataset="npz:../fm.npz").dataset == f"npz:{tmp_path.parent / 'fm.npz'}"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert TrainConfig(dataset="npz:~/fm.npz").dataset == f"npz:{tmp_path / 'home' / 'fm.npz'}"
    (tmp_path / "link").symlink_to(tmp_path / "data")  # a link the user chose stays in the path
    assert TrainConfig(dataset="npz:link/fm.npz").dataset == f"npz:{tmp_path / 'link' / 'fm.npz'}"
    for name in ("mnist", "fashion-mnist", "npz:"):  # not a path: unchanged ("npz:" is refused when loaded)
        assert TrainConfig(dataset=name).dataset == name


def _train(run: Path, dataset: str) -> None:
    result = invoke(
        "train", "--dataset", dataset, "--epochs", 1, "--latent-dims", 2, "--hidden-dims", 8, "--out", run, "--quiet"
    )
    assert result.exit_code == 0, result.output


def test_the_run_evaluates_from_anywhere_and_a_moved_file_is_given_explicitly(tmp_path, monkeypatch):
    """The issue's case: trained in one folder with npz:../data/fm.npz, evaluated from another."""
    _arrays(tmp_path / "data")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _train(Path("run"), "npz:../data/fm.npz")
    assert read_config(tmp_path / "work" / "run").dataset == f"npz:{tmp_path / 'data' / 'fm.npz'}"
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "work" / "run"
    before = invoke("evaluate", run, "--k", 10, "--json")
    assert before.exit_code == 0, before.output
    nll = json.loads(before.output)["nll"]

    # the file moves: evaluate says where it looked, and takes the new place explicitly
    shutil.move(tmp_path / "data", tmp_path / "moved")
    gone = f"the data file {tmp_path / 'data' / 'fm.npz'} that {run} was trained on is not there"
    assert_one_line_error(invoke("evaluate", run, "--k", 10), gone)
    assert f"iwae evaluate {run} --dataset npz:NEW_PATH" in invoke("evaluate", run, "--k", 10).output
    assert_one_line_error(invoke("evaluate", run, "--method", "ais", "--steps", 2, "--chains", 2), gone)
    with pytest.raises(DataError, match="dataset='npz:NEW_PATH'"):
        evaluate(run, k=10)
    moved = f"npz:{tmp_path / 'moved' / 'fm.npz'}"
    after = invoke("evaluate", run, "--k", 10, "--dataset", moved, "--json")
    assert after.exit_code == 0, after.output
    assert json.loads(after.output)["nll"] == nll  # the same images, the same samples
    assert evaluate(run, k=10, dataset=moved)["nll"] == nll  # the same from Python
    assert open_run(run, dataset=moved).splits.test.shape == (12, 64)
    ais = invoke(
        "evaluate", run, "--method", "ais", "--steps", 2, "--chains", 2, "--leapfrog", 1, "--dataset", moved, "--quiet"
    )
    assert ais.exit_code == 0, ais.output

    # refused: another kind of data, and images of another size than the model's
    assert_one_line_error(invoke("evaluate", run, "--k", 10, "--dataset", "mnist"), "give the moved file as npz:PATH")
    other = _arrays(tmp_path / "other", pixels=49)
    assert_one_line_error(invoke("evaluate", run, "--k", 10, "--dataset", f"npz:{other}"), "images of 49 pixels")
    with pytest.raises(ValueError, match="images of 49 pixels"):
        open_run(run, dataset=f"npz:{other}").splits  # noqa: B018 - loading is what is tested


def test_check_moved_data_refuses_what_is_not_a_moved_user_file(tmp_path):
    user = TrainConfig(dataset=f"npz:{tmp_path / 'a.npz'}")
    check_moved_data(user, f"npz:{tmp_path / 'b.npz'}")  # a user file for a user file: the content is checked later
    check_moved_data(TrainConfig(dataset="mnist"), "mnist")  # the same data set
    with pytest.raises(ValueError, match="give the moved file as npz:PATH"):
        check_moved_data(user, "fashion-mnist")
    with pytest.raises(ValueError, match="the run was trained on mnist; a data path replaces only a moved npz: file"):
        check_moved_data(TrainConfig(dataset="mnist"), f"npz:{tmp_path / 'b.npz'}")
    assert os.sep in user.dataset
