"""Tests for the gradient signal-to-noise study (iwae.snr and ``iwae snr``)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from click.testing import CliRunner

from iwae import snr
from iwae.cli import main
from iwae.estimators import ObjectiveSpec
from iwae.models import VAE, ModelConfig


def tiny_model(seed: int = 0, input_dim: int = 20) -> VAE:
    torch.manual_seed(seed)
    return VAE(ModelConfig(input_dim, (3,), ((8,),)))


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ----------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("spec", [ObjectiveSpec("iwae", 3), ObjectiveSpec("miwae", 4, 2, estimator="dreg")])
def test_running_moments_agree_with_stored_samples(spec):
    model = tiny_model()
    x = torch.bernoulli(torch.full((4, 20), 0.4), generator=generator(1))
    samples = snr.gradient_samples(model, x, spec, 30, generator(7))
    result = snr.gradient_snr(model, x, spec, 30, generator(7))
    assert set(samples) == set(result.mean) == {n for n, _ in model.named_parameters()}
    for name, g in samples.items():
        assert g.shape == (30, dict(model.named_parameters())[name].numel())
        g = g.double()
        torch.testing.assert_close(result.mean[name], g.mean(0), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(result.std[name], g.std(0), rtol=1e-10, atol=1e-14)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_samples_are_batch_means_of_accumulate_gradients():
    from iwae.estimators import accumulate_gradients

    model = tiny_model()
    x = torch.bernoulli(torch.full((5, 20), 0.4), generator=generator(1))
    spec = ObjectiveSpec("iwae", 2)
    samples = snr.gradient_samples(model, x, spec, 2, generator(3))
    g = generator(3)
    for r in range(2):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, g)
        for name, p in model.named_parameters():
            torch.testing.assert_close(samples[name][r], p.grad.reshape(-1) / 5)


def test_running_moments_are_exact_for_constant_values():
    moments = snr.RunningMoments()
    for _ in range(50):
        moments.update(torch.tensor([0.1, -3.7, 0.0], dtype=torch.float32))
    assert moments.std().tolist() == [0.0, 0.0, 0.0]  # exactly: no rounding residue
    with pytest.raises(ValueError, match="at least 2"):
        single = snr.RunningMoments()
        single.update(torch.zeros(2))
        single.std()


class _Toy(torch.nn.Module):
    """Parameters only; a fake accumulate_gradients gives them gradients of known law."""

    def __init__(self):
        super().__init__()
        self.noisy_enc = torch.nn.Parameter(torch.zeros(400))
        self.zero_enc = torch.nn.Parameter(torch.zeros(7))
        self.noisy_dec = torch.nn.Parameter(torch.zeros(400))
        self.const_dec = torch.nn.Parameter(torch.zeros(3))

    def encoder_parameters(self):
        return [self.noisy_enc, self.zero_enc]

    def decoder_parameters(self):
        return [self.noisy_dec, self.const_dec]


def test_known_snr_and_deterministic_components(monkeypatch):
    """Gradients N(mu, sigma^2) per component (SNR = |mu| / sigma: 0.5 and 2.0), always-zero and
    constant non-zero components: the SNR is recovered and the std-0 components excluded and counted."""
    batch = 4

    def fake_accumulate(model, x, spec, gen):
        # accumulate_gradients sums over the batch; gradient_snr divides by B again
        noise = torch.randn(2, 400, generator=gen, dtype=torch.float64).float()
        model.noisy_enc.grad = batch * (-1.0 + 2.0 * noise[0])  # SNR 0.5
        model.noisy_dec.grad = batch * (3.0 + 1.5 * noise[1])  # SNR 2.0
        model.zero_enc.grad = torch.zeros(7)
        model.const_dec.grad = batch * torch.tensor([1.0, -2.0, 0.5])
        return torch.zeros(batch)

    monkeypatch.setattr(snr, "accumulate_gradients", fake_accumulate)
    model = _Toy()
    result = snr.gradient_snr(model, torch.zeros(batch, 1), ObjectiveSpec(), 2000, generator(0))
    enc, dec = result.summary("encoder"), result.summary("decoder")
    # per component the estimate's s.e. is about sqrt((1 + SNR^2 / 2) / R); 400 components average it away
    assert enc["mean"] == pytest.approx(0.5, abs=0.01) and enc["median"] == pytest.approx(0.5, abs=0.02)
    assert dec["mean"] == pytest.approx(2.0, abs=0.03) and dec["median"] == pytest.approx(2.0, abs=0.05)
    assert (enc["n"], enc["zero"], enc["constant"]) == (400, 7, 0)
    assert (dec["n"], dec["zero"], dec["constant"]) == (400, 0, 3)
    assert result.snr("const_dec").numel() == 0 and result.excluded("const_dec") == (0, 3)
    layers = {row["name"]: row for row in result.layers()}
    assert layers["zero_enc"]["n"] == 0 and math.isnan(layers["zero_enc"]["median"])  # undefined, and says n = 0
    assert layers["noisy_enc"]["part"] == "encoder" and layers["const_dec"]["part"] == "decoder"
    assert all(math.isfinite(v) for s in (enc, dec) for v in s.values())


def test_pixels_off_in_the_whole_batch_give_excluded_encoder_weights():
    """Real model: a pixel that is 0 in every image gives its first-layer encoder weights an
    exactly-zero gradient; they are counted, not turned into inf or nan."""
    model = tiny_model()
    x = torch.bernoulli(torch.full((3, 20), 0.5), generator=generator(2))
    x[:, :6] = 0  # 6 pixels off everywhere, 8 hidden units each
    x[0, 6:] = 1  # the others on somewhere
    result = snr.gradient_snr(model, x, ObjectiveSpec("iwae", 2), 20, generator(0))
    assert result.excluded("encoder.0.body.0.weight") == (48, 0)
    enc = result.summary("encoder")
    assert enc["zero"] == 48 and math.isfinite(enc["mean"]) and math.isfinite(enc["median"])
    assert result.summary("decoder")["zero"] == 0


# ----------------------------------------------------------------------------- slopes
def test_fit_slope_recovers_power_laws():
    ks = [1, 4, 16, 64]
    assert snr.fit_slope(ks, [3.0 * k**-0.5 for k in ks]) == pytest.approx(-0.5, abs=1e-12)
    assert snr.fit_slope(ks, [0.2 * k**0.5 for k in ks]) == pytest.approx(0.5, abs=1e-12)
    assert snr.fit_slope([2, 3, 10], [7.0, 7.0, 7.0]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        snr.fit_slope([1, 2], [1.0, 0.0])
    with pytest.raises(ValueError, match="two or more"):
        snr.fit_slope([1], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        snr.fit_slope([4, 4], [1.0, 2.0])


# ----------------------------------------------------------------------------- Rainforth's effect
def test_iwae_snr_falls_with_k_for_the_encoder_and_rises_for_the_decoder(mnist_splits):
    """Rainforth et al.: at fixed M = 1, the encoder's reparameterised SNR falls with K and the
    decoder's rises; DReG's encoder SNR does not fall. Medians over parameters of a small random
    net on 5 MNIST images, R = 200 (the SNR floor of pure noise is sqrt(2 / (pi R)) ~ 0.06)."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(784, (4,), ((16,),)))
    model.init_output_bias(mnist_splits.train.mean(0))
    x = snr.fixed_batch(mnist_splits, 5)
    specs = [ObjectiveSpec("iwae", k, estimator=e) for e in ("reparam", "dreg") for k in (1, 64)]
    rows = {(r["estimator"], r["k"]): r for r in snr.snr_sweep(model, x, specs, 200, seed=0)}
    # measured: encoder 0.32 -> 0.18, decoder 0.43 -> 1.57, dreg encoder 0.55 -> 0.55
    assert rows["reparam", 64]["encoder_median"] < 0.75 * rows["reparam", 1]["encoder_median"]
    assert rows["reparam", 64]["decoder_median"] > 2 * rows["reparam", 1]["decoder_median"]
    assert rows["dreg", 64]["encoder_median"] > 0.9 * rows["dreg", 1]["encoder_median"]
    assert rows["dreg", 64]["encoder_median"] > 2 * rows["reparam", 64]["encoder_median"]
    assert (
        rows["dreg", 64]["decoder_median"] == rows["reparam", 64]["decoder_median"]
    )  # same samples, same decoder term


