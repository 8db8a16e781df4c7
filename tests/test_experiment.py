"""Tests for iwae.experiments.spec: the shipped experiment files, how runs resolve, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from iwae.experiments import published
from iwae.experiments.spec import EXECUTION_KEYS, ExperimentError, load_experiment, shipped_experiments
from iwae.train import TrainConfig

PAPER_EPOCHS = sum(3**i for i in range(8))


def test_the_issue_s_experiments_are_shipped():
    assert set(shipped_experiments()) >= {"table1", "table2", "table3", "rainforth", "estimators", "priors", "grey"}


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "rainforth", "estimators", "priors", "grey"])
def test_every_shipped_experiment_resolves_under_both_protocols(name):
    exp = load_experiment(name)
    for protocol in ("paper", "short"):
        runs = exp.resolve(protocol)
        assert runs and len({r.name for r in runs}) == len(runs)
        for r in runs:
            config = r.train_config("somewhere/runs/" + r.name)
            assert config.total_epochs >= 1 and r.eval["k"] == 5000
        if protocol == "paper":  # the full schedule and the whole test set
            assert all(r.eval["test_subset"] is None for r in runs)
            assert {r.config["epochs"] for r in runs if not r.after} == {PAPER_EPOCHS}
        else:
            assert all(r.config["epochs"] < 100 for r in runs)


def test_table1_trains_k1_once_per_dataset_and_depth_and_carries_burda_s_numbers():
    runs = load_experiment("table1").resolve("paper")
    assert len(runs) == 2 * 2 * 5  # datasets x layers x (vae k=1, vae/iwae k=5, vae/iwae k=50)
    by_name = {r.name: r for r in runs}
    rows = {(r["dataset"], r["layers"], r["k"]): r for r in published.burda2016_table1()}
    for r in runs:
        c = r.config
        row = rows[(c["dataset"], c["layers"], c["k"])]
        assert r.published == {"nll": row[f"{c['objective']}_nll"], "active_units": row[f"{c['objective']}_active"]}
        assert c["batch_size"] == 20 and c["schedule"] == "paper" and c["lr"] == 1e-3
    assert by_name["mnist-l2-iwae-k50"].published == {"nll": 82.90, "active_units": [26, 7]}
    assert not any(r.config["objective"] == "iwae" and r.config["k"] == 1 for r in runs)


def test_table2_continues_each_model_with_the_other_objective_at_lr_1e4():
    exp = load_experiment("table2")
    for protocol, more in (("paper", 3**7), ("short", 9)):
        runs = {r.name: r for r in exp.resolve(protocol)}
        cont = runs["vae-k1-then-iwae-k50"]
        assert cont.after == "vae-k1" and cont.config["objective"] == "iwae" and cont.config["k"] == 50
        assert cont.config["schedule"] == "constant" and cont.config["lr"] == 1e-4 and cont.config["epochs"] == more
        assert runs["iwae-k50-then-vae-k1"].after == "iwae-k50"
        assert cont.published == {"nll": 84.88, "active_units": [22]}
        assert runs["iwae-k50"].published == {"nll": 84.78, "active_units": [25]}
    config = runs["vae-k1-then-iwae-k50"].train_config("out/runs/vae-k1-then-iwae-k50")
    assert config.init_from == "out/runs/vae-k1"


def test_table3_uses_the_static_binarization_and_rainforth_uses_64_samples():
    runs = load_experiment("table3").resolve("short")
    assert {r.config["dataset"] for r in runs} == {"binarized-mnist"}
    assert {r.name: r.published for r in runs}["l2-iwae-k50"] == {"nll": 85.32}
    rain = {r.name: r for r in load_experiment("rainforth").resolve("short")}
    assert all(r.config["k"] == 64 for r in rain.values())
    assert rain["piwae-m8-k8"].config["m"] == 8 and rain["piwae-m8-k8"].eval["bound_ks"] == [64]
    assert rain["piwae-m8-k8"].published == {"iwae64": -85.74, "log_p_hat": -84.46, "neg_kl": -1.28}
    assert rain["miwae-m4-k16"].published is None


def test_priors_and_estimators_cover_their_grids():
    priors = load_experiment("priors").resolve("short")
    assert {(r.config["prior"], r.config["objective"]) for r in priors} == {
        (p, o) for p in ("normal", "mog", "vamp") for o in ("vae", "iwae")
    }
    assert {r.config["components"] for r in priors if r.config["prior"] != "normal"} == {100}
    est = load_experiment("estimators").resolve("short")
    assert {(r.config["k"], r.config["estimator"]) for r in est} == {
        (k, e) for k in (5, 50) for e in ("reparam", "stl", "dreg")
    }


def test_selection_by_dataset_pattern_and_overrides():
    exp = load_experiment("table1")
    runs = exp.resolve("short", datasets=["MNIST"], only=["*-l1-iwae-*"], overrides={"epochs": 2, "eval_k": 100})
    assert [r.name for r in runs] == ["mnist-l1-iwae-k5", "mnist-l1-iwae-k50"]
    assert all(r.config["epochs"] == 2 and r.eval["k"] == 100 for r in runs)
    # a continued run brings the run it continues
    names = [r.name for r in load_experiment("table2").resolve("short", only=["vae-k1-then-*"])]
    assert names == ["vae-k1", "vae-k1-then-iwae-k50"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"protocol": "long"}, "no protocol 'long'"),
        ({"datasets": ["fashion-mnist"]}, "no runs on fashion-mnist"),
        ({"only": ["nothing-*"]}, "matches no run"),
        ({"overrides": {"out": "x"}}, "cannot override out"),
        ({"overrides": {"colour": 1}}, "cannot override colour"),
    ],
)
def test_bad_selections_are_refused(kwargs, message):
    protocol = kwargs.pop("protocol", "short")
    with pytest.raises(ExperimentError, match=message):
        load_experiment("table1").resolve(protocol, **kwargs)


def test_an_invalid_override_value_names_the_run():
    with pytest.raises(ExperimentError, match="run mnist-l1-vae-k1: epochs must be >= 1"):
        load_experiment("table1").resolve("short", overrides={"epochs": 0})


GOOD = {"name": "mine", "runs": [{"name": "a", "objective": "iwae", "k": 2}], "protocols": {"short": {"epochs": 1}}}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"runs": []}, "non-empty list"),
        ({"colour": "red"}, "unknown keys colour"),
        ({"runs": [{"objective": "iwae", "k": 2}]}, "give every run a name"),
        ({"runs": [{"name": "a", "k": 2}, {"name": "a", "k": 3}]}, "two runs are named a"),
        ({"runs": [{"name": "a", "k": 2, "out": "x"}]}, "not a run setting"),
        ({"runs": [{"name": "a", "objective": "elbo"}]}, "run a: unknown objective"),
        ({"runs": [{"name": "b", "continue_from": "z"}]}, "continues z, which is not a run"),
        ({"figures": ["movie"]}, "unknown figures movie"),
        (
            {"published": {"paper": "burda2016", "table": "table1", "match": [], "values": {"nll": "vae_nll"}}},
            "12 rows of burda2016 table1 match",
        ),
    ],
)
def test_bad_experiment_files_are_refused_with_the_reason(tmp_path, change, message):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(ExperimentError, match=message):
        load_experiment(path)


def test_a_user_file_and_unknown_names(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    (run,) = load_experiment(path).resolve("short")
    assert run.config == {
        k: v for k, v in TrainConfig(objective="iwae", k=2, epochs=1).to_dict().items() if k not in EXECUTION_KEYS
    }
    with pytest.raises(ExperimentError, match="unknown experiment 'table9'"):
        load_experiment("table9")
    with pytest.raises(ExperimentError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("runs: [\n")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        load_experiment(tmp_path / "broken.yaml")


def test_the_docs_example_experiment_file_is_valid(tmp_path):
    page = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "experiments.md").read_text()
    block = page.split("## Your own experiments", 1)[1].split('```yaml title="my.yaml"\n', 1)[1].split("```", 1)[0]
    path = tmp_path / "mine.yaml"
    path.write_text(block)
    runs = load_experiment(path).resolve("short")
    assert [r.name for r in runs] == ["vae-k5", "iwae-k5", "vae-k50", "iwae-k50"]
    assert runs[1].config["estimator"] == "dreg" and runs[0].eval["bound_ks"] == [64]


# ----------------------------------------------------------------------------- seeds
def _seeded(tmp_path: Path, **top) -> Path:
    path = tmp_path / "seeded.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "seeded",
                "runs": [
                    {"name": "a", "objective": "iwae", "k": 2},
                    {"name": "b", "objective": "vae", "k": 1, "continue_from": "a"},
                ],
                "protocols": {"short": {"epochs": 1}, "paper": {"epochs": 2, "seeds": [0, 5]}},
                **top,
            }
        )
    )
    return path


def test_seeds_make_one_run_per_seed_and_seed_0_keeps_the_name(tmp_path):
    exp = load_experiment(_seeded(tmp_path, seeds=[0, 1, 2]))
    runs = exp.resolve("short")
    assert [(r.name, r.group, r.config["seed"], r.after) for r in runs] == [
        ("a", "a", 0, None),
        ("b", "b", 0, "a"),
        ("a-s1", "a", 1, None),
        ("b-s1", "b", 1, "a-s1"),
        ("a-s2", "a", 2, None),
        ("b-s2", "b", 2, "a-s2"),
    ]
    assert {r.eval["seed"] for r in runs} == {0}  # the test evaluation's seed stays
    # a protocol's seeds win over the file's
    assert [(r.name, r.config["seed"]) for r in exp.resolve("paper")] == [("a", 0), ("b", 0), ("a-s5", 5), ("b-s5", 5)]
    # without seeds, the names, groups and seeds of today
    plain = load_experiment(_seeded(tmp_path)).resolve("short")
    assert [(r.name, r.group, r.config["seed"]) for r in plain] == [("a", None, 0), ("b", None, 0)]
    with pytest.raises(ExperimentError, match="cannot override seed"):
        exp.resolve("short", overrides={"seed": 3})


def test_rainforth_paper_protocol_averages_four_seeds_and_short_keeps_one():
    exp = load_experiment("rainforth")
    paper, short = exp.resolve("paper"), exp.resolve("short")
    assert len(paper) == 4 * len(short) and {r.config["seed"] for r in paper} == {0, 1, 2, 3}
    assert [r.name for r in short] == [r.name for r in paper if r.config["seed"] == 0]
    assert "4 seeds" in exp.protocols["paper"]["description"]


@pytest.mark.parametrize("seeds", [[0, 0], [0, "1"], "0,1", [], [0.5], [True], [-1], 3])
def test_a_seed_list_that_is_not_distinct_integers_is_refused(tmp_path, seeds):
    with pytest.raises(ExperimentError, match=r"seeds must be a list of distinct integers") as e:
        load_experiment(_seeded(tmp_path, seeds=seeds))
    assert len(str(e.value).splitlines()) == 1


def test_a_bad_seed_list_is_a_one_line_cli_error(tmp_path):
    from cli_helpers import assert_one_line_error, invoke

    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "runs": [{"name": "a", "objective": "vae", "k": 1}],
                "protocols": {"short": {"epochs": 1, "seeds": [1, 1]}},
            }
        )
    )
    assert_one_line_error(
        invoke("reproduce", path, "--dry-run", "--out", tmp_path / "out"), "seeds must be a list of distinct integers"
    )
    assert not (tmp_path / "out").exists()
