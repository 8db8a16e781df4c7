"""Signal-to-noise ratio of gradient estimators, the study of Rainforth et al. [1].

For a model, a fixed minibatch ``x`` and an objective with its estimator (an
:class:`~iwae.estimators.ObjectiveSpec`), draw R independent gradient estimates g_1 .. g_R (fresh
latent samples each time, same ``x``, same parameters) and report, for every scalar parameter,

    SNR = |E[g]| / std[g],   estimated by |mean_r g_r| / sqrt(sum_r (g_r - mean)^2 / (R - 1)).

Each estimate is the gradient of the *mean over the minibatch* of the negated objective, i.e.
:func:`~iwae.estimators.accumulate_gradients` on ``x`` divided by the batch size B (the sign and
the 1/B do not change the SNR, but they make the reported means per example). The estimates are
summarised separately for the inference network (encoder, phi) and the generative network
(decoder, theta), by the mean and the median SNR over scalar parameters, and per parameter tensor.
Components whose R estimates are all equal (std exactly 0: pixels that are 0 in every image of
the batch give the first encoder layer exactly-zero gradients) have no finite SNR; they are left
out of every summary and counted instead.

Rainforth et al.'s theory: for IWAE with K samples the decoder's SNR grows as sqrt(K) and the
encoder's falls as 1/sqrt(K); for MIWAE(M, K) the encoder's grows as sqrt(M / K), the decoder's
as sqrt(M K). DReG [2] removes the score-function term of the encoder's gradient, and its SNR no
longer falls with K. Run it with

    iwae snr --fresh --k 1,4,16,64 --m 1,4,16 --estimators reparam,dreg --out results/snr

References:
    [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh.
        Tighter Variational Bounds are Not Necessarily Better. ICML 2018.
    [2] G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient Estimators
        for Monte Carlo Objectives. ICLR 2019.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import figures, rundir
from .analysis.curves import PARTS, curve_slopes, fit_slope
from .checkpoint import atomic_write
from .data import Splits, fixed_binarization
from .errors import ConfigError
from .estimators import ESTIMATORS, ObjectiveSpec, accumulate_gradients
from .models import VAE, ModelConfig
from .objectives import OBJECTIVES
from .tables import column_table

__all__ = [
    "SNRResult",
    "RunningMoments",
    "fixed_batch",
    "gradient_samples",
    "gradient_snr",
    "snr_sweep",
    "fit_slope",
    "curve_slopes",
    "plot_snr",
    "Study",
    "plan_study",
    "fresh_model",
    "run_study",
    "row_text",
    "study_text",
]

BATCH_BINARIZATION_SEED = 0  # the fixed batch is binarized once with this seed, whatever the sweep's seed


def fixed_batch(splits: Splits, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` training images, binarized once (:func:`~iwae.data.fixed_binarization`
    with :data:`BATCH_BINARIZATION_SEED`) when the dataset is dynamic, ``(B, D)`` float32."""
    n = splits.train.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch size must lie in 1..{n} (the training images of {splits.name}), got {batch_size}")
    x = splits.train[:batch_size]
    if not splits.dynamic:
        return x.clone()
    return torch.from_numpy(fixed_binarization(x.numpy(), BATCH_BINARIZATION_SEED))


# ----------------------------------------------------------------------------- gradient draws
def _parts(model: torch.nn.Module) -> dict[str, str]:
    """``{parameter name: 'encoder' or 'decoder'}``, by ``model.encoder_parameters()`` / ``decoder_parameters()``."""
    encoder = {id(p) for p in model.encoder_parameters()}
    decoder = {id(p) for p in model.decoder_parameters()}
    parts = {}
    for name, p in model.named_parameters():
        assert (id(p) in encoder) != (id(p) in decoder), f"{name} must be an encoder or a decoder parameter"
        parts[name] = "encoder" if id(p) in encoder else "decoder"
    return parts


def _gradient_draws(
    model: torch.nn.Module, x: torch.Tensor, spec: ObjectiveSpec, repeats: int, generator: torch.Generator | None
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``repeats`` gradient estimates ``{name: (numel,)}`` of the batch-mean negated objective."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    params = dict(model.named_parameters())
    b = x.shape[0]
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, x, spec, generator)  # sums over the batch
        # a parameter the surrogate does not reach has gradient 0, not None
        yield {
            name: (p.grad.detach().reshape(-1) / b if p.grad is not None else torch.zeros(p.numel(), device=p.device))
            for name, p in params.items()
        }
    model.zero_grad(set_to_none=True)