# ----------------------------------------------------------------------------- figure
def _rows():
    rows = []
    for estimator, enc in (("reparam", -0.5), ("dreg", 0.1)):
        for k in (1, 4, 16, 64):
            rows.append(
                {
                    "objective": "iwae",
                    "m": 1,
                    "k": k,
                    "k_per_group": k,
                    "estimator": estimator,
                    "repeats": 100,
                    "encoder_median": k**enc,
                    "decoder_median": 0.3 * k**0.5,
                }
            )
        for m in (1, 4, 16):
            rows.append(
                {
                    "objective": "miwae",
                    "m": m,
                    "k": 4 * m,
                    "k_per_group": 4,
                    "estimator": estimator,
                    "repeats": 100,
                    "encoder_median": 0.5 * m**0.5,
                    "decoder_median": m**0.5,
                }
            )
    return rows


def test_curve_slopes_and_plot(tmp_path):
    import matplotlib.image

    slopes = {(s["objective"], s["estimator"], s["part"]): s["slope"] for s in snr.curve_slopes(_rows())}
    assert slopes["iwae", "reparam", "encoder"] == pytest.approx(-0.5)
    assert slopes["iwae", "dreg", "decoder"] == pytest.approx(0.5)
    assert slopes["miwae", "reparam", "encoder"] == pytest.approx(0.5)
    assert len(slopes) == 8
    path = snr.plot_snr(_rows(), tmp_path / "fig" / "snr.png")
    assert path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (450, 1100)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    svg = snr.plot_snr(_rows(), tmp_path / "snr.svg")
    assert "<svg" in svg.read_text()[:1000]


