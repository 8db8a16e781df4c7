"""iwae.choices, the names a setting may take (read without PyTorch), against the code behind them: every
name has its implementation, every implementation its name, and TrainConfig offers exactly these."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from iwae import choices, estimators, objectives
from iwae.compiled import compiled_forward
from iwae.config import ModelConfig, TrainConfig
from iwae.errors import DataError
from iwae.models import HVAE, VAE, make_likelihood, make_model, make_prior
from iwae.precision import autocast_dtype


def test_every_estimator_name_is_a_table_entry_defined_for_the_same_objectives():
    assert tuple(estimators.ESTIMATOR_TABLE) == choices.ESTIMATORS == estimators.ESTIMATORS
    for name, entry in estimators.ESTIMATOR_TABLE.items():
        assert entry.objectives == choices.ESTIMATOR_OBJECTIVES[name], name
        assert set(entry.objectives) <= set(choices.OBJECTIVES)


def test_every_objective_name_trains_a_model():
    x = torch.bernoulli(torch.full((3, 12), 0.4), generator=torch.Generator().manual_seed(0))
    model = VAE(ModelConfig(input_dim=12, latent_dims=(2,), hidden_dims=((5,),)))
    for name in choices.OBJECTIVES:
        spec = estimators.ObjectiveSpec(name, k=4, m=2 if name in ("miwae", "piwae") else 1)
        model.zero_grad(set_to_none=True)
        bound = estimators.accumulate_gradients(model, x, spec, torch.Generator().manual_seed(1))
        assert bound.shape == (3,) and torch.isfinite(bound).all(), name
    assert objectives.OBJECTIVES is choices.OBJECTIVES


def test_every_model_part_name_builds_and_an_unknown_one_is_refused():
    for name in choices.PRIORS:
        prior = make_prior(
            name, 2, 1 if name == "normal" else 3, encoder=VAE(ModelConfig(12, (2,), ((5,),))).encoder, input_dim=12
        )
        assert prior.log_prob(torch.zeros(4, 2)).shape == (4,), name
    for name in choices.LIKELIHOODS:
        assert make_likelihood(name, 12).name == name
    for name in choices.NETWORKS:
        config = ModelConfig(16, (2,), ((4, 4),), network=name)
        assert VAE(config).log_weights(torch.rand(3, 16).round(), 2).shape == (2, 3), name
    for name in choices.MODELS:
        config = ModelConfig(16, (2, 2), ((4, 4), (3,)), model=name)
        assert make_model(config).log_weights(torch.rand(3, 16).round(), 2).shape == (2, 3), name
    assert isinstance(make_model(ModelConfig.hvae(16)), HVAE) and isinstance(make_model(ModelConfig(16)), VAE)
    with pytest.raises(ValueError, match="unknown model 'ladder'"):
        ModelConfig(16, model="ladder")
    for maker, args in ((make_prior, ("cauchy", 2)), (make_likelihood, ("poisson", 12))):
        with pytest.raises(ValueError, match="cauchy|poisson"):
            maker(*args)


def test_precisions_compile_modes_and_binarizations_are_the_code_s():
    assert autocast_dtype("32") is None and autocast_dtype("bf16-mixed") is torch.bfloat16
    assert set(choices.PRECISIONS) == {"32", "bf16-mixed"}
    assert compiled_forward("none", "cpu") is None
    assert compiled_forward("step", "cpu") is None  # the whole step, iwae.compiled.step, in place of the forward
    with pytest.raises(ValueError, match="choose one of none, step, default, reduce-overhead"):
        compiled_forward("max-autotune", "cpu")
    assert [choices.resolve_binarize(b) for b in choices.BINARIZATIONS] == list(choices.BINARIZATIONS)
    assert choices.resolve_binarize("auto", "gaussian") == "none"
    with pytest.raises(DataError, match="unknown binarize mode 'sometimes'"):
        choices.resolve_binarize("sometimes")


def test_train_config_offers_exactly_these_choices():
    offered = {f.name: f.metadata.get("choices") for f in dataclasses.fields(TrainConfig)}
    assert offered["objective"] == choices.OBJECTIVES and offered["estimator"] == choices.ESTIMATORS
    assert offered["network"] == choices.NETWORKS and offered["prior"] == choices.PRIORS
    assert offered["model"] == choices.MODELS and offered["optimizer"] == choices.OPTIMIZERS
    assert offered["likelihood"] == choices.LIKELIHOODS and offered["precision"] == choices.PRECISIONS
    assert offered["compile"] == choices.COMPILE_MODES and offered["schedule"] == choices.SCHEDULES
    assert offered["binarize"] == ("auto",) + choices.BINARIZATIONS
