"""The bad-input matrix: every command, given a bad value, config file, data file, run folder or
experiment file, exits with status 2 and one ``Error:`` line (no traceback), and leaves every
existing file byte-identical and no new file behind.

One tiny run is trained once for the module (VAE, one epoch on 200 MNIST images); each case runs the
command in-process and compares a snapshot (path -> SHA-256, folders included) of the whole
working folder before and after. A property-based test then checks TrainConfig over numeric values:
any value is either accepted and round-trips through config.yaml, or refused with a one-line
ConfigError, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import invoke, invoke_unprivileged
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iwae.errors import ConfigError
from iwae.rundir import save_model
from iwae.train import TrainConfig, load


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_data_dir) -> dict:
    """A folder holding a trained run, an untrained one (killed before its first epoch), damaged copies,
    and bad config, data and experiment files; commands are pointed at these."""
    root = tmp_path_factory.mktemp("bad-inputs")
    run = root / "run"
    result = invoke(
        "train",
        "--objective",
        "vae",
        "--k",
        1,
        "--epochs",
        1,
        "--train-subset",
        200,
        "--valid-k",
        1,
        "--data-dir",
        shared_data_dir,
        "--out",
        run,
        "--quiet",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    untrained = root / "untrained"
    untrained.mkdir()
    shutil.copy(run / "config.yaml", untrained / "config.yaml")
    save_model(untrained, load(run), 0)
    for name, damage in [
        ("corrupt-model", lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 100)),
        ("no-config", lambda d: (d / "config.yaml").unlink()),
        ("bad-config", lambda d: (d / "config.yaml").write_text("objective: [unclosed\n")),
        ("no-model", lambda d: (d / "model.safetensors").unlink()),
    ]:
        shutil.copytree(run, root / name)
        damage(root / name)
    files = root / "files"
    files.mkdir()
    (files / "bad.yaml").write_text("k: [1, 2\n")
    (files / "list.yaml").write_text("- 1\n- 2\n")
    (files / "unknown-key.yaml").write_text("objective: iwae\nk: 5\ndropout: 0.1\n")
    (files / "zero-subset.yaml").write_text("objective: iwae\nk: 5\ntrain_subset: 0\nepochs: 1\n")
    (files / "text.npz").write_text("not an archive\n")
    np.savez(files / "grey255.npz", train=np.full((20, 784), 255, np.int64), test=np.zeros((5, 784), np.int64))
    np.save(files / "two.npy", np.zeros((2, 784), np.float32))
    np.savez(files / "no-test.npz", train=np.zeros((20, 784), np.float32))
    (files / "exp-bad.yaml").write_text("name: [x\n")
    (files / "exp-unknown.yaml").write_text(
        yaml.safe_dump(
            {"name": "x", "title": "x", "runs": [{"name": "a"}], "protocols": {"short": {}}, "colour": "red"}
        )
    )
    (files / "exp-bad-run.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "title": "x",
                "labels": ["k"],
                "figures": [],
                "runs": [{"name": "a", "k": 0}],
                "protocols": {"short": {"epochs": 1}},
            }
        )
    )
    # run names that are not one plain folder name (issue 20, 1): each experiment file is refused
    elsewhere = root / "elsewhere"  # where an absolute name would write: inside the world, so the snapshot sees it
    for case, runs in BAD_NAME_RUNS.items():
        runs = [
            {k: (str(elsewhere / v[len("ABS/") :]) if str(v).startswith("ABS/") else v) for k, v in r.items()}
            for r in runs
        ]
        spec = {"name": "x", "title": "x", "runs": runs, "protocols": {"short": {"epochs": 1}}}
        (files / f"exp-{case}.yaml").write_text(yaml.safe_dump(spec))
    (files / "exp-name-format-path.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "name_format": "{dataset}-k{k}",  # a user's npz:PATH dataset puts a path in the name
                "runs": [{"dataset": f"npz:{files / 'two.npy'}"}],
                "protocols": {"short": {"epochs": 1}},
            }
        )
    )
    (files / "exp-experiment-name.yaml").write_text(
        yaml.safe_dump({"name": "../up", "runs": [{"name": "a"}], "protocols": {"short": {"epochs": 1}}})
    )
    # two seeds trained as one batched model, and a reproduction's folder (for the locked cases)
    result = invoke(
        "train", "--objective", "vae", "--k", 1, "--epochs", 1, "--train-subset", 200, "--valid-k", 1,
        "--seeds", "0,1", "--data-dir", shared_data_dir, "--out", root / "seeds", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    (root / "repro").mkdir()
    (root / "repro" / "reproduction.json").write_text(json.dumps({"experiment": "x", "runs": []}))
    assert invoke("report", root / "repro", "--no-figures").exit_code == 0  # a folder a report accepts
    # a link to the run, a read-only copy of it and a read-only folder (issue 20, 10)
    (root / "link").symlink_to(run, target_is_directory=True)
    shutil.copytree(run, root / "ro-run")
    (root / "ro-dir").mkdir()
    for path in [*sorted((root / "ro-run").rglob("*"), reverse=True), root / "ro-run", root / "ro-dir"]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return {
        "root": root,
        "RUN": run,
        "UNTRAINED": untrained,
        "DATA": shared_data_dir,
        "FILES": files,
        "NEW": root / "new",
    }


# experiment files whose run names are not plain names: an absolute path (ABS/: inside the world),
# traversal, separators, the folder itself and its parent, hidden, an option, the empty name, NUL and
# other control characters, too long, Unicode look-alikes; and continue_from spelled so
BAD_NAME_RUNS = {
    "name-absolute": [{"name": "ABS/base"}, {"name": "ABS/victim", "continue_from": "ABS/base"}],  # the issue's
    "name-dotdot": [{"name": "../victim"}],
    "name-deep-dotdot": [{"name": "a/../../victim"}],
    "name-slash": [{"name": "a/b"}],
    "name-parent": [{"name": ".."}],
    "name-itself": [{"name": "."}],
    "name-hidden": [{"name": ".x"}],
    "name-option": [{"name": "-rf"}],
    "name-empty": [{"name": ""}],
    "name-null": [{"name": None}],
    "name-backslash": [{"name": "a\\b"}],
    "name-nul": [{"name": "a\x00b"}],
    "name-newline": [{"name": "a\nb"}],
    "name-long": [{"name": "x" * 101}],
    "name-fullwidth": [{"name": "\uff4dnist"}],  # a fullwidth m
    "name-cyrillic": [{"name": "v\u0430e"}],  # a Cyrillic a
    "continue-absolute": [{"name": "base"}, {"name": "b", "continue_from": "ABS/base"}],
    "continue-dotdot": [{"name": "base"}, {"name": "b", "continue_from": "../base"}],
}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too) with the SHA-256 of each file's bytes."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(root.rglob("*"))
    }


D = "--data-dir"
# (id, command line; upper-case words are paths of the world fixture, FILES/x a file in it, NEW a new path)
CASES = [
    # train: values
    ("train-k0", "train --k 0 --epochs 1 --out NEW"),
    ("train-k-negative", "train --k -3 --epochs 1 --out NEW"),
    ("train-m0", "train --objective miwae --k 4 --m 0 --epochs 1 --out NEW"),
    ("train-m-divides", "train --objective miwae --k 10 --m 3 --epochs 1 --out NEW"),
    ("train-m-not-grouped", "train --objective iwae --k 4 --m 2 --epochs 1 --out NEW"),
    ("train-beta", "train --objective ciwae --beta 1.5 --epochs 1 --out NEW"),
    ("train-beta-nan", "train --objective ciwae --beta nan --epochs 1 --out NEW"),
    ("train-lr0", "train --lr 0 --epochs 1 --out NEW"),
    ("train-lr-nan", "train --lr nan --epochs 1 --out NEW"),
    ("train-batch0", "train --batch-size 0 --epochs 1 --out NEW"),
    ("train-epochs0", "train --epochs 0 --out NEW"),
    ("train-layers0", "train --layers 0 --epochs 1 --out NEW"),
    ("train-layers3", "train --layers 3 --epochs 1 --out NEW"),
    ("train-latent-text", "train --latent-dims a,b --epochs 1 --out NEW"),
    ("train-latent-zero", "train --latent-dims 0 --epochs 1 --out NEW"),
    ("train-hidden-text", "train --hidden-dims 200,x --epochs 1 --out NEW"),
    ("train-latent-vs-layers", "train --latent-dims 100,50 --layers 1 --epochs 1 --out NEW"),
    ("train-mog-no-components", "train --prior mog --epochs 1 --out NEW"),
    ("train-vamp-no-components", "train --prior vamp --epochs 1 --out NEW"),
    ("train-normal-components", "train --components 5 --epochs 1 --out NEW"),
    ("train-mog-components0", "train --prior mog --components 0 --epochs 1 --out NEW"),
    ("train-mixture-weights", "train --learn-mixture-weights --epochs 1 --out NEW"),
    ("train-warmup-iwae", "train --kl-warmup 3 --epochs 1 --out NEW"),
    ("train-warmup-negative", "train --objective vae --k 1 --kl-warmup -1 --epochs 1 --out NEW"),
    ("train-valid-k0", "train --valid-k 0 --epochs 1 --out NEW"),
    ("train-subset0", "train --train-subset 0 --epochs 1 --out NEW"),
    ("train-beta1", "train --beta1 1.0 --epochs 1 --out NEW"),
    ("train-constant-no-epochs", "train --schedule constant --out NEW"),
    ("train-rws-vae", "train --objective vae --k 1 --estimator rws --epochs 1 --out NEW"),
    ("train-objective-choice", "train --objective nope --out NEW"),
    ("train-k-text", "train --k five --out NEW"),
    ("train-no-out", "train --k 5 --epochs 1"),
    # train: sizes, checked before anything is allocated or written (issue 20, item 9)
    ("train-k-1e20", "train --k 100000000000000000000 --epochs 1 --out NEW"),
    ("train-k-int64", "train --k 9223372036854775807 --epochs 1 --out NEW"),
    ("train-latent-huge", "train --latent-dims 3000000000 --epochs 1 --out NEW"),
    ("train-seed-huge", "train --seed 100000000000000000000 --epochs 1 --out NEW"),
    ("train-hidden-memory", f"train --hidden-dims 2000000000 --train-subset 200 {D} DATA --epochs 1 --out NEW"),
    (
        "train-components-memory",
        f"train --prior mog --components 2000000000 --train-subset 200 {D} DATA --epochs 1 --out NEW",
    ),
    ("train-k-memory", f"train --k 2000000 --train-subset 200 {D} DATA --epochs 1 --out NEW"),
    ("train-batch-over-data", f"train --batch-size 1000000000 --train-subset 400 {D} DATA --epochs 1 --out NEW"),
    ("train-valid-k-absurd", f"train --valid-k 1000000000 --train-subset 200 {D} DATA --epochs 1 --out NEW"),
    # train: a bernoulli likelihood on grey levels (item 8)
    ("train-bernoulli-grey", f"train --binarize none --train-subset 200 {D} DATA --epochs 1 --out NEW"),
    # train: data
    ("train-subset-too-big", f"train --train-subset 100000 --epochs 1 {D} DATA --out NEW"),
    ("train-dataset", "train --dataset no-such-data --epochs 1 --out NEW"),
    ("train-npz-missing", "train --dataset npz:FILES/missing.npz --epochs 1 --out NEW"),
    ("train-npz-text", "train --dataset npz:FILES/text.npz --epochs 1 --out NEW"),
    ("train-npz-255", "train --dataset npz:FILES/grey255.npz --epochs 1 --out NEW"),
    ("train-npy-two", "train --dataset npz:FILES/two.npy --epochs 1 --out NEW"),
    ("train-npz-no-test", "train --dataset npz:FILES/no-test.npz --epochs 1 --out NEW"),
    ("train-data-dir", "train --data-dir NEW --epochs 1 --out NEW"),
    ("train-init-from-missing", f"train --init-from FILES/no-run --train-subset 20 {D} DATA --epochs 1 --out NEW"),
    # train: config files and run folders
    ("train-config-missing", "train --config FILES/missing.yaml --out NEW"),
    ("train-config-bad-yaml", "train --config FILES/bad.yaml --out NEW"),
    ("train-config-list", "train --config FILES/list.yaml --out NEW"),
    ("train-config-unknown-key", "train --config FILES/unknown-key.yaml --out NEW"),
    ("train-config-bad-value", "train --config FILES/zero-subset.yaml --out NEW"),
    ("train-existing-out", f"train --objective vae --k 1 --epochs 1 --train-subset 20 {D} DATA --out RUN"),
    ("train-resume-change", "train --resume RUN --objective iwae"),
    ("train-resume-missing", "train --resume NEW"),
    ("train-resume-no-config", "train --resume NO-CONFIG"),
    # evaluate
    ("evaluate-k0", "evaluate RUN --k 0"),
    ("evaluate-k-1e20", "evaluate RUN --k 100000000000000000000"),
    ("evaluate-k-absurd", "evaluate RUN --k 1000000000"),
    ("evaluate-missing", "evaluate NEW"),
    ("evaluate-subset0", "evaluate RUN --k 2 --test-subset 0"),
    ("evaluate-subset-too-big", "evaluate RUN --k 2 --test-subset 20000"),
    ("evaluate-budget0", "evaluate RUN --k 2 --test-subset 2 --memory-budget 0"),
    ("evaluate-budget-tiny", "evaluate RUN --k 2 --test-subset 2 --memory-budget 1e-9"),
    ("evaluate-device-gpu", "evaluate RUN --k 2 --test-subset 2 --device gpu"),
    ("evaluate-threads0", "evaluate RUN --k 2 --threads 0"),
    ("evaluate-untrained", "evaluate UNTRAINED --k 2 --test-subset 2"),
    ("evaluate-corrupt-model", "evaluate CORRUPT-MODEL --k 2 --test-subset 2"),
    ("evaluate-no-model", "evaluate NO-MODEL --k 2 --test-subset 2"),
    ("evaluate-no-config", "evaluate NO-CONFIG --k 2 --test-subset 2"),
    ("evaluate-bad-config", "evaluate BAD-CONFIG --k 2 --test-subset 2"),
    ("evaluate-data-dir", "evaluate RUN --k 2 --test-subset 2 --data-dir NEW"),
    # snr
    ("snr-neither", "snr --out NEW"),
    ("snr-both", "snr RUN --fresh --out NEW"),
    ("snr-repeats1", "snr --fresh --repeats 1 --out NEW"),
    ("snr-estimator", "snr --fresh --estimators nope --out NEW"),
    ("snr-m-without-miwae", "snr --fresh --objectives iwae --m 2 --out NEW"),
    ("snr-k0", "snr --fresh --k 0 --out NEW"),
    ("snr-untrained", "snr UNTRAINED --k 1 --repeats 2 --batch-size 2 --out NEW"),
    # grid
    ("grid-total0", "grid --out NEW --total 0 --dry-run"),
    ("grid-beta", "grid --out NEW --betas 2 --dry-run"),
    ("grid-beta-text", "grid --out NEW --betas x --dry-run"),
    ("grid-m-divides", "grid --out NEW --ms 3 --dry-run"),
    # reproduce
    ("reproduce-unknown", "reproduce no-such-experiment --dry-run"),
    ("reproduce-none", "reproduce --dry-run"),
    ("reproduce-protocol", "reproduce table1 --protocol nope --dry-run"),
    ("reproduce-epochs0", "reproduce table1 --epochs 0 --dry-run"),
    ("reproduce-only", "reproduce table1 --only zzz* --dry-run"),
    ("reproduce-datasets", "reproduce table1 --datasets nope --dry-run"),
    ("reproduce-workers0", "reproduce table1 --workers 0 --out NEW"),
    ("reproduce-file-missing", "reproduce FILES/missing-exp.yaml --dry-run"),
    ("reproduce-file-bad-yaml", "reproduce FILES/exp-bad.yaml --dry-run"),
    ("reproduce-file-unknown-key", "reproduce FILES/exp-unknown.yaml --dry-run"),
    ("reproduce-file-bad-run", "reproduce FILES/exp-bad-run.yaml --dry-run"),
    # analyze, qew, sample, plot, report
    ("analyze-subset0", "analyze RUN --subset 0"),
    ("analyze-samples0", "analyze RUN --samples 0"),
    ("analyze-untrained", "analyze UNTRAINED --subset 5"),
    ("qew-50d", "qew RUN --out NEW/q.png"),
    ("qew-k0", "qew RUN --k 0 --out NEW/q.png"),
    ("qew-extent", "qew RUN --extent -1 --out NEW/q.png"),
    ("qew-grid", "qew RUN --grid-size 1 --out NEW/q.png"),
    ("sample-n0", "sample RUN --n 0 --out NEW/s.png"),
    ("sample-missing", "sample NEW"),
    ("sample-format", "sample RUN --out NEW/s.xyz"),
    ("sample-pseudo-inputs", "sample RUN --pseudo-inputs --out NEW/p.png"),
    ("sample-untrained", "sample UNTRAINED --out NEW/s.png"),
    ("plot-three", "plot RUN RUN RUN --out NEW"),
    ("plot-toy-run", "plot toy RUN --out NEW"),
    ("plot-points0", "plot RUN --points 0 --out NEW"),
    ("plot-missing", "plot NEW --out NEW"),
    ("plot-untrained", "plot UNTRAINED --what samples --out NEW"),
    ("report-missing", "report NEW"),
    ("report-threads0", "report RUN --threads 0"),
    # experiment files whose run names leave runs/ (issue 20, 1): refused by --dry-run and by a reproduction
    *[(f"reproduce-{case}", f"reproduce FILES/exp-{case}.yaml --dry-run") for case in BAD_NAME_RUNS],
    ("reproduce-name-format-path", "reproduce FILES/exp-name-format-path.yaml --dry-run"),
    ("reproduce-experiment-name", "reproduce FILES/exp-experiment-name.yaml --dry-run"),
    ("reproduce-name-absolute-run", "reproduce FILES/exp-name-absolute.yaml --out NEW"),
    ("reproduce-name-dotdot-run", "reproduce FILES/exp-name-dotdot.yaml --out NEW"),
    # a link to a run folder is not replaced, nor what it points to (issue 20, 10)
    (
        "train-overwrite-link",
        f"train --objective vae --k 1 --epochs 1 --train-subset 20 {D} DATA --overwrite --out LINK",
    ),
]

# read-only folders (issue 20, 10): run as a user whom permissions stop (:func:`invoke_unprivileged`)
READ_ONLY_CASES = [
    (
        "ro-train-overwrite",
        f"train --objective vae --k 1 --epochs 1 --train-subset 20 {D} DATA --overwrite --out RO-RUN",
    ),
    ("ro-train-resume", "train --resume RO-RUN --epochs 2"),
    ("ro-evaluate", "evaluate RO-RUN --k 2 --test-subset 2"),
    ("ro-analyze", "analyze RO-RUN --subset 5"),
    ("ro-sample", "sample RO-RUN"),
    ("ro-sample-out", "sample RUN --out RO-DIR/s.png"),
    ("ro-plot", "plot RUN --what samples --out RO-DIR"),
    ("ro-plot-into-the-run", "plot RO-RUN --what samples --out RO-RUN"),
]

# every command that writes into a run folder, while another process writes there (holds its lock, issue 20, 2)
LOCKED_CASES = [
    (
        "locked-train-overwrite",
        f"train --objective vae --k 1 --epochs 1 --train-subset 20 {D} DATA --overwrite --out RUN",
    ),
    ("locked-train-same-out", f"train --objective iwae --k 2 --epochs 1 --train-subset 20 {D} DATA --out RUN"),
    ("locked-train-resume", "train --resume RUN --epochs 2"),
    ("locked-members-resume", "train --resume SEEDS --epochs 2"),
    ("locked-evaluate", "evaluate RUN --k 2 --test-subset 2"),
    ("locked-evaluate-ais", "evaluate RUN --method ais --steps 2 --chains 1 --test-subset 2"),
    ("locked-bdmc", "bdmc RUN --n 2 --steps 2 --chains 1"),
    ("locked-analyze", "analyze RUN --subset 5"),
    ("locked-snr", "snr RUN --k 1 --repeats 2 --batch-size 2 --out RUN"),
    ("locked-sample", "sample RUN"),
    ("locked-plot", "plot RUN --what samples --out RUN"),
    ("locked-qew", "qew RUN"),
    ("locked-report", "report REPRO"),
]


def resolve(word: str, world: dict) -> str:
    """A placeholder word of CASES as a path: RUN, NEW/s.png, npz:FILES/two.npy, CORRUPT-MODEL (a damaged copy)."""
    prefix = "npz:" if word.startswith("npz:") else ""
    head, sep, tail = word[len(prefix) :].partition("/")
    if head in world:
        base = world[head]
    elif head.isupper() and (world["root"] / head.lower()).is_dir():
        base = world["root"] / head.lower()
    else:
        return word
    return prefix + str(base) + sep + tail


def test_the_matrix_is_large_and_distinct():
    assert len(LOCKED_CASES) >= 12 and len(READ_ONLY_CASES) >= 6
    assert len({i for i, _ in CASES + READ_ONLY_CASES + LOCKED_CASES}) == len(CASES + READ_ONLY_CASES + LOCKED_CASES)
    ids = [i for i, _ in CASES]
    assert len(ids) == len(set(ids)) and len({c for _, c in CASES}) == len(CASES)
    assert len(CASES) >= 40
    commands = {c.split()[0] for _, c in CASES}
    assert commands == {"train", "evaluate", "snr", "grid", "reproduce", "analyze", "qew", "sample", "plot", "report"}


@pytest.mark.parametrize("command", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(world, command, monkeypatch):
    monkeypatch.setenv("IWAE_CACHE_DIR", str(world["root"] / "cache"))  # never the user's cache, never a download
    monkeypatch.delenv("IWAE_DATA_DIR", raising=False)
    args = [resolve(word, world) for word in command.split()]
    if "--device" in args and torch.cuda.is_available() and args[args.index("--device") + 1] == "cuda":
        pytest.skip("CUDA is available here")
    before = snapshot(world["root"])
    result = invoke(*args)
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and len(errors[0]) > len("Error: ") + 10, text
    assert snapshot(world["root"]) == before  # no file changed, none added (no output folder, no cache)


def _refused_in_one_line(result, before: dict, world: dict) -> str:
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and len(errors[0]) > len("Error: ") + 10, text
    assert snapshot(world["root"]) == before  # no file changed, none added
    return errors[0]


@pytest.mark.parametrize("command", [c for _, c in READ_ONLY_CASES], ids=[i for i, _ in READ_ONLY_CASES])
def test_a_read_only_folder_is_one_line_and_changes_nothing(world, command, monkeypatch):
    monkeypatch.setenv("IWAE_CACHE_DIR", str(world["root"] / "cache"))
    monkeypatch.delenv("IWAE_DATA_DIR", raising=False)
    args = [resolve(word, world) for word in command.split()]
    before = snapshot(world["root"])
    error = _refused_in_one_line(invoke_unprivileged(*args), before, world)
    assert "Permission denied" in error and "writable" in error, error


@pytest.fixture
def holder(world):
    """Starts another process that holds the lock of a folder (flock on it, as iwae's writers do) until
    the test ends; returns a function ``hold(folder) -> pid``."""
    started = []

    def hold(folder: Path) -> int:
        code = (
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc.pid

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("command", [c for _, c in LOCKED_CASES], ids=[i for i, _ in LOCKED_CASES])
def test_a_folder_another_process_writes_to_is_refused_naming_it(world, holder, command, monkeypatch):
    monkeypatch.setenv("IWAE_CACHE_DIR", str(world["root"] / "cache"))
    monkeypatch.delenv("IWAE_DATA_DIR", raising=False)
    args = [resolve(word, world) for word in command.split()]
    folder = world["root"] / ("seeds/seed1" if "SEEDS" in command else "repro" if "REPRO" in command else "run")
    pid = holder(folder)
    before = snapshot(world["root"])
    error = _refused_in_one_line(invoke(*args), before, world)
    assert f"{folder} is in use" in error and f"pid {pid}" in error, error


# ----------------------------------------------------------------------------- TrainConfig over numbers
INT_FIELDS = [
    "k",
    "m",
    "layers",
    "components",
    "kl_warmup",
    "batch_size",
    "epochs",
    "valid_k",
    "train_subset",
    "seed",
    "threads",
]
FLOAT_FIELDS = ["beta", "lr", "beta1", "beta2", "adam_eps"]
numbers = st.one_of(st.integers(-10, 10), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(INT_FIELDS + FLOAT_FIELDS),
    value=numbers,
    objective=st.sampled_from(["vae", "iwae", "miwae", "ciwae", "piwae"]),
    prior=st.sampled_from(["normal", "mog"]),
)
def test_train_config_accepts_and_round_trips_or_refuses_in_one_line(tmp_path, field, value, objective, prior):
    if field in INT_FIELDS and isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return  # a float for an integer setting is a type error: another check's business
        value = int(value)
    values = {
        "objective": objective,
        "k": 4,
        "m": 2 if objective in ("miwae", "piwae") else 1,
        "prior": prior,
        "components": 3 if prior == "mog" else None,
        "epochs": 1,
        field: value,
    }
    try:
        config = TrainConfig(**values)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
        assert e.fields, message  # it names the setting(s) it is about
        return
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    again = TrainConfig.from_yaml(path)
    assert again.to_dict() == config.to_dict()
    assert all(math.isfinite(v) for v in config.to_dict().values() if isinstance(v, float))