# ----------------------------------------------------------------------------- command line
def invoke(*args):
    return CliRunner().invoke(main, ["snr", *map(str, args)], catch_exceptions=True)


def test_cli_writes_csv_and_figure(tmp_path, shared_data_dir):
    out = tmp_path / "snr"
    result = invoke(
        "--fresh",
        "--k",
        "1,2",
        "--m",
        "1,2",
        "--group-k",
        2,
        "--repeats",
        3,
        "--batch-size",
        2,
        "--data-dir",
        shared_data_dir,
        "--out",
        out,
    )
    assert result.exit_code == 0, (result.output, result.exception)
    with open(out / "snr.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["objective"], r["m"], r["k"], r["estimator"]) for r in rows] == [
        ("iwae", "1", "1", "reparam"),
        ("iwae", "1", "2", "reparam"),
        ("iwae", "1", "1", "dreg"),
        ("iwae", "1", "2", "dreg"),
        ("miwae", "1", "2", "reparam"),
        ("miwae", "2", "4", "reparam"),
        ("miwae", "1", "2", "dreg"),
        ("miwae", "2", "4", "dreg"),
    ]
    assert all(float(r["encoder_median"]) > 0 and float(r["decoder_median"]) > 0 for r in rows)
    assert (out / "snr.png").stat().st_size > 10_000 and (out / "snr_layers.csv").is_file()
    assert "slope of log median SNR against log K: iwae, reparam, encoder" in result.stdout


