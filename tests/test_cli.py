"""Tests for the ``iwae`` command line (click's CliRunner on iwae.cli.main, plus one real
subprocess of the installed console script for the exit status)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import by_hand
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from iwae import rundir
from iwae import train as train_module
from iwae.checkpoint import load_tensors
from iwae.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_usage_error(result, *phrases: str) -> str:
    """Exit status 2, no traceback, exactly one ``Error:`` line that says what is wrong."""
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, text
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data_dir) -> Path:
    """`iwae train` end to end on real MNIST: IWAE(k=5), one epoch on 500 images."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke(
        "train",
        "--objective",
        "iwae",
        "--k",
        5,
        "--epochs",
        1,
        "--train-subset",
        500,
        "--data-dir",
        shared_data_dir,
        "--out",
        out,
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert str(out) in result.stdout and "evaluate" in result.stdout
    return out


def test_train_then_evaluate_end_to_end(run_dir, mnist_splits):
    for name in ("config.yaml", "model.safetensors", "checkpoint.safetensors", "metrics.csv"):
        assert (run_dir / name).is_file(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["objective"] == "iwae" and config["k"] == 5 and config["epochs"] == 1
    assert config["train_subset"] == 500 and config["layers"] == 1

    result = invoke("evaluate", run_dir, "--k", 50, "--test-subset", 100, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    # -L_50 over the first 100 test images, L_50 computed by hand from the trained model's log-weights
    model = train_module.load(run_dir)
    lk, spread = by_hand.mean_lk(model, mnist_splits.test[:100], 50)
    assert abs(report["nll"] + lk) < max(0.3, 8 * spread), (report["nll"], lk, spread)
    assert math.isfinite(report["nll_stderr"]) and report["nll_stderr"] > 0
    assert report["k"] == 50 and report["n_test"] == 100
    assert report["active_units"] == by_hand.active_units_one_layer(model, mnist_splits.train)
    saved = json.loads((run_dir / "eval_k50_n100_seed0.json").read_text())
    assert saved == report
    assert saved["model"]["epoch"] == 1 and saved["model"]["sha256"] == rundir.model_sha256(run_dir)
    assert saved["seed"] == 0 and saved["test_images"] == {
        "dataset": "mnist",
        "split": "test",
        "first": 100,
        "of": 10000,
        "binarization": {"mode": "dynamic", "test": "test images binarized once with seed 20160201"},
        # the exact tensor measured, its digest computed here from the fixture's binarized test images
        "sha256": hashlib.sha256(
            b"torch.float32\0(100, 784)\0" + mnist_splits.test[:100].numpy().astype(np.float32).tobytes()
        ).hexdigest(),
    }
    assert saved["runtime"]["device"] == "cpu" and saved["runtime"]["torch"] == torch.__version__
    bounds = np.load(run_dir / "eval_k50_n100_seed0.npy")
    assert bounds.shape == (100,) and -bounds.mean() == pytest.approx(report["nll"], rel=1e-12)

    table = invoke("evaluate", run_dir, "--k", 5, "--test-subset", 10, "--quiet")
    assert table.exit_code == 0, (table.output, table.exception)
    assert "test NLL" in table.stdout and "active units" in table.stdout
    saved = json.loads((run_dir / "eval_k5_n10_seed0.json").read_text())
    assert f"{saved['nll']:.2f}" in table.stdout
    assert "epoch 1 of 1" in table.stdout and saved["model"]["sha256"] in table.stdout
    assert "the first 10 of 10000" in table.stdout


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "args, phrases",
    [
        (["--k", "0"], ["k must be >= 1"]),
        (["--beta", "1.5"], ["beta", "[0, 1]"]),
        (["--objective", "miwae", "--k", "10", "--m", "3"], ["m = 3 must divide", "k = 10"]),
        (["--dataset", "no-such-data"], ["unknown dataset", "no-such-data"]),
        (["--latent-dims", "a,b"], ["--latent-dims"]),
        (["--latent-dims", "100,50", "--layers", "1"], ["--latent-dims [100, 50] has 2 entries for 1 layers"]),
    ],
    ids=["k0", "beta", "miwae-m", "dataset", "latent-dims", "layers"],
)
def test_train_bad_input_exits_2(tmp_path, args, phrases):
    result = invoke("train", *args, "--epochs", 1, "--out", tmp_path / "run")
    assert_usage_error(result, *phrases)


def test_train_without_out(tmp_path):
    assert_usage_error(invoke("train", "--k", 5, "--epochs", 1), "--out")


def test_evaluate_missing_run_dir(tmp_path):
    assert_usage_error(invoke("evaluate", tmp_path / "nope", "--k", 5), "not found", "nope")
    assert_usage_error(invoke("evaluate", tmp_path, "--k", 0), "k must be >= 1")


def test_resume_without_checkpoint(tmp_path, run_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(invoke("train", "--resume", empty), "config")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(run_dir / "config.yaml", half / "config.yaml")
    # stopped before its first checkpoint: --resume trains it from the beginning, to the same model
    result = invoke("train", "--resume", half, "--quiet")
    assert result.exit_code == 0 and "starting it from the beginning" in result.output, result.output
    a, _ = load_tensors(half / "model.safetensors")
    b, _ = load_tensors(run_dir / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert_usage_error(invoke("train", "--resume", tmp_path / "missing"), "not found")


def test_resume_cannot_change_the_objective(run_dir):
    before = snapshot(run_dir)
    assert_usage_error(
        invoke("train", "--resume", run_dir, "--objective", "vae", "--epochs", 2), "cannot change --objective"
    )
    assert_usage_error(invoke("train", "--resume", run_dir, "--k", 50), "cannot change --k")
    assert snapshot(run_dir) == before


def test_existing_out_needs_overwrite(run_dir, shared_data_dir):
    before = snapshot(run_dir)
    result = invoke(
        "train",
        "--objective",
        "vae",
        "--k",
        1,
        "--epochs",
        1,
        "--train-subset",
        20,
        "--data-dir",
        shared_data_dir,
        "--out",
        run_dir,
    )
    assert_usage_error(result, "not empty", "--overwrite")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_evaluate_corrupt_model(tmp_path, run_dir, damage):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    path = copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"not a model at all\n" * 50 if damage == "garbage" else data[: len(data) // 3])
    assert_usage_error(invoke("evaluate", copy, "--k", 5, "--test-subset", 5), "model.safetensors", "corrupt")


def test_evaluate_model_with_inconsistent_metadata(tmp_path, run_dir):
    """A valid safetensors file whose metadata does not fit config.yaml (weights of another input size,
    the digest of another architecture, no input size) is a user error too: exit 2, one line, no
    traceback. (Old-layout files, with a model config in the metadata: tests/test_rundir.py.)"""
    from safetensors.torch import save_file

    tensors, meta = load_tensors(run_dir / "model.safetensors")
    for name, change in [
        ("shapes", lambda m: m.update(input_dim=700)),
        ("digest", lambda m: m.update(model_digest="0" * 64)),
        ("no-input-size", lambda m: m.pop("input_dim")),
    ]:
        copy = tmp_path / name
        shutil.copytree(run_dir, copy)
        bad = json.loads(json.dumps(meta))
        change(bad)
        save_file(tensors, str(copy / "model.safetensors"), metadata={"json": json.dumps(bad)})
        assert_usage_error(invoke("evaluate", copy, "--k", 2, "--test-subset", 2), "model.safetensors")


def test_resume_extends_a_run_like_a_longer_run(tmp_path, run_dir):
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    result = invoke("train", "--resume", resumed, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert yaml.safe_load((resumed / "config.yaml").read_text())["epochs"] == 2
    assert len((resumed / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    longer = tmp_path / "longer"
    result = invoke("train", "--config", run_dir / "config.yaml", "--epochs", 2, "--out", longer, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    a, _ = load_tensors(resumed / "model.safetensors")
    b, _ = load_tensors(longer / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_exits_130_with_the_command_that_resumes(tmp_path, monkeypatch):
    """Ctrl-C prints the actual command (iwae train --resume RUN), or that nothing started yet."""
    stop_after_start = True

    def interrupted(config, **kw):
        if stop_after_start:  # as train() does before its first epoch: config.yaml, then the epochs
            Path(config.out).mkdir(parents=True)
            (Path(config.out) / "config.yaml").write_text("objective: iwae\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    run = tmp_path / "my run"
    result = invoke("train", "--epochs", 1, "--out", run)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert f"interrupted; resume with: iwae train --resume '{run}'" in result.output  # quoted for the shell
    stop_after_start = False
    result = invoke("train", "--epochs", 1, "--out", tmp_path / "other")
    assert result.exit_code == 130
    assert "interrupted before the run started; nothing to resume: run the same command again" in result.output

    # a folder of seeds resumes as a whole
    import iwae.members as members_module

    def members_interrupted(configs, **kw):
        for c in configs:
            Path(c.out).mkdir(parents=True)
            (Path(c.out) / "config.yaml").write_text("objective: iwae\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(members_module, "train_members", members_interrupted)
    result = invoke("train", "--epochs", 1, "--seeds", "0,1", "--out", tmp_path / "seeds")
    assert result.exit_code == 130
    assert f"interrupted; resume with: iwae train --resume {tmp_path / 'seeds'}" in result.output

    # evaluate: nothing half-written to resume from
    import iwae.evaluate as evaluate_module

    def evaluation_interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "evaluate", evaluation_interrupted)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("objective: iwae\n")
    result = invoke("evaluate", tmp_path / "r")
    assert result.exit_code == 130 and "run the same command again" in result.output


def test_console_script_exit_status(tmp_path):
    exe = shutil.which("iwae")
    assert exe, "the iwae console script is not installed (pip install -e .)"
    env = dict(os.environ, IWAE_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("IWAE_DATA_DIR", None)
    proc = subprocess.run(
        [exe, "train", "--k", "0", "--epochs", "1", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: --k must be >= 1, got 0"], proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- help, config, dims
def test_help_shows_examples():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert "iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5" in result.stdout
    assert "iwae train --resume runs/iwae-k5 --epochs 40" in result.stdout
    # every example that starts a run says how long it trains: without --epochs it is the whole paper
    # schedule, 3,280 epochs (weeks on a CPU)
    examples = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("iwae train")]
    new_runs = [line for line in examples if "--resume" not in line]
    assert len(new_runs) >= 5 and all("--epochs" in line for line in new_runs), new_runs
    assert "3,280 epochs" in result.stdout and "--threads 1" in result.stdout
    result = invoke("evaluate", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert "iwae evaluate runs/iwae-k5 --k 100 --test-subset 1000 --json" in result.stdout
    assert invoke("--help").exit_code == 0


def test_config_reruns_with_the_same_settings(tmp_path, run_dir):
    new = tmp_path / "again"
    result = invoke("train", "--config", run_dir / "config.yaml", "--out", new, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    old_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    new_cfg = yaml.safe_load((new / "config.yaml").read_text())
    assert new_cfg["out"] == str(new)
    old_cfg.pop("out"), new_cfg.pop("out")
    assert new_cfg == old_cfg
    # same settings, same seed: the same model, bit for bit
    a, _ = load_tensors(run_dir / "model.safetensors")
    b, _ = load_tensors(new / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_config_flags_override(tmp_path, run_dir, monkeypatch):
    captured = []
    monkeypatch.setattr(train_module, "train", lambda config, **kw: captured.append((config, kw)) or Path(config.out))
    result = invoke("train", "--config", run_dir / "config.yaml", "--out", tmp_path / "x", "--k", 7, "--seed", 3)
    assert result.exit_code == 0, (result.output, result.exception)
    ((config, kw),) = captured
    assert config.k == 7 and config.seed == 3 and config.train_subset == 500 and config.out == str(tmp_path / "x")


def captured_config(monkeypatch, tmp_path, *args):
    captured = []
    monkeypatch.setattr(train_module, "train", lambda config, **kw: captured.append(config) or Path(config.out))
    result = invoke("train", *args, "--epochs", 1, "--out", tmp_path / "run")
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(captured) == 1
    return captured[0]


def test_latent_dims_imply_layers(tmp_path, monkeypatch):
    config = captured_config(monkeypatch, tmp_path, "--latent-dims", "100,50")
    assert config.layers == 2 and config.latent_dims == [100, 50]
    mc = config.model_config(784)
    assert mc.latent_dims == (100, 50) and mc.hidden_dims == ((200, 200), (100, 100))
    config = captured_config(monkeypatch, tmp_path, "--latent-dims", "2")
    assert config.layers == 1 and config.model_config(784).latent_dims == (2,)
    config = captured_config(monkeypatch, tmp_path)
    assert config.layers == 1 and config.model_config(784).latent_dims == (50,)


def test_latent_dims_imply_layers_over_a_config(tmp_path, monkeypatch, run_dir):
    """--latent-dims given on the command line overrides a 1-layer config.yaml: 2 layers."""
    config = captured_config(monkeypatch, tmp_path, "--config", run_dir / "config.yaml", "--latent-dims", "100,50")
    assert config.layers == 2 and config.latent_dims == [100, 50]


def test_hidden_dims_parse(tmp_path, monkeypatch):
    config = captured_config(monkeypatch, tmp_path, "--latent-dims", "100,50", "--hidden-dims", "200,200/100,100")
    assert config.hidden_dims == [[200, 200], [100, 100]]
    assert config.model_config(784).hidden_dims == ((200, 200), (100, 100))
    config = captured_config(monkeypatch, tmp_path, "--latent-dims", "30,10", "--hidden-dims", "64/32,16,8")
    assert config.model_config(784).hidden_dims == ((64,), (32, 16, 8))
    assert_usage_error(invoke("train", "--hidden-dims", "200,x", "--out", tmp_path / "r"), "--hidden-dims")


# ----------------------------------------------------------------------------- messages name flags
def test_config_errors_name_the_flag_given_and_the_key_read(tmp_path):
    """Settings given as flags are named by their flags; settings read from a config file by its keys."""
    assert_usage_error(
        invoke("train", "--train-subset", 0, "--epochs", 1, "--out", tmp_path / "a"),
        "--train-subset must be >= 1, got 0",
    )
    assert_usage_error(
        invoke("train", "--kl-warmup", 3, "--epochs", 1, "--out", tmp_path / "a"),
        "--kl-warmup applies to the vae objective",
        "use --objective vae or --kl-warmup 0",
    )
    assert_usage_error(invoke("train", "--valid-k", 0, "--epochs", 1, "--out", tmp_path / "a"), "--valid-k must be")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"objective": "iwae", "k": 5, "train_subset": 0, "epochs": 1}))
    line = assert_usage_error(invoke("train", "--config", config, "--out", tmp_path / "b"), "train_subset must be >= 1")
    assert "--train-subset" not in line  # the file's key, not a flag that was not given
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_python_api_keeps_the_field_names():
    from iwae.errors import ConfigError
    from iwae.train import TrainConfig

    with pytest.raises(ConfigError, match="^train_subset must be >= 1") as e:
        TrainConfig(train_subset=0)
    assert e.value.fields == ("train_subset",)
    with pytest.raises(ConfigError) as e:
        TrainConfig(objective="miwae", k=10, m=3)
    assert set(e.value.fields) == {"m", "k"}
    assert e.value.renamed({"m": "--m", "k": "--k"}).startswith("--m = 3 must divide")


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_priors_need_components(tmp_path, prior, monkeypatch):
    from iwae.errors import ConfigError
    from iwae.train import TrainConfig

    assert_usage_error(
        invoke("train", "--prior", prior, "--epochs", 1, "--out", tmp_path / "run"),
        f"--prior {prior} needs --components",
    )
    with pytest.raises(ConfigError, match=f"prior {prior} needs components"):
        TrainConfig(prior=prior)
    assert TrainConfig(prior=prior, components=3).components == 3
    assert TrainConfig().components == 1  # the normal prior: one, as config.yaml files have recorded
    assert captured_config(monkeypatch, tmp_path, "--prior", prior, "--components", 4).components == 4
    assert not (tmp_path / "run").exists()


def test_subsets_beyond_the_data_are_refused(tmp_path, run_dir, shared_data_dir):
    out = tmp_path / "big"
    assert_usage_error(
        invoke("train", "--train-subset", 100000, "--epochs", 1, "--data-dir", shared_data_dir, "--out", out),
        "--train-subset 100000 is more than the 59600 training images of mnist",
    )
    assert not out.exists()
    before = snapshot(run_dir)
    assert_usage_error(
        invoke("evaluate", run_dir, "--k", 2, "--test-subset", 20000),
        "--test-subset 20000 is more than the 10000 test images of mnist",
    )
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------- initial weights are refused
@pytest.fixture(scope="module")
def untrained_run(run_dir, tmp_path_factory) -> Path:
    """A run killed before its first epoch ended: config.yaml and the initial model.safetensors only."""
    from iwae.rundir import save_model
    from iwae.train import load

    run = tmp_path_factory.mktemp("untrained") / "run"
    run.mkdir()
    shutil.copy(run_dir / "config.yaml", run / "config.yaml")
    save_model(run, load(run_dir), 0)
    return run


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--k", 2, "--test-subset", 2],
        ["analyze", "--subset", 5],
        ["sample", "--n", 4],
        ["plot", "--what", "samples", "--out", "OUT"],
        ["snr", "--k", 1, "--repeats", 2, "--batch-size", 2, "--out", "OUT"],
    ],
    ids=["evaluate", "analyze", "sample", "plot", "snr"],
)
def test_commands_refuse_a_run_that_has_not_completed_an_epoch(untrained_run, tmp_path, command):
    before = snapshot(untrained_run)
    args = [tmp_path / "out" if a == "OUT" else a for a in command]
    assert_usage_error(invoke(args[0], untrained_run, *args[1:]), "has not completed an epoch", "initial weights")
    assert snapshot(untrained_run) == before
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- reproduce --dry-run
def test_dry_run_says_which_runs_have_no_data(tmp_path, shared_data_dir, monkeypatch):
    monkeypatch.setenv("IWAE_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache: only --data-dir has data
    monkeypatch.delenv("IWAE_DATA_DIR", raising=False)
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "title": "tiny",
                "labels": ["dataset"],
                "figures": [],
                "runs": [{"name": "on-mnist", "dataset": "mnist"}, {"name": "on-omniglot", "dataset": "omniglot"}],
                "protocols": {"short": {"epochs": 1, "train_subset": 100, "test_subset": 10, "eval_k": 20}},
            }
        )
    )
    result = invoke("reproduce", exp, "--out", tmp_path / "out", "--data-dir", shared_data_dir, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = {ln.split()[0]: ln for ln in result.output.splitlines() if ln.startswith("  ")}
    assert "data is missing" not in lines["on-mnist"]
    assert "its data is missing" in lines["on-omniglot"]
    assert "data missing for 1 run(s) (chardata.mat)" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing read or downloaded


def test_result_json_records_the_weights_and_the_runtime(tmp_path, shared_data_dir):
    """reproduce's result.json says which weights were measured and where (device, torch, CUDA)."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "title": "tiny",
                "labels": ["k"],
                "figures": [],
                "runs": [{"name": "a", "objective": "vae", "k": 1}],
                "protocols": {"short": {"epochs": 1, "train_subset": 100, "test_subset": 10, "eval_k": 5}},
            }
        )
    )
    result = invoke("reproduce", exp, "--out", tmp_path / "out", "--data-dir", shared_data_dir, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    run = tmp_path / "out" / "runs" / "a"
    saved = json.loads((run / "result.json").read_text())
    assert saved["model"]["epoch"] == 1 and saved["model"]["sha256"] == rundir.model_sha256(run)
    assert saved["hardware"]["device"] == "cpu" and saved["hardware"]["torch"] == torch.__version__
    assert "cuda" in saved["hardware"]
    evaluation = json.loads((run / "eval_k5_n10_seed0.json").read_text())  # the library wrote it, as for the CLI
    assert evaluation["nll"] == saved["metrics"]["nll"]


# ----------------------------------------------------------------------------- train's flags come from TrainConfig
def _train_options() -> dict:
    from iwae.cli.runs import train as train_command

    return {p.name: p for p in train_command.params if isinstance(p, __import__("click").Option)}


def test_every_train_config_field_has_its_flag_with_the_fields_default():
    import dataclasses

    from iwae.train import TrainConfig

    options = _train_options()
    for f in dataclasses.fields(TrainConfig):
        assert f.name in options, f"TrainConfig.{f.name} has no flag"
        option = options[f.name]
        assert option.opts == ["--" + f.name.replace("_", "-")], option.opts
        # --out alone has no default on the command line (it is required there); every other flag's is the field's
        expected = None if f.name == "out" else f.default
        assert option.default == expected, (f.name, option.default, f.default)
        assert f.metadata.get("help"), (
            f"TrainConfig.{f.name} has no help text: declare it with iwae.config.train._setting"
        )
        assert option.help.startswith(f.metadata["help"]), f.name
    extra = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    # seeds, batch: members, see iwae.members; accept_changed_data: resuming on changed data files, deliberately
    assert extra == {"config_file", "resume", "overwrite", "quiet", "seeds", "batch", "accept_changed_data"}


def test_train_choices_are_the_librarys_lists():
    from iwae.estimators import ESTIMATORS
    from iwae.models import PRIORS
    from iwae.objectives import OBJECTIVES
    from iwae.train import SCHEDULES

    options = _train_options()
    for name, listed in [
        ("objective", OBJECTIVES),
        ("estimator", ESTIMATORS),
        ("prior", PRIORS),
        ("schedule", SCHEDULES),
    ]:
        assert tuple(options[name].type.choices) == tuple(listed), name
    assert options["learn_mixture_weights"].is_flag


def test_train_help_keeps_its_defaults_and_flags():
    text = invoke("train", "--help").stdout
    for phrase in [
        "--objective [vae|iwae|miwae|ciwae|piwae]",
        "[default: iwae]",
        "[default: 0.001]",
        "[default: all 3,280 of the paper",
        "[default: --k]",
        "[default: at the end of each epoch]",
        "--learn-mixture-weights",
        "--hidden-dims",
        "--checkpoint-every",
        "--resume",
        "--quiet",
    ]:
        assert phrase in " ".join(text.split()), phrase


def test_a_new_setting_gets_its_flag(monkeypatch):
    """setting_options builds one option per field of a dataclass from the field's metadata: a field
    added to a config adds its flag, with its type, choices, default and help."""
    import dataclasses

    import click

    from iwae.cli.support import setting_options
    from iwae.config.train import _setting

    @dataclasses.dataclass
    class Config:
        warm_restarts: int = _setting(3, "Restarts of the schedule.")
        optimizer: str = _setting("adam", "The optimizer.", choices=("adam", "sgd"))
        widths: list[int] | None = _setting(None, "Widths.", shown="Burda's")
        nesterov: bool = _setting(False, "Nesterov momentum.")

    seen = []

    @click.command()
    @setting_options(Config)
    def command(**values):
        seen.append(values)

    result = CliRunner().invoke(command, ["--warm-restarts", "7", "--widths", "3,4", "--nesterov"])
    assert result.exit_code == 0, result.output
    assert seen == [{"warm_restarts": 7, "optimizer": "adam", "widths": [3, 4], "nesterov": True}]
    assert CliRunner().invoke(command, ["--optimizer", "lbfgs"]).exit_code == 2
    assert CliRunner().invoke(command, ["--warm-restarts", "x"]).exit_code == 2
    text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "Restarts of the schedule. [default: 3]" in text and "Widths. [default: Burda's]" in text


def test_resume_names_the_flags_that_may_change(run_dir):
    from iwae.train import RESUMABLE

    assert RESUMABLE == ("epochs", "device", "threads", "compile", "checkpoint_every")
    assert_usage_error(
        invoke("train", "--resume", run_dir, "--seed", 1, "--lr", 0.1),
        "cannot change --lr, --seed when resuming; only epochs, device, threads, compile and checkpoint_every",
    )
    from iwae.errors import ConfigError
    from iwae.train import resume_config

    with pytest.raises(ConfigError, match="^cannot change seed when resuming") as e:
        resume_config(run_dir, {"seed": 1, "epochs": 3})
    assert e.value.fields == ("seed",)
    config = resume_config(run_dir, {"epochs": 3, "threads": 2, "out": "elsewhere"})
    assert (config.epochs, config.threads, config.out, config.k) == (3, 2, str(run_dir), 5)


def test_memory_budget_below_one_sample_is_named_in_gib(run_dir):
    line = assert_usage_error(
        invoke("evaluate", run_dir, "--k", 2, "--test-subset", 2, "--memory-budget", "1e-9"),
        "--memory-budget of 1e-09 GiB is below one sample's",
    )
    assert "bytes is below" not in line and "memory_budget" not in line
    assert_usage_error(invoke("evaluate", run_dir, "--k", 2, "--memory-budget", "inf"), "--memory-budget must be")
    from iwae.errors import ConfigError
    from iwae.evaluate import evaluate

    with pytest.raises(ConfigError, match="^memory_budget of 9.31e-10 GiB is below") as e:  # the API: bytes, one
        evaluate(run_dir, k=2, test_subset=2, memory_budget=1, save=False)
    assert e.value.fields == ("memory_budget",)


def test_config_error_is_public():
    import iwae
    from iwae.errors import ConfigError

    assert iwae.ConfigError is ConfigError and "ConfigError" in iwae.__all__
