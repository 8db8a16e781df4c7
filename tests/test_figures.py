"""Tests for the figures (iwae.figures) and the ``iwae sample`` / ``iwae plot`` commands: pixel sizes,
file formats, what the latent and q_EW figures draw, one-line errors,
and that no module outside iwae.figures imports matplotlib. (The numbers the figures draw are tested
in test_figure_inputs.py, q_EW's in test_qew.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke

import iwae
from iwae import analysis, figures, qew
from iwae.models import VAE, ModelConfig
from iwae.train import TrainConfig, train


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels of a non-blank PNG."""
    assert path.is_file() and path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0, f"{path} is blank"
    return img.shape[:2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data_dir) -> dict[str, Path]:
    """Tiny 1-epoch runs: VAE and IWAE with a 2-D latent, a 2-layer VampPrior run."""
    root = tmp_path_factory.mktemp("runs")
    common = dict(epochs=1, train_subset=60, data_dir=str(shared_data_dir), valid_k=2, schedule="constant")
    settings = {
        "vae2d": dict(objective="vae", k=1, latent_dims=[2], hidden_dims=[[20]]),
        "iwae2d": dict(objective="iwae", k=5, latent_dims=[2], hidden_dims=[[20]]),
        "vamp2l": dict(
            objective="iwae", k=2, layers=2, latent_dims=[6, 4], hidden_dims=[[20], [10]], prior="vamp", components=9
        ),
    }
    return {
        name: train(TrainConfig(**common, **s, out=str(root / name)), progress=False) for name, s in settings.items()
    }


# ----------------------------------------------------------------------------- figure functions
@pytest.mark.parametrize("ext, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_vector_formats_by_extension(tmp_path, ext, magic):
    path = figures.plot_toy(tmp_path / f"toy.{ext}")
    assert path.read_bytes().startswith(magic)
    assert figures.plot_toy(tmp_path / "toy").suffix == ".png"
    with pytest.raises(ValueError, match="unknown figure format"):
        figures.plot_toy(tmp_path / "toy.bmp")


def test_pseudo_inputs_need_a_vamp_prior(tmp_path):
    with pytest.raises(ValueError, match="no pseudo-inputs"):
        figures.plot_pseudo_inputs(VAE(ModelConfig(latent_dims=(2,), hidden_dims=((10,),))), tmp_path / "u.png")


@pytest.mark.parametrize("layers", [1, 2])
def test_latent_figure_plots_the_means_it_labels(tmp_path, monkeypatch, layers):
    """plot_latent's scatter holds exactly analysis.posterior_means' points (the 2-D latent's two units);
    with 2 layers its title says the expectation is a Monte Carlo average over draws of z_1 and
    its axes name units of z_2; with 1 layer the title claims no such average."""
    from iwae.figures import latent

    drawn = []
    real_save = latent.save
    monkeypatch.setattr(latent, "save", lambda fig, path: (drawn.append(fig), real_save(fig, path))[1])
    torch.manual_seed(0)
    sizes = ((3,), ((16,),)) if layers == 1 else ((3, 2), ((16,), (16,)))
    model = VAE(ModelConfig(20, *sizes))
    x = torch.bernoulli(torch.full((30, 20), 0.4), generator=torch.Generator().manual_seed(1))
    figures.plot_latent(model, x, tmp_path / "latent.png")
    assert (tmp_path / "latent.png").is_file()
    ax = drawn[0].axes[0]
    points = ax.collections[0].get_offsets()
    means = analysis.posterior_means(model, x)
    dims = [0, 1] if means.shape[1] == 2 else None
    if dims is None:  # three units: the two most active ones, sorted
        dims = sorted(torch.argsort(means.var(0, unbiased=False), descending=True)[:2].tolist())
    np.testing.assert_allclose(np.asarray(points), means[:, dims].numpy(), rtol=0, atol=1e-6)
    title = ax.get_title()
    if layers == 2:
        assert f"averaged over {analysis.LATENT_SAMPLES} draws of z_1" in title, title
        assert ax.get_xlabel().startswith("E[z_2[") and ax.get_ylabel().startswith("E[z_2["), ax.get_xlabel()
    else:
        assert "averaged" not in title, title
        assert ax.get_xlabel().startswith("E[z_"), ax.get_xlabel()


def _qew_model() -> VAE:
    torch.manual_seed(1)
    return VAE(ModelConfig(input_dim=8, latent_dims=(2,), hidden_dims=((16,),))).eval()


def test_qew_figure_is_a_png_of_the_promised_size(tmp_path):
    model = _qew_model()
    x = torch.bernoulli(torch.full((2, 8), 0.5), generator=torch.Generator().manual_seed(1))
    path = tmp_path / "sub" / "qew.png"
    rows = figures.qew_figure(
        model,
        x,
        (1, 5),
        path,
        samples=2000,
        generator=torch.Generator().manual_seed(2),
        grid_size=31,
        panel_inches=2.0,
        dpi=50,
    )
    assert len(rows) == 4
    image = mpimg.imread(path)
    assert image.shape[:2] == (2 * 2 * 50, 5 * 2 * 50)  # rows x (image, p, q, 2 k) panels of 2 in at 50 dpi
    assert image[..., :3].std() > 0.05  # not blank
    svg = tmp_path / "qew.svg"
    figures.qew_figure(
        model,
        x[:1],
        (1,),
        svg,
        samples=200,
        generator=torch.Generator().manual_seed(2),
        grid_size=11,
        image_shape=(2, 4),
    )
    assert svg.read_text().lstrip().startswith("<?xml")


def test_plot_qew_draws_the_panels_it_is_given(tmp_path, monkeypatch):
    """The figure of precomputed panels is qew_figure's figure: same rows, same pixels; each heatmap
    is its panel's mass (p, q, then q_EW per k, in the order of ks), and a panel whose q_EW is
    altered draws differently."""
    from iwae.figures import posterior

    model = _qew_model()
    x = torch.bernoulli(torch.full((1, 8), 0.5), generator=torch.Generator().manual_seed(1))
    args = dict(ks=(5, 1), samples=500, grid_size=15)
    rows = figures.qew_figure(model, x, path=tmp_path / "a.png", generator=torch.Generator().manual_seed(0), **args)
    panels = qew.qew_panels(model, x, generator=torch.Generator().manual_seed(0), **args)
    assert [r for p in panels for r in p.rows] == rows
    drawn = []
    real_pyplot = posterior.pyplot
    plt = real_pyplot()
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))
    figures.plot_qew(panels, x, tmp_path / "b.png")
    monkeypatch.setattr(plt, "close", real_close)
    np.testing.assert_array_equal(mpimg.imread(tmp_path / "a.png"), mpimg.imread(tmp_path / "b.png"))
    heatmaps = [ax.images[0].get_array() for ax in drawn[0].axes[1:5]]
    want = [panels[0].p, panels[0].q, panels[0].qew[5], panels[0].qew[1]]
    for got, mass in zip(heatmaps, want):
        np.testing.assert_array_equal(np.asarray(got), mass.cpu().numpy().T)
    real_close(drawn[0])
    panels[0].qew[5] = panels[0].qew[5].flip(0)
    figures.plot_qew(panels, x, tmp_path / "c.png")
    assert not np.array_equal(mpimg.imread(tmp_path / "a.png"), mpimg.imread(tmp_path / "c.png"))


