"""The report's figures: each kind an experiment asks for (``figures:`` in its file) drawn from its
finished runs by :mod:`iwae.figures`; a figure that cannot be drawn becomes a one-line note."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import torch

from ... import rundir
from ...analysis.latent import ACTIVE_UNITS_IMAGES, ACTIVE_UNITS_SEED
from ...data import fixed_binarization, load_dataset, resolve_binarize
from ...estimators import ObjectiveSpec
from ...figures import plot_curves, plot_grid, plot_latent, plot_reconstructions, plot_samples, plot_snr
from ...rundir import read_metrics
from ...snr import fixed_batch, snr_sweep
from ...train import load
from .. import published
from ..spec import FIGURES
from .grid import _grid_rows
from .tables import _cell
from .tables import runs_phrase as _runs

__all__ = ["FIGURE_DIR", "DRAW"]

FIGURE_DIR = "report_figures"
MAX_PANELS = 6  # the samples figure: at most this many runs side by side
CURVES_PER_FIGURE = 6  # runs per training-curves figure (each run adds two legend entries)
LATENT_RUNS, LATENT_POINTS = 6, 1000  # runs and test images of the latent figure (its panels wrap after 3)
# the report's SNR sweep: small enough for ~10-30 s on a CPU; `iwae snr` is the full study
SNR_KS, SNR_MS, SNR_GROUP_K = (1, 4, 16, 64), (1, 4, 16), 4
SNR_ESTIMATORS = ("reparam", "stl", "dreg")
SNR_REPEATS, SNR_BATCH = 30, 20


def _done(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["status"] == "done" and (r["dir"] / rundir.MODEL).is_file()]


def _representatives(runs: list[dict], cap: int) -> list[dict]:
    """One finished run per label combination apart from k (the one with the largest k), at most ``cap``."""

    def k_of(r: dict) -> int:
        return int(r["labels"].get("k") or r["config"].get("k") or 0)

    chosen: dict[tuple, dict] = {}
    for r in _done(runs):
        labels = r["labels"] or {"name": r.get("name")}
        key = tuple((k, str(v)) for k, v in labels.items() if k != "k")
        if key not in chosen or k_of(r) > k_of(chosen[key]):
            chosen[key] = r
    if not chosen:
        raise ValueError("no finished run with a model.safetensors")
    return list(chosen.values())[:cap]


def _left_out(exp: dict, shown: list[dict], dataset: str | None = None, cap: int | None = None) -> str:
    """The caption's sentence on the finished runs a figure leaves out, and why; "" when none is."""
    names = {r.get("name") for r in shown}
    chosen = {r.get("name") for r in _representatives(exp["runs"], len(exp["runs"]))} if _done(exp["runs"]) else set()
    why: dict[str, list[str]] = {}
    for r in _done(exp["runs"]):
        if r.get("name") in names:
            continue
        if r.get("name") not in chosen:
            reason = "one run is drawn per combination of labels apart from k: the largest k, the first seed"
        elif dataset is not None and r["config"].get("dataset", "mnist") != dataset:
            reason = f"another data set than {dataset}"
        else:
            reason = f"the figure holds at most {_runs(cap)}"
        why.setdefault(reason, []).append(f"`{r.get('name')}`")
    if not why:
        return ""
    return " Left out: " + "; ".join(f"{', '.join(runs)} ({reason})" for reason, runs in why.items()) + "."


def _splits(run: dict, data_dir, cache: dict):
    """The run's dataset, loaded once per report and never downloaded (a report must not hit the network),
    from ``data_dir``, else the run's data_dir: its spec's, or its config.yaml's (where the data was at
    training time; `iwae reproduce` passes it per invocation, so the spec may not hold it)."""
    dataset = run["config"].get("dataset", "mnist")
    folder = data_dir or run["config"].get("data_dir") or rundir.read_config_values(run["dir"]).get("data_dir")
    mode = resolve_binarize(run["config"].get("binarize", "auto"), run["config"].get("likelihood", "bernoulli"))
    deq = bool(run["config"].get("dequantize", False))
    if (dataset, folder, mode, deq) not in cache:
        cache[(dataset, folder, mode, deq)] = load_dataset(
            dataset, folder, download=False, binarize=mode, dequantize=deq
        )
    return cache[(dataset, folder, mode, deq)]