def gradient_samples(
    model: torch.nn.Module, x: torch.Tensor, spec: ObjectiveSpec, repeats: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """``repeats`` independent gradient estimates, stored: ``{parameter name: (R, numel)}``.

    Each row is the gradient of the negated objective averaged over the rows of ``x``
    (``accumulate_gradients(model, x, spec) / B``), drawn with fresh samples from ``generator``.
    Needs R x (number of parameters) floats: use :func:`gradient_snr` for large R.
    Leaves the parameters' ``.grad`` at None.
    """
    draws = list(_gradient_draws(model, x, spec, repeats, generator))
    return {name: torch.stack([d[name] for d in draws]) for name in draws[0]}


class RunningMoments:
    """Welford's running mean and sum of squared deviations (M2) of vectors, in float64.

    Exact for constant inputs (every deviation is 0, so M2 stays exactly 0), which is what lets
    :class:`SNRResult` tell deterministic gradient components apart; a running sum and sum of
    squares would leave rounding residue there.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def std(self) -> torch.Tensor:
        """The sample standard deviation (divisor n - 1)."""
        if self.n < 2:
            raise ValueError(f"a standard deviation needs at least 2 values, got {self.n}")
        return (self.m2 / (self.n - 1)).sqrt()


# ----------------------------------------------------------------------------- result
@dataclass
class SNRResult:
    """Per-component gradient statistics of one objective / estimator, from ``repeats`` estimates.

    ``mean`` and ``std`` map each parameter name to a float64 vector ``(numel,)``; ``part`` maps it
    to ``'encoder'`` or ``'decoder'``. Components with ``std == 0`` are *excluded*: ``zero`` when
    their gradient was always exactly 0, ``constant`` when it was always the same non-zero value.
    """

    spec: ObjectiveSpec
    repeats: int
    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    part: dict[str, str]

    def snr(self, name: str) -> torch.Tensor:
        """|mean| / std of the components of parameter ``name`` with std > 0 (excluded ones dropped)."""
        keep = self.std[name] > 0
        return self.mean[name][keep].abs() / self.std[name][keep]

    def excluded(self, name: str) -> tuple[int, int]:
        """``(zero, constant)``: how many components of ``name`` have std 0 with mean 0 / mean != 0."""
        fixed = self.std[name] == 0
        zero = int((fixed & (self.mean[name] == 0)).sum())
        return zero, int(fixed.sum()) - zero

    def _summary(self, names: Sequence[str]) -> dict[str, float | int]:
        values = torch.cat([self.snr(n) for n in names]) if names else torch.zeros(0, dtype=torch.float64)
        zero = sum(self.excluded(n)[0] for n in names)
        constant = sum(self.excluded(n)[1] for n in names)
        # nothing left to summarise: say so with n = 0 (the mean and median are undefined)
        return {
            "mean": values.mean().item() if len(values) else math.nan,
            "median": values.median().item() if len(values) else math.nan,
            "n": len(values),
            "zero": zero,
            "constant": constant,
        }

    def summary(self, part: str) -> dict[str, float | int]:
        """Mean and median SNR over all non-excluded scalar parameters of ``part`` ('encoder' or
        'decoder'), ``n`` of them, and the counts of excluded ``zero`` and ``constant`` components."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
        return self._summary([n for n, p in self.part.items() if p == part])

    def layers(self) -> list[dict]:
        """One summary per parameter tensor: ``name``, ``part``, ``mean``, ``median``, ``n``, ``zero``, ``constant``."""
        return [{"name": n, "part": p, **self._summary([n])} for n, p in self.part.items()]


def gradient_snr(
    model: torch.nn.Module, x: torch.Tensor, spec: ObjectiveSpec, repeats: int, generator: torch.Generator | None = None
) -> SNRResult:
    """Per-parameter SNR of ``spec``'s gradient estimator at ``model``'s parameters on the batch ``x``.

    Draws the same estimates as :func:`gradient_samples` (the batch-mean gradient, R times) but
    keeps only a running mean and M2 in float64 (:class:`RunningMoments`), so memory does not grow
    with R. Leaves the parameters' ``.grad`` at None.

    Args:
        model: a model with ``encoder_parameters()`` and ``decoder_parameters()``.
        x: the fixed batch, ``(B, D)``, already binarized.
        spec: the objective, its sample layout and the encoder's estimator.
        repeats: R >= 2, the number of independent estimates.
        generator: the source of the latent samples.

    Returns:
        An :class:`SNRResult`.
    """
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a standard deviation, got {repeats}")
    moments: dict[str, RunningMoments] = {}
    for draw in _gradient_draws(model, x, spec, repeats, generator):
        for name, g in draw.items():
            moments.setdefault(name, RunningMoments()).update(g)
    return SNRResult(
        spec, repeats, {n: m.mean for n, m in moments.items()}, {n: m.std() for n, m in moments.items()}, _parts(model)
    )


# ----------------------------------------------------------------------------- sweep
def snr_sweep(
    model: torch.nn.Module,
    x: torch.Tensor,
    specs: Sequence[ObjectiveSpec],
    repeats: int,
    seed: int = 0,
    per_layer: bool = False,
    progress=None,
) -> list[dict]:
    """:func:`gradient_snr` for each spec; one row per spec.

    Every spec draws from its own generator seeded with ``seed``, so a row does not depend on
    which other specs were run. A row holds ``objective``, ``m``, ``k`` (the total samples per
    example, as in :class:`ObjectiveSpec`), ``k_per_group`` (K of MIWAE(M, K); ``k`` for
    one-group objectives), ``estimator``, ``repeats``, ``{encoder,decoder}_{mean,median}`` (SNR
    over scalar parameters), ``{encoder,decoder}_excluded`` (components with std 0), ``ess``
    (the weights' mean effective sample size per group, out of K) and ``seconds``; with ``per_layer``,
    also ``layers``, the list of :meth:`SNRResult.layers`.
    ``progress``, if given, is called with each finished row.
    """
    rows = []
    for spec in specs:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
        t0 = time.perf_counter()
        result = gradient_snr(model, x, spec, repeats, generator)
        row = {
            "objective": spec.name,
            "m": spec.m,
            "k": spec.k,
            "k_per_group": spec.k // spec.m,
            "estimator": spec.estimator,
            "repeats": repeats,
        }
        for part in PARTS:
            s = result.summary(part)
            row.update(
                {
                    f"{part}_mean": s["mean"],
                    f"{part}_median": s["median"],
                    f"{part}_excluded": s["zero"] + s["constant"],
                }
            )
        row["ess"] = _effective_sample_size(model, x, spec, generator)
        row["seconds"] = time.perf_counter() - t0
        if per_layer:
            row["layers"] = result.layers()
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


@torch.no_grad()
def _effective_sample_size(
    model: torch.nn.Module, x: torch.Tensor, spec: ObjectiveSpec, generator: torch.Generator | None, draws: int = 4
) -> float:
    """(sum w)^2 / sum w^2 within each group of K, averaged over groups, the batch and ``draws``
    draws: near 1 when one sample dominates (the regime where IWAE's gradient behaves as a
    one-sample estimate), near K when the weights are even (where the SNR theory applies)."""
    total = 0.0
    for _ in range(draws):
        log_w = model.log_weights(x, spec.k, generator)  # (k, B)
        log_w = log_w.reshape(spec.m, spec.k // spec.m, -1)  # (M, K, B)
        ess = torch.exp(2 * log_w.logsumexp(1) - (2 * log_w).logsumexp(1))  # (M, B)
        total += ess.mean().item()
    return total / draws


# ----------------------------------------------------------------------------- a study: plan, run, files
GROUPED = ("miwae", "piwae")  # the objectives whose points vary M at a fixed K per group
SNR_FILES = ("snr.csv", "snr_layers.csv", "snr.png")


@dataclass(frozen=True)
class Study:
    """The points of an SNR study and how each is measured: ``repeats`` gradient estimates R on the
    first ``batch_size`` training images, samples seeded with ``seed``."""

    specs: tuple[ObjectiveSpec, ...]
    repeats: int = 200
    batch_size: int = 20
    seed: int = 0


def plan_study(
    objectives: Sequence[str] = ("iwae", "miwae"),
    estimators: Sequence[str] = ("reparam", "dreg"),
    ks: Sequence[int] = (1, 4, 16, 64),
    ms: Sequence[int] | None = None,
    group_k: int = 4,
    repeats: int = 200,
    batch_size: int = 20,
    seed: int = 0,
) -> Study:
    """The study of every objective with every estimator: one point per K in ``ks`` for the one-group
    objectives (iwae, vae, ciwae), one per M in ``ms`` (default 1, 4, 16) at ``group_k`` samples per
    group, K = M * group_k in total, for miwae and piwae. Checks everything before any data is read.

    Raises:
        ConfigError: an unknown name, ``ms`` given without a grouped objective, ``group_k`` < 1,
            ``repeats`` < 2, or a pair :class:`~iwae.estimators.ObjectiveSpec` refuses (rws is
            defined for iwae only).
    """
    if repeats < 2:
        raise ConfigError(f"repeats must be >= 2 to estimate a standard deviation, got {repeats}", ["repeats"])
    if group_k < 1:
        raise ConfigError(f"group_k must be >= 1, got {group_k}", ["group_k"])
    chosen = {}
    for setting, names, known in (("estimators", estimators, ESTIMATORS), ("objectives", objectives, OBJECTIVES)):
        unknown = [v for v in names if v not in known]
        if unknown or not names:
            raise ConfigError(
                f"{setting}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; choose from {', '.join(known)}",
                [setting],
            )
        chosen[setting] = list(dict.fromkeys(names))
    grouped = [o for o in chosen["objectives"] if o in GROUPED]
    if not grouped and ms is not None:
        raise ConfigError(
            "ms applies to miwae and piwae only; add one of them to objectives or drop ms", ["ms", "objectives"]
        )
    specs = []  # ObjectiveSpec checks each pair, e.g. rws is defined for iwae only
    for objective in chosen["objectives"]:
        for estimator in chosen["estimators"]:
            if objective in grouped:
                specs += [ObjectiveSpec(objective, m * group_k, m, estimator=estimator) for m in ms or (1, 4, 16)]
            else:
                specs += [ObjectiveSpec(objective, k, estimator=estimator) for k in ks]
    return Study(tuple(specs), repeats, batch_size, seed)


def fresh_model(splits: Splits, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised Burda 1-layer model for ``splits`` (torch seeded with ``seed``), its output
    bias set from the training images' mean as training does."""
    torch.manual_seed(seed)
    model = VAE(ModelConfig.burda(1, splits.dim))
    model.init_output_bias(splits.train.mean(0))
    return model


def _write_csv(path: Path, records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


@rundir.locks("iwae snr", lambda a: rundir.run_folder(a["out"]))  # a run's folder, if written into one
def run_study(
    study: Study, model: torch.nn.Module, splits: Splits, out: str | Path, *, source: str = "", progress=None
) -> dict:
    """Runs ``study`` (:func:`snr_sweep` on :func:`fixed_batch`) and writes, in the folder ``out``:
    ``snr.csv`` (one row per point), ``snr_layers.csv`` (one row per point and parameter tensor) and
    ``snr.png`` (:func:`plot_snr`, titled with ``source``, what was measured).

    Returns:
        ``{"rows": the rows without their layers, "slopes": curve_slopes(rows), "figure": path,
        "files": the three paths}``; ``progress``, if given, is called with each finished row.
    """
    x = fixed_batch(splits, study.batch_size)
    rows = snr_sweep(model, x, study.specs, study.repeats, seed=study.seed, per_layer=True, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = [{k: v for k, v in r.items() if k != "layers"} for r in rows]
    _write_csv(out / SNR_FILES[0], flat)
    _write_csv(
        out / SNR_FILES[1],
        [
            {"objective": r["objective"], "m": r["m"], "k": r["k"], "estimator": r["estimator"], **layer}
            for r in rows
            for layer in r["layers"]
        ],
    )
    figure = plot_snr(rows, out / SNR_FILES[2], title=f"Gradient SNR, {source}, R = {study.repeats}")
    return {
        "rows": flat,
        "slopes": curve_slopes(rows),
        "figure": str(figure),
        "files": [str(out / name) for name in SNR_FILES],
    }


def row_text(row: dict) -> str:
    """One line on a finished point of a study: its median SNRs and time."""
    return (
        f"  {row['objective']} m={row['m']} k={row['k']} {row['estimator']}: encoder "
        f"{row['encoder_median']:.3g}, decoder {row['decoder_median']:.3g} (median SNR), {row['seconds']:.1f} s"
    )


def study_text(result: dict) -> str:
    """The lines ``iwae snr`` prints for a result of :func:`run_study`: a table of the points, the
    fitted slopes and the files written."""
    header = ("objective", "estimator", "enc mean", "enc median", "dec mean", "dec median", "ESS", "excl enc")
    table = [
        (
            ObjectiveSpec(r["objective"], r["k"], r["m"]).label,
            r["estimator"],
            *(f"{r[c]:.3g}" for c in ("encoder_mean", "encoder_median", "decoder_mean", "decoder_median")),
            f"{r['ess']:.2f}/{r['k_per_group']}",
            str(r["encoder_excluded"]),
        )
        for r in result["rows"]
    ]
    lines = [
        column_table(header, table),
        "SNR = |mean| / std per scalar parameter over R estimates; excluded: components with std 0",
    ]
    for s in result["slopes"]:
        at = f" at K = {s['k_per_group']}" if s["against"] == "M" else ""
        lines.append(
            f"slope of log median SNR against log {s['against']}: {s['objective']}{at}, "
            f"{s['estimator']}, {s['part']}: {s['slope']:+.2f}"
        )
    csv_file, layers_file, figure = result["files"]
    lines.append(f"wrote {csv_file}, {layers_file} and {figure}")
    return "\n".join(lines)


def plot_snr(rows: Sequence[dict], path: str | Path, *, title: str | None = None, dpi: int = 100) -> Path:
    """The SNR figure of :func:`snr_sweep` rows: drawn by :func:`iwae.figures.plot_snr` (all matplotlib
    lives in :mod:`iwae.figures`); kept here for callers of ``iwae.snr``."""
    return figures.plot_snr(rows, path, title=title, dpi=dpi)