def test_matplotlib_is_imported_only_by_the_figures_package():
    """All matplotlib code lives in src/iwae/figures: no other module of the package imports it."""
    package = Path(iwae.__file__).parent
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if "figures" not in p.relative_to(package).parts
        and re.search(r"^\s*(import|from)\s+matplotlib", p.read_text(), re.M)
    ]
    assert offenders == []
    assert re.search(r"^\s*import matplotlib", (package / "figures" / "_base.py").read_text(), re.M)


def test_import_warns_of_nothing_and_snr_and_grid_draw_through_figures(monkeypatch):
    """`import iwae` itself warns of nothing; snr.plot_snr and grid.plot_grid draw through iwae.figures."""
    import subprocess
    import sys

    quiet = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", "import iwae, iwae.figures"],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0, quiet.stderr
    from iwae import grid, snr

    calls = []
    monkeypatch.setattr(figures, "plot_snr", lambda rows, path, **kw: calls.append(("snr", rows, path, kw)) or path)
    monkeypatch.setattr(figures, "plot_grid", lambda rows, path, **kw: calls.append(("grid", rows, path)) or path)
    assert snr.plot_snr([{"r": 1}], "s.png", title="T") == "s.png"
    assert grid.plot_grid([{"r": 2}], "g.png") == "g.png"
    assert calls == [("snr", [{"r": 1}], "s.png", {"title": "T", "dpi": 100}), ("grid", [{"r": 2}], "g.png")]