Drawn = list[tuple[Path, str]]  # (figure file, caption) per figure a kind draws


def _fig_curves(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_curves of every run with a metrics.csv, finished or not, a few runs per figure."""
    # one curve per run folder (a folder of seeds lists each member once per evaluation)
    runs = list({str(r["dir"]): r for r in exp["runs"] if rundir.has_metrics(r["dir"])}.values())
    if not runs:
        raise ValueError("no run has a metrics.csv yet")
    out = []
    for i in range(0, len(runs), CURVES_PER_FIGURE):
        chunk = runs[i : i + CURVES_PER_FIGURE]
        part = f"-{i // CURVES_PER_FIGURE + 1}" if len(runs) > CURVES_PER_FIGURE else ""
        path = plot_curves({r["name"]: read_metrics(r["dir"]) for r in chunk}, fig_dir / f"curves{part}.png")
        out.append(
            (
                path,
                f"Training curves of runs {i + 1}-{i + len(chunk)} of the {len(runs)} with a metrics.csv: "
                f"training bound (solid) and validation L_k (dashed) per epoch.",
            )
        )
    return out


def _fig_samples(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_samples of a few finished runs (:func:`_representatives`)."""
    runs = _representatives(exp["runs"], MAX_PANELS)
    path = plot_samples({r["name"]: load(r["dir"]) for r in runs}, fig_dir / "samples.png")
    return [
        (
            path,
            f"64 samples from each of {_runs(len(runs), 'finished ')} (one per label combination, the largest k "
            f"of each, at most {MAX_PANELS}): z ~ p(z), the means of p(x | z)." + _left_out(exp, runs, cap=MAX_PANELS),
        )
    ]


RECONSTRUCTIONS = 10  # test images per reconstruction panel


def _fig_reconstructions(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_reconstructions of a few finished runs of one dataset on its first test images."""
    runs = _representatives(exp["runs"], MAX_PANELS)
    dataset = runs[0]["config"].get("dataset", "mnist")
    runs = [r for r in runs if r["config"].get("dataset", "mnist") == dataset]  # one test set
    splits = _splits(runs[0], data_dir, cache)
    path = plot_reconstructions(
        {r["name"]: load(r["dir"]) for r in runs},
        splits.test[:RECONSTRUCTIONS],
        fig_dir / "reconstructions.png",
        n=RECONSTRUCTIONS,
    )
    return [
        (
            path,
            f"The first {RECONSTRUCTIONS} {splits.name} test images (top) and the means of "
            f"p(x | z = E_q[z | x]) (bottom), for {_runs(len(runs))}." + _left_out(exp, runs, dataset, MAX_PANELS),
        )
    ]


def _fig_latent(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_latent of a few finished runs of one dataset on its first test images, by label."""
    runs = _representatives(exp["runs"], MAX_PANELS)
    dataset = runs[0]["config"].get("dataset", "mnist")
    runs = [r for r in runs if r["config"].get("dataset", "mnist") == dataset][:LATENT_RUNS]  # one test set
    splits = _splits(runs[0], data_dir, cache)
    x_units = splits.train[:ACTIVE_UNITS_IMAGES]
    if splits.dynamic:  # grey levels: binarize once, as evaluation does
        x_units = torch.from_numpy(fixed_binarization(x_units.numpy(), ACTIVE_UNITS_SEED))
    labels = None if splits.test_labels is None else splits.test_labels[:LATENT_POINTS]
    path = plot_latent(
        {r["name"]: load(r["dir"]) for r in runs},
        splits.test[:LATENT_POINTS],
        fig_dir / "latent.png",
        labels=labels,
        x_units=x_units,
    )
    return [
        (
            path,
            f"Posterior means E_q[z | x] of the first {min(LATENT_POINTS, len(splits.test))} {splits.name} "
            f"test images in the two most active latent units, "
            f"{'coloured by label' if labels is not None else 'unlabelled'}; {_runs(len(runs))}."
            + _left_out(exp, runs, dataset, LATENT_RUNS),
        )
    ]


def _fig_grid(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """figures.plot_grid of the finished runs' grid points (Rainforth et al.'s Fig. 6)."""
    rows = _grid_rows(exp)
    path = plot_grid(rows, fig_dir / "grid.png", published=published.rainforth2018())
    bound = f"IWAE-{rows[0]['iwae_k']}"
    return [
        (
            path,
            f"{bound}, log p-hat and -KL(Q||P) = {bound} - log p-hat against (M, K) for MIWAE and PIWAE "
            f"(top) and against beta for CIWAE (bottom), M * K = {rows[0]['total']}: {len(rows)} grid points "
            f"with a finished run (identical objectives share one run, e.g. MIWAE(1,K) = PIWAE(1,K) = "
            f"CIWAE(0) = IWAE). Stars: Rainforth et al. (2018), full protocol.",
        )
    ]


def _fig_snr(exp: dict, fig_dir: Path, data_dir, cache: dict) -> Drawn:
    """A small snr.snr_sweep (IWAE against K, MIWAE against M; reparam, STL, DReG) of one trained run."""

    def preference(r):  # Rainforth et al.'s model: IWAE, k = 50, reparameterised gradients
        c = r["config"]
        return (
            c.get("objective") == "iwae",
            c.get("estimator", "reparam") == "reparam",
            c.get("k") == 50,
            c.get("k", 0),
        )

    done = _done(exp["runs"])
    if not done:
        raise ValueError("no finished run with a model.safetensors")
    run = max(done, key=preference)  # the first of the best
    splits = _splits(run, data_dir, cache)
    x = fixed_batch(splits, min(SNR_BATCH, len(splits.train)))
    specs = [ObjectiveSpec("iwae", k, estimator=e) for e in SNR_ESTIMATORS for k in SNR_KS]
    specs += [ObjectiveSpec("miwae", m * SNR_GROUP_K, m, estimator=e) for e in SNR_ESTIMATORS for m in SNR_MS]
    t0 = time.perf_counter()
    rows = snr_sweep(load(run["dir"]), x, specs, SNR_REPEATS, seed=0)
    seconds = time.perf_counter() - t0
    path = plot_snr(
        rows,
        fig_dir / "snr.png",
        title=f"Gradient SNR of run {run['name']} (R = {SNR_REPEATS} estimates per point, batch {len(x)})",
    )
    return [
        (
            path,
            f"Gradient SNR of the trained run `{run['name']}`: median |mean| / std over the encoder's and "
            f"the decoder's parameters, R = {SNR_REPEATS} gradient estimates per point on one fixed batch of "
            f"the first {len(x)} training images (binarized once); IWAE at K = "
            f"{', '.join(map(str, SNR_KS))}, MIWAE(M, {SNR_GROUP_K}) at M = {', '.join(map(str, SNR_MS))}; "
            f"estimators {', '.join(SNR_ESTIMATORS)}; slopes are log-log fits. A small sweep "
            f"({seconds:.0f} s): `iwae snr RUN_DIR --repeats 200` is the full study.",
        )
    ]


DRAW = {kind: globals()[f"_fig_{kind}"] for kind in FIGURES}  # the kinds an experiment may ask for


def _figures(exp: dict, out_dir: Path, data_dir, cache: dict, counter: list[int]) -> list[str]:
    """Draws the experiment's figures under ``out_dir/report_figures`` and returns their Markdown."""
    lines = ["### Figures", ""]
    fig_dir = out_dir / FIGURE_DIR / exp["dir"].resolve().name  # unique among the experiments of a parent
    for kind in exp.get("figures") or []:
        if kind not in FIGURES:
            lines += [f"*Figure `{_cell(kind)}` not drawn: unknown kind (known: {', '.join(FIGURES)}).*", ""]
            continue
        try:
            drawn = DRAW[kind](exp, fig_dir, data_dir, cache)
        except Exception as e:  # a figure is an extra: say why it is missing rather than lose the report
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            lines += [f"*Figure `{kind}` not drawn: {_cell(reason)}.*", ""]
            continue
        for path, caption in drawn:
            counter[0] += 1
            lines += [
                f"![{kind}]({quote(Path(path).relative_to(out_dir).as_posix())})",
                "",
                f"**Figure {counter[0]}.** {caption}",
                "",
            ]
    return lines if len(lines) > 2 else []
