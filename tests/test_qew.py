"""Tests for iwae.qew and `iwae qew`: q_EW approaches the grid posterior as k grows, every tensor is
built on the model's device, and the command refuses models without a 2-D one-layer latent. (The
figure's size is tested in test_figures.py.)"""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import pytest
import torch
from click.testing import CliRunner

from iwae.cli import main
from iwae.figures import qew_figure
from iwae.models import VAE, ModelConfig
from iwae.qew import check_model, qew_report


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def poor_q_model() -> VAE:
    """A 2-D latent model whose q(z|x) is shifted and too narrow, and whose posterior is peaked."""
    torch.manual_seed(1)
    model = VAE(ModelConfig(input_dim=8, latent_dims=(2,), hidden_dims=((16,),))).eval()
    with torch.no_grad():
        model.decoder[0].head.weight.mul_(3.0)
        model.encoder[0].head.bias[:2] += 0.5
        model.encoder[0].head.bias[2:] = math.log(0.5)
    return model


@pytest.mark.parametrize("extent", ["auto", 5.0])
def test_tv_to_the_posterior_decreases_with_k(extent):
    model = poor_q_model()
    x = torch.bernoulli(torch.full((2, 8), 0.5), generator=gen(8))
    rows = qew_report(model, x, ks=(1, 5, 50), samples=20_000, generator=gen(9), grid_size=41, extent=extent)
    assert [(r["image"], r["k"]) for r in rows] == [(b, k) for b in (0, 1) for k in (1, 5, 50)]
    for b in (0, 1):
        tv = {r["k"]: r["tv_qew"] for r in rows if r["image"] == b}
        kl = {r["k"]: r["kl_qew"] for r in rows if r["image"] == b}
        row = rows[3 * b]
        assert tv[1] > 0.3 and tv[50] < tv[5] < tv[1], tv
        assert kl[50] < kl[5] < kl[1], kl
        assert tv[50] < 0.15 and tv[50] > row["tv_floor"] > 0, (tv, row["tv_floor"])
        assert tv[1] == pytest.approx(row["tv_q"], abs=3 * row["tv_floor"])  # q_EW with k = 1 is q
        assert row["edge_mass"] < 1e-3 and rows[3 * b + 2]["qew_inside"] > 0.99
        if extent == "auto":  # the window also holds q's mass
            assert row["qew_inside"] > 0.99 and row["q_inside"] > 0.99


@pytest.mark.parametrize("extent, grid", [("auto", None), (4.0, None), ("auto", torch.linspace(-3.0, 3.0, 11))])
def test_every_tensor_is_built_on_the_model_s_device(extent, grid, tmp_path):
    """With torch's default device set to meta, any tensor built without naming the model's device
    lands on meta and the report fails (no data to copy); built on x's device, the report and the
    figure are what they are without it. (On a GPU, test_cuda_path runs the figure on CUDA itself.)"""
    model = poor_q_model()
    x = torch.bernoulli(torch.full((2, 8), 0.5), generator=gen(3))
    args = dict(ks=(1, 3), samples=300, grid_size=15, extent=extent, grid=grid)
    ref = qew_report(model, x, generator=gen(0), **args)
    with torch.device("meta"):
        got = qew_report(model, x, generator=gen(0), **args)
        figure_rows = qew_figure(model, x[:1], path=tmp_path / "q.png", generator=gen(0), **args)
    assert got == ref
    assert figure_rows == ref[:2] and (tmp_path / "q.png").stat().st_size > 0


def test_same_seed_same_report():
    model = poor_q_model()
    x = torch.ones(1, 8)
    a = qew_report(model, x, ks=(2,), samples=500, generator=gen(0), grid_size=21)
    b = qew_report(model, x, ks=(2,), samples=500, generator=gen(0), grid_size=21)
    assert a == b