# ----------------------------------------------------------------------------- commands
def test_sample_command(runs, tmp_path):
    result = invoke("sample", runs["iwae2d"], "--n", 16, "--out", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "s.png") == (550, 500)
    result = invoke("sample", runs["vamp2l"], "--binary")  # 2 layers, top-down; a second row holds z_2 per row
    assert result.exit_code == 0, result.output
    assert image_size(runs["vamp2l"] / "samples.png") == (1100, 500)
    result = invoke("sample", runs["vamp2l"], "--pseudo-inputs", "--out", tmp_path / "u.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "u.pdf").read_bytes().startswith(b"%PDF")


def test_plot_all_two_runs_side_by_side(runs, tmp_path):
    result = invoke("plot", runs["vae2d"], runs["iwae2d"], "--what", "all", "--points", 300, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    sizes = {
        name: image_size(tmp_path / f"{name}.png")
        for name in ("samples", "reconstructions", "latent", "activity", "curves")
    }
    assert sizes == {
        "samples": (550, 1000),
        "reconstructions": (300, 1600),
        "latent": (500, 1100),
        "activity": (400, 500),
        "curves": (450, 700),
    }


def test_plot_one_run_latent_and_activity_of_two_layers(runs, tmp_path):
    result = invoke("plot", runs["vamp2l"], "--what", "latent", "--points", 200, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "latent.png") == (1000, 600)  # a row per stochastic layer
    result = invoke("plot", runs["vamp2l"], "--what", "activity", "--format", "svg", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "activity.svg").read_bytes().startswith(b"<?xml")


def test_plot_toy_command(tmp_path):
    result = invoke("plot", "toy", "--out", tmp_path / "toy.png")
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "toy.png") == (450, 700)


def test_command_errors_are_one_line(runs, tmp_path):
    assert_one_line_error(invoke("sample", tmp_path / "missing"), "not found")
    assert_one_line_error(invoke("plot", tmp_path / "missing", "--out", tmp_path), "not found")
    assert_one_line_error(
        invoke("sample", runs["vae2d"], "--pseudo-inputs", "--out", tmp_path / "u.png"), "no pseudo-inputs"
    )
    assert_one_line_error(invoke("plot", runs["vae2d"], "--what", "everything", "--out", tmp_path), "--what")
    assert_one_line_error(invoke("plot", "toy", runs["vae2d"], "--out", tmp_path / "t.png"), "toy")


# ----------------------------------------------------------------------------- several runs: wrapped panels
def _models(n: int) -> dict:
    torch.manual_seed(0)
    return {
        f"a long run name number {i} with a VampPrior and k = 50": VAE(ModelConfig(16, (3,), ((8,),))) for i in range(n)
    }


def test_panels_of_many_runs_wrap_after_three(tmp_path):
    models = _models(5)
    x = (torch.rand(40, 16) > 0.5).float()
    assert image_size(figures.plot_samples(models, tmp_path / "s.png", n=4)) == (1100, 1500)
    assert image_size(figures.plot_samples(dict(list(models.items())[:3]), tmp_path / "s3.png", n=4)) == (550, 1500)
    assert image_size(figures.plot_latent(models, x, tmp_path / "l.png")) == (1000, 1600)
    assert image_size(figures.plot_reconstructions(models, x, tmp_path / "r.png", n=4)) == (900, 1600)


def test_panel_titles_are_wrapped_and_do_not_overlap(tmp_path, monkeypatch):
    """The titles of panels side by side (long run names, three lines each) stay within their panels'
    columns and inside the figure: the latent figure's text extents, measured before it is saved."""
    from iwae.figures import _base, latent

    assert all(len(line) <= _base.TITLE_CHARS for line in _base.wrap_title("word " * 40 + "\nshort").split("\n"))
    boxes = []

    def measure(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            if ax.get_title():
                boxes.append(ax.title.get_window_extent(renderer))
        return _base.save(fig, path)

    monkeypatch.setattr(latent, "save", measure)
    x = (torch.rand(40, 16) > 0.5).float()
    figures.plot_latent(_models(3), x, tmp_path / "l.png")
    assert len(boxes) == 3
    width, height = 1600, 500
    for i, a in enumerate(boxes):
        assert a.x0 >= 0 and a.x1 <= width and a.y1 <= height, a  # inside the figure
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_training_curves_have_whole_epochs_on_the_axis(tmp_path, monkeypatch):
    from iwae.figures import _base
    from iwae.figures import curves as curves_module

    ticks = []

    def measure(fig, path):
        fig.canvas.draw()
        ticks.extend(fig.axes[0].get_xticks())
        return _base.save(fig, path)

    monkeypatch.setattr(curves_module, "save", measure)
    rows = [{"epoch": e, "train_bound": -100.0 + e, "valid_L5": -101.0 + e} for e in (1, 2, 3)]
    figures.plot_curves({"run": rows}, tmp_path / "c.png")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
