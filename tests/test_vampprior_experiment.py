"""The shipped ``vampprior`` experiment: its runs have the settings of Tomczak & Welling's code (checked
against the code's defaults written out here, not read from the file), every protocol resolves to the same
grid on its data set, the short protocol is the truncation it says it is, and it claims no published number
it cannot source. One run of it trains and is evaluated end to end in tests/test_reproduce.py."""

from __future__ import annotations

import pytest

from iwae.experiments.spec import load_experiment

# the code's experiment.py defaults and the paper's grid
CODE = {
    "batch_size": 100,
    "lr": 5e-4,
    "schedule": "constant",
    "optimizer": "adam-normgrad",  # experiment.py: optimizer = AdamNormGrad(model.parameters(), lr=args.lr)
    "beta1": 0.9,
    "beta2": 0.999,
    "adam_eps": 1e-8,  # AdamNormGrad's default eps
    "early_stopping": 50,
    "network": "gated",
}
GRID = {(model, prior) for model in ("vae", "hvae") for prior in ("normal", "mog", "vamp")}


@pytest.fixture(scope="module")
def experiment():
    return load_experiment("vampprior")


@pytest.mark.parametrize(
    "protocol, dataset, likelihood",
    [
        ("paper", "mnist-vamp", "bernoulli"),
        ("omniglot", "omniglot", "bernoulli"),
        ("caltech101", "caltech101", "bernoulli"),
        ("frey", "frey", "logistic256"),
    ],
)
def test_every_paper_protocol_is_the_code_s_training_on_its_data_set(experiment, protocol, dataset, likelihood):
    runs = experiment.resolve(protocol)
    assert {(r.config["model"], r.config["prior"]) for r in runs if r.config["objective"] == "vae"} == GRID
    for r in runs:
        c = r.config
        assert {k: c[k] for k in CODE} == CODE, r.name
        assert (c["dataset"], c["likelihood"], c["epochs"], r.eval["k"], r.eval["test_subset"]) == (
            dataset,
            likelihood,
            2000,
            5000,
            None,
        )
        assert c["components"] == (1 if c["prior"] == "normal" else 500), r.name  # 500 pseudo-inputs
        assert c["latent_dims"] == (None if c["model"] == "hvae" else [40]), r.name  # z = 40 (the hvae's default)
        assert c["kl_warmup"] == (100 if c["objective"] == "vae" else 0), r.name  # warm-up: the ELBO's only
        assert r.published is None  # no published number is claimed
    extra = {
        (r.config["objective"], r.config["k"], r.config["estimator"]) for r in runs if r.config["objective"] != "vae"
    }
    assert extra == {("iwae", 5, "reparam"), ("iwae", 50, "reparam"), ("iwae", 5, "dreg"), ("iwae", 50, "dreg")}
    assert all(r.config["model"] == "hvae" and r.config["prior"] == "vamp" for r in runs if r.config["k"] > 1)


def test_the_short_protocol_is_the_truncation_it_describes(experiment):
    runs = {r.name: r for r in experiment.resolve("short")}
    assert len(runs) == 10
    for r in runs.values():
        c = r.config
        assert (c["epochs"], c["train_subset"], r.eval["test_subset"], r.eval["k"]) == (10, 2000, 100, 5000)
        assert c["dataset"] == "mnist-vamp" and c["components"] in (1, 100)
        assert c["kl_warmup"] == (2 if c["objective"] == "vae" else 0)
        assert c["valid_k"] == (5 if c["k"] == 50 else None)
    assert experiment.comparisons[0] == ["hvae-vamp", "vae-normal"]
    assert "2,000 training" in experiment.protocols["short"]["description"]


def test_the_file_says_no_published_number_was_confirmed(experiment):
    assert experiment.published_table() is None
    assert "none could be confirmed" in experiment.description