def test_cli_on_a_run_directory(tmp_path, mnist_splits, shared_data_dir):
    from iwae.train import TrainConfig, train

    run = train(
        TrainConfig(
            latent_dims=[2],
            hidden_dims=[[8]],
            k=1,
            train_subset=40,
            epochs=1,
            schedule="constant",
            valid_k=1,
            out=str(tmp_path / "run"),
        ),
        progress=False,
        splits=mnist_splits,
    )
    result = invoke(
        run,
        "--objectives",
        "iwae",
        "--k",
        "1,3",
        "--estimators",
        "dreg",
        "--repeats",
        4,
        "--batch-size",
        3,
        "--data-dir",
        shared_data_dir,
        "--out",
        tmp_path / "out",
        "--json",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    import json

    report = json.loads(result.stdout)
    assert [r["k"] for r in report["rows"]] == [1, 3] and len(report["slopes"]) == 2
    assert (tmp_path / "out" / "snr.png").is_file()


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--fresh", "--repeats", "1"], "--repeats must be >= 2"),
        (["--fresh", "--k", "0,4"], "positive integers"),
        (["--fresh", "--m", "0"], "positive integers"),
        (["--fresh", "--objectives", "iwae", "--m", "4"], "--m applies to miwae and piwae"),
        (["--fresh", "--estimators", "reparam,magic"], "'magic'"),
        (["--fresh", "--objectives", "iwae,elbo"], "'elbo'"),
        (["--fresh", "--estimators", "rws"], "rws estimator is defined for the iwae objective only"),
        (["--fresh", "--group-k", "0"], "--group-k must be >= 1"),
        ([], "either RUN_DIR or --fresh"),
        (["somewhere", "--fresh"], "either RUN_DIR or --fresh"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(tmp_path, args, phrase):
    result = invoke(*args, "--out", tmp_path / "out")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and phrase in errors[0], result.output
    assert not (tmp_path / "out").exists()


def test_cli_missing_run_directory(tmp_path):
    result = invoke(tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "not found" in result.output


# ----------------------------------------------------------------------------- the study as a library call
def test_plan_study_builds_the_spec_grid():
    study = snr.plan_study(["iwae", "miwae"], ["reparam", "dreg"], ks=[1, 8], group_k=2, repeats=5)
    expected = [("iwae", k, 1, e) for e in ("reparam", "dreg") for k in (1, 8)]
    expected += [("miwae", 2 * m, m, e) for e in ("reparam", "dreg") for m in (1, 4, 16)]  # default M, K = 2 per group
    assert [(s.name, s.k, s.m, s.estimator) for s in study.specs] == expected
    assert (study.repeats, study.batch_size, study.seed) == (5, 20, 0)
    again = snr.plan_study(["miwae", "miwae"], ["stl"], ms=[3], group_k=5)  # repeated names count once
    assert [(s.k, s.m) for s in again.specs] == [(15, 3)]


@pytest.mark.parametrize(
    "kwargs, fields",
    [
        ({"ms": [2], "objectives": ["iwae"]}, ("ms", "objectives")),
        ({"estimators": ["magic"]}, ("estimators",)),
        ({"objectives": []}, ("objectives",)),
        ({"repeats": 1}, ("repeats",)),
        ({"group_k": 0}, ("group_k",)),
    ],
)
def test_plan_study_refuses_with_the_setting_named(kwargs, fields):
    from iwae.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        snr.plan_study(**kwargs)
    assert e.value.fields == fields and "\n" not in str(e.value)


def test_the_python_api_writes_the_files_the_cli_writes(tmp_path, mnist_splits, shared_data_dir):
    study = snr.plan_study(["iwae"], ["reparam"], ks=[1, 2], repeats=3, batch_size=2, seed=1)
    result = snr.run_study(study, snr.fresh_model(mnist_splits, seed=1), mnist_splits, tmp_path / "api", source="x")
    cli = invoke(
        "--fresh",
        "--objectives",
        "iwae",
        "--estimators",
        "reparam",
        "--k",
        "1,2",
        "--repeats",
        3,
        "--batch-size",
        2,
        "--seed",
        1,
        "--data-dir",
        shared_data_dir,
        "--out",
        tmp_path / "cli",
    )
    assert cli.exit_code == 0, (cli.output, cli.exception)
    assert result["files"] == [str(tmp_path / "api" / name) for name in ("snr.csv", "snr_layers.csv", "snr.png")]

    def table(path):  # every column but the wall time
        with open(path) as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    for name in ("snr.csv", "snr_layers.csv"):
        assert table(tmp_path / "api" / name) == table(tmp_path / "cli" / name), name
    rows = table(tmp_path / "api" / "snr.csv")
    assert [(r["k"], float(r["encoder_median"])) for r in rows] == [
        (str(r["k"]), pytest.approx(r["encoder_median"], rel=1e-12)) for r in result["rows"]
    ]
    assert "layers" not in result["rows"][0] and len(table(tmp_path / "api" / "snr_layers.csv")) > len(rows)
    text = snr.study_text(result)
    assert "IWAE(k=2)" in text and "slope of log median SNR against log K: iwae, reparam, encoder" in text
    assert text.endswith(f"wrote {result['files'][0]}, {result['files'][1]} and {result['files'][2]}")