def test_models_without_a_2d_one_layer_latent_are_refused():
    with pytest.raises(ValueError, match="2-D latent"):
        check_model(VAE(ModelConfig(input_dim=8, latent_dims=(3,), hidden_dims=((4,),))))
    two_layers = VAE(ModelConfig(input_dim=8, latent_dims=(4, 2), hidden_dims=((4,), (4,))))
    with pytest.raises(ValueError, match="one stochastic layer"):
        qew_report(two_layers, torch.ones(1, 8), ks=(1,), samples=10)
    with pytest.raises(ValueError, match="ks"):
        qew_report(poor_q_model(), torch.ones(1, 8), ks=(0,), samples=10)


# ----------------------------------------------------------------------------- CLI
def _train(out, data_dir, latent):
    from iwae.train import TrainConfig, train

    return train(
        TrainConfig(
            latent_dims=[latent],
            hidden_dims=[[16]],
            epochs=1,
            train_subset=100,
            k=2,
            data_dir=str(data_dir),
            out=str(out),
        ),
        progress=False,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir):
    root = tmp_path_factory.mktemp("qew")
    return _train(root / "2d", shared_data_dir, 2), _train(root / "50d", shared_data_dir, 50)


def test_qew_cli_writes_figure_and_json(runs, shared_data_dir, tmp_path):
    run_2d, _ = runs
    out = tmp_path / "fig" / "qew.png"
    result = CliRunner().invoke(
        main,
        [
            "qew",
            str(run_2d),
            "--images",
            "2",
            "--k",
            "1,10",
            "--samples",
            "2000",
            "--grid-size",
            "41",
            "--out",
            str(out),
            "--data-dir",
            str(shared_data_dir),
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "TV(q_EW,p)" in result.output and "wrote" in result.output
    assert mpimg.imread(out).shape[:2] == (2 * 220, 5 * 220)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["ks"] == [1, 10] and saved["images"] == 2
    assert [(r["image"], r["k"]) for r in saved["rows"]] == [(0, 1), (0, 10), (1, 1), (1, 10)]
    for image in (0, 1):
        k1, k10 = [r for r in saved["rows"] if r["image"] == image]
        # TV(p, q) is exact and does not depend on k; q_EW with k = 1 is q itself, so its histogram's TV
        # to p differs from TV(p, q) by at most the histogram's own TV to q (about the noise floor)
        assert k1["tv_q"] == k10["tv_q"]
        assert abs(k1["tv_qew"] - k1["tv_q"]) < 2 * k1["tv_floor"] + 0.02, k1

    as_json = CliRunner().invoke(
        main,
        [
            "qew",
            str(run_2d),
            "--images",
            "1",
            "--k",
            "3",
            "--samples",
            "500",
            "--grid-size",
            "21",
            "--extent",
            "4",
            "--json",
            "--data-dir",
            str(shared_data_dir),
        ],
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["rows"][0]["half_width"] == pytest.approx(4.0)
    assert (run_2d / "qew.png").is_file() and (run_2d / "qew.json").is_file()  # the default --out


def test_qew_cli_refuses_a_50d_model_in_one_line(runs, shared_data_dir):
    _, run_50d = runs
    result = CliRunner().invoke(main, ["qew", str(run_50d), "--data-dir", str(shared_data_dir)])
    assert result.exit_code == 2, result.output
    assert "2-D latent" in result.output and "50-D" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (run_50d / "qew.png").exists()


def test_qew_cli_bad_arguments(tmp_path, runs):
    run_2d, _ = runs
    for args, phrase in (
        (["--extent", "wide"], "--extent"),
        (["--extent", "-1"], "--extent"),
        (["--k", "0"], "--k"),
        (["--images", "0"], "--images"),
    ):
        result = CliRunner().invoke(main, ["qew", str(run_2d), *args])
        assert result.exit_code == 2 and phrase in result.output, (args, result.output)
    result = CliRunner().invoke(main, ["qew", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output
