"""Evaluation: test log-likelihood by L_5000 in chunks, and active units.

    from iwae.evaluate import evaluate
    report = evaluate("runs/iwae-k5", k=5000)      # {'nll': ..., 'nll_stderr': ..., 'active_units': ...}

Test NLL follows Burda et al. (2016): -(1/N) sum_n L_k(x_n) with k = 5000, on the test set
binarized once with a fixed seed (:func:`iwae.data.load_dataset`). L_k is a lower bound on
log p(x), so the NLL it gives is an upper bound (a conservative estimate). The standard error is
the standard deviation of -L_k(x_n) over test images divided by sqrt(N).

The first encoder layer runs once per image; samples are drawn in chunks so that no decoder call
exceeds ``memory_budget`` bytes, whatever k and the number of images. The same path serves every k.

``evaluate(run_dir)`` measures the weights of the run's last completed epoch and writes
``RUN_DIR/eval_k{K}[_n{N}]_seed{S}.json`` (the numbers, and which model, images, seed and device
they are of) with the per-image bounds L_k(x_n) in the ``.npy`` beside it, so that two evaluations
on the same images can be compared with a paired standard error (:func:`paired_difference`). The
record holds the SHA-256 of the exact test tensor measured and how it was binarized, and the data
files checked against those the run was trained on (:mod:`iwae.rundir.integrity`).

Active units (Burda et al., Sec. 5.2): A_u = Var_x(E_q[u | x]) over the first 500 training images;
unit u is active if A_u > 0.01.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import data as data_module
from . import rundir
from .analysis.latent import ACTIVE_THRESHOLD, ACTIVE_UNITS_IMAGES, ACTIVE_UNITS_SEED, ActiveUnits, active_units
from .config.train import MAX_SIZE
from .errors import ConfigError
from .memory import DEFAULT_MEMORY_BUDGET, GIB, bytes_per_row, chunking
from .models import VAE, bits_per_dim, discrete_nll
from .objectives import iwae as iwae_bound
from .runtime import check_device, describe, runtime_text, synchronize, tune_allocator
from .tables import label_table, with_error

__all__ = [
    "log_likelihood",
    "lk_cost",
    "duration_text",
    "active_units",
    "evaluate",
    "nll_in_bits",
    "paired_difference",
    "PairedDifference",
    "summary_text",
    "ACTIVE_THRESHOLD",
    "ACTIVE_UNITS_IMAGES",
    "ACTIVE_UNITS_SEED",
    "ActiveUnits",
    "DEFAULT_MEMORY_BUDGET",
    "GIB",
    "ABSURD_SECONDS",
    "check_cost",
]

# one pass of L_k (an evaluation, or one epoch's validation bound) estimated to take longer than this on its
# device is refused rather than started: nobody waits for it, and the estimate says what to change
ABSURD_SECONDS = 7 * 86400


def nll_in_bits(nll_nats: float, model: VAE, splits: data_module.Splits) -> dict:
    """The NLL in the units a discrete likelihood is compared in: ``nll_discrete`` (nats) and
    ``bits_per_dim`` = nll_discrete / (D ln 2). A discrete likelihood's NLL is a code length as it is;
    a density's (gaussian) only on dequantised 8-bit data, x = (k + u)/256, where nll_discrete adds
    D ln 256 (:func:`iwae.models.likelihoods.discrete_nll`); otherwise both are None."""
    likelihood = getattr(model, "likelihood", None)
    dims = model.config.input_dim
    discrete = likelihood is None or likelihood.discrete  # a model without one is a Bernoulli model
    dequantised = bool(getattr(splits, "dequantize", False))  # its valid/test hold one seeded dequantisation
    if not (discrete or dequantised):
        return {"nll_discrete": None, "bits_per_dim": None}
    nats = discrete_nll(nll_nats, dims, dequantised=not discrete)
    return {"nll_discrete": nats, "bits_per_dim": bits_per_dim(nats, dims)}


@torch.no_grad()
def log_likelihood(
    model: VAE,
    x: torch.Tensor,
    k: int = 5000,
    *,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """L_k(x_n) = log (1/k) sum_i w_i for each row of ``x``: an estimate (lower bound) of log p(x_n).

    Args:
        model: the model (switched to eval mode for the call).
        x: binarized inputs, shape ``(N, D)``, on the model's device.
        k: importance samples per input.
        memory_budget: bytes a decoder call may use (a fraction of a byte is dropped); sets the chunk sizes.
        generator: random numbers for the samples (pass a seeded one for reproducible numbers).
        progress: show a progress bar.

    Returns:
        Shape ``(N,)``, in nats.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    need = bytes_per_row(model)
    if not memory_budget >= need:  # in GiB, as the command line takes it (1e-9 GiB is 1 byte)
        raise ConfigError(
            f"memory_budget of {memory_budget / GIB:.3g} GiB is below one sample's {need / GIB:.3g} GiB ({need} bytes)",
            ["memory_budget"],
        )
    memory_budget = int(memory_budget)
    tune_allocator()
    was_training = model.training
    model.eval()
    n = x.shape[0]
    images, samples = chunking(model, k, n, memory_budget, x.device)
    out = torch.empty(n, device=x.device)
    for i in tqdm(range(0, n, images), disable=None if progress else True, leave=False, unit="chunk", desc=f"L_{k}"):
        xb = x[i : i + images]
        loc, log_scale = model.encoder[0].loc_log_scale(xb)  # once per image
        # written in place chunk by chunk: a list of chunks to concatenate would leave small blocks
        # alive between the chunks' large temporaries, and the heap they fragment grows the process
        log_w = torch.empty(k, xb.shape[0], device=x.device)  # (k, images)
        for j in range(0, k, samples):
            log_w[j : j + samples] = model.log_weights_from_posterior(
                xb, loc, log_scale, min(samples, k - j), generator
            )
        out[i : i + images] = iwae_bound(log_w)
    model.train(was_training)
    return out


def lk_cost(
    model: VAE, x: torch.Tensor, k: int, memory_budget: float = DEFAULT_MEMORY_BUDGET, *, repeats: int = 2
) -> dict:
    """What L_k of the images ``x`` will cost, before it runs: ``rows`` (N k decoder rows), the seconds
    a timing pass measured per row (the last of ``repeats`` calls of one chunk, the first one warming up)
    and ``seconds`` = rows x that. The timing pass draws from its own generator and no image is measured."""
    n = x.shape[0]
    images, samples = chunking(model, k, n, int(memory_budget), x.device)
    generator = torch.Generator(device=x.device).manual_seed(0)
    for _ in range(repeats):
        synchronize(x.device)
        t0 = time.perf_counter()
        log_likelihood(model, x[:images], min(k, samples), memory_budget=memory_budget, generator=generator)
        synchronize(x.device)
        seconds = time.perf_counter() - t0
    per_row = seconds / (images * min(k, samples))
    return {"rows": n * k, "seconds_per_row": per_row, "seconds": per_row * n * k, "images": n, "k": k}


def duration_text(seconds: float) -> str:
    """``seconds`` as a person reads it: 42 s, 12 min, 3.5 h, 9 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.3g} days"


def check_cost(cost: dict, what: str, settings: list[str]) -> None:
    """Refuses an L_k pass whose estimated ``cost`` (:func:`lk_cost`) exceeds ABSURD_SECONDS, in one line
    naming ``settings``, the ones that set it."""
    if cost["seconds"] > ABSURD_SECONDS:
        names = " or ".join(settings)
        raise ConfigError(
            f"{what} would take about {duration_text(cost['seconds'])} ({cost['rows']:.3g} samples of "
            f"{cost['images']} images at {cost['seconds_per_row'] * 1e6:.2g} us each, measured here); "
            f"reduce {names}",
            settings,
        )


class PairedDifference(NamedTuple):
    """The mean difference of two per-image values over the same images, and its paired standard error.

    ``difference`` = (1/N) sum_n (a_n - b_n), the sign as the arguments' order: positive when ``a`` is
    larger on average (for log-likelihood estimates such as L_k: ``a`` is the higher, tighter one);
    ``stderr`` = std_n(a_n - b_n) / sqrt(N), with N - 1 in the standard deviation. A tuple, so that
    ``difference, stderr = paired_difference(a, b)`` works too.
    """

    difference: float
    stderr: float


def paired_difference(a: np.ndarray | str | os.PathLike, b: np.ndarray | str | os.PathLike) -> PairedDifference:
    """Mean of ``a - b`` over the same images and its paired standard error ``std(a - b) / sqrt(N)``
    (:class:`PairedDifference`).

    ``a`` and ``b`` are per-image values (e.g. the L_k of two evaluations, their ``.npy`` files) of the
    same N images in the same order. The images' own spread cancels in ``a - b``, so the paired error
    is far smaller than the two evaluations' standard errors combined.
    """
    a = rundir.read_bounds(a) if isinstance(a, (str, os.PathLike)) else np.asarray(a)
    b = rundir.read_bounds(b) if isinstance(b, (str, os.PathLike)) else np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired values need the same N >= 2 images, got shapes {a.shape} and {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    return PairedDifference(float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))))


def _bits_text(result: dict) -> str:
    """bits/dim ± its standard error (the NLL's, in bits per dimension), with the decimals it needs."""
    bits, nats = result["bits_per_dim"], result["nll_discrete"]
    stderr = result["nll_stderr"] * bits / nats if nats and result["nll_stderr"] is not None else None
    return (
        f"{with_error(bits, stderr)}  ({nats:.2f} nats as a code length, {result.get('likelihood', 'bernoulli')} "
        f"likelihood; ± s.e. over images)"
    )


def _stderr_text(stderr: float | None) -> str:
    return "n/a (one image)" if stderr is None else f"{stderr:.2f}"


def summary_text(result: dict) -> str:
    """The lines ``iwae evaluate`` prints for a result of :func:`evaluate`: test NLL with its standard
    error, the images, active units, which weights, the device, the time and the files written."""
    measured, images, runtime = result["model"], result["test_images"], result["runtime"]
    per_layer = result["active_units_per_layer"]
    units = " + ".join(map(str, per_layer)) + (f" = {result['active_units']}" if len(per_layer) > 1 else "")
    written = [str(Path(measured["run_dir"]) / f) for f in result["files"].values()] if result["files"] else []
    return label_table(
        [
            (
                "test NLL (nats)",
                f"{result['nll']:.2f} ± {_stderr_text(result['nll_stderr'])}  "
                f"(-mean L_{result['k']} ± s.e., seed {result['seed']})",
            ),
            *([("bits/dim", _bits_text(result))] if result.get("bits_per_dim") else []),
            ("test images", rundir.images_text(images)),
            ("data files", rundir.data_text(result.get("data"))),
            ("active units", units),
            (
                "model",
                f"epoch {measured['epoch']} of {measured['epochs_planned']}, "
                f"model.safetensors sha256 {measured['sha256']}",
            ),
            ("device", runtime_text(runtime)),
            ("time", f"{result['seconds']:.1f} s ({result['images_per_s']:.1f} images/s)"),
            ("written", ", ".join(written) or "nothing"),
        ]
    )


@rundir.locks("iwae evaluate", lambda a: a["run_dir"] if a["model"] is None and a["save"] else None)
def evaluate(
    run_dir: str | os.PathLike | None = None,
    *,
    model: VAE | None = None,
    splits: data_module.Splits | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    k: int = 5000,
    test_subset: int | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    save: bool = True,
    accept_changed_data: bool = False,
    announce: Callable[[dict], None] | None = None,
) -> dict:
    """Test NLL by L_k with its standard error, and active units, of a run (or of ``model`` on ``splits``).

    A run is measured with the weights of its last completed epoch (:func:`iwae.rundir.load_trained`; a run that
    has completed none is refused), on its data files as it was trained on them: a file whose SHA-256
    changed since is refused unless ``accept_changed_data`` (the record then says so). With ``save`` (and
    the run's own model, not ``model``), the result is written to
    ``RUN_DIR/{rundir.eval_name(k, seed, test_subset)}.json`` and L_k of each test image to the ``.npy``
    beside it (float64, in test-set order), both atomically. ``dataset`` names the run's data file where it
    has moved since training (``npz:PATH``; any other data set is refused, :func:`iwae.rundir.check_moved_data`);
    ``data_dir`` where a benchmark's files are. Before the pass, its cost is estimated (:func:`lk_cost`):
    ``announce``, if given, is called with it (the command line prints a long one), and a pass over
    ABSURD_SECONDS is refused.

    Returns:
        A dict with ``nll``, ``nll_stderr`` (None for one image), ``nll_discrete`` and ``bits_per_dim``
        (:func:`nll_in_bits`; None for a density on data that are not dequantised), ``likelihood`` (its
        name), ``code_length`` (whether the NLL is one: a discrete likelihood), ``method`` (``"lk"``),
        ``k``, ``n_test``, ``active_units`` (total), ``active_units_per_layer``, ``unit_variances``,
        ``seconds`` and ``images_per_s`` (the L_k pass alone), ``seed``, ``test_images`` (dataset, split,
        the first N of how many, ``sha256`` of the test tensor measured and ``binarization``: how the
        test images were made, :func:`iwae.rundir.images_record`), ``data`` (the data files and
        SHA-256s measured, and which ``changed`` since training: :func:`iwae.rundir.integrity.check_data`;
        None for a ``model`` passed in), ``model`` (run directory, the epoch measured of those planned,
        SHA-256 of model.safetensors; None for a ``model`` passed in), ``runtime`` (device, GPU, torch
        and CUDA versions) and ``files`` (the JSON and ``.npy`` written, or None).

    Raises:
        ConfigError: a bad setting, data the likelihood does not model, or a pass estimated over ABSURD_SECONDS.
        DataError: the run's data files changed since it was trained (without ``accept_changed_data``).
        CheckpointError: the run's weights are missing, corrupt, of another run or not finite.
        ValueError: L_k is not finite for some test image.
    """
    # the arguments first: a bad value must not wait for the model and the data
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}", ["k"])
    if k > MAX_SIZE:
        raise ConfigError(f"k must be at most {MAX_SIZE}, got {k}", ["k"])
    if test_subset is not None and test_subset < 1:
        raise ConfigError(f"test_subset must be >= 1, got {test_subset}", ["test_subset"])
    if not 0 < memory_budget < math.inf:
        raise ConfigError(
            f"memory_budget must be a positive, finite number of GiB, got {memory_budget / GIB:g}", ["memory_budget"]
        )
    measured = {"run_dir": None, "epoch": None, "epochs_planned": None, "sha256": None}
    run = None
    if model is None:
        if run_dir is None:
            raise ValueError("evaluate needs a run directory or a model")
        check_device(device)
        # the data as training saw them (its binarization, or none, and dequantisation), checked against
        # the files the run was trained on: one place for it, rundir.Run
        run = rundir.open_run(
            run_dir, device, data_dir=data_dir, dataset=dataset, accept_changed_data=accept_changed_data
        )
        model = run.model
        measured.update(run.weights, run_dir=str(run_dir), epochs_planned=run.config.total_epochs)
        if splits is None:
            splits = run.splits
        else:
            run.check_splits(splits)
    if splits is None:
        splits = data_module.load_dataset(dataset or "mnist", data_dir)
    n_total = splits.test.shape[0]
    dev = next(model.parameters()).device
    x_test = splits.first("test", test_subset, "test_subset").to(dev)  # refuses more than there are
    if x_test.shape[1] != model.config.input_dim:  # a model passed in with splits of another size
        raise ConfigError(
            f"{splits.name} has images of {x_test.shape[1]} pixels, the model takes {model.config.input_dim}: "
            f"not the data it was trained on",
            ["dataset"],
        )
    likelihood = getattr(model, "likelihood", None)
    if likelihood is not None:  # e.g. logistic256's masses are of the values k/255 only, bernoulli's of 0 and 1
        try:
            likelihood.check_data(x_test, f"the test data of {splits.name}")
        except ValueError as e:
            raise ConfigError(str(e), ["dataset", "likelihood", "binarize"]) from None
    cost = lk_cost(model, x_test, k, memory_budget)
    check_cost(cost, f"L_{k} on {len(x_test)} test images", ["k", "test_subset"])
    if announce is not None:
        announce(cost)
    generator = torch.Generator(device=dev)
    generator.manual_seed(seed)

    synchronize(dev)  # CUDA runs kernels asynchronously: time them, not their queueing
    t0 = time.perf_counter()
    ll = log_likelihood(model, x_test, k, memory_budget=memory_budget, generator=generator, progress=progress)
    synchronize(dev)
    seconds = time.perf_counter() - t0
    bad = int((~torch.isfinite(ll)).sum())
    if bad:  # never a nan NLL in a file, nor a number that averages one in
        raise ValueError(
            f"L_{k} is not finite for {bad} of the {len(ll)} test images (the model gives them no probability, "
            f"or its numbers overflow); nothing was written"
        )
    x_units = splits.train[:ACTIVE_UNITS_IMAGES]
    if splits.dynamic:
        x_units = torch.from_numpy(data_module.fixed_binarization(x_units.numpy(), ACTIVE_UNITS_SEED))
    units = active_units(model, x_units.to(dev), generator=generator)
    bounds = ll.double().cpu().numpy()
    nll = -ll.double()
    save = save and run is not None
    name = rundir.eval_name(k, seed, test_subset)
    result = {
        "nll": nll.mean().item(),
        # undefined for one image: None (null in the JSON), never a nan
        "nll_stderr": (nll.std().item() / math.sqrt(len(nll))) if len(nll) > 1 else None,
        **nll_in_bits(nll.mean().item(), model, splits),
        "likelihood": getattr(likelihood, "name", "bernoulli"),
        "code_length": likelihood is None or bool(likelihood.discrete),
        "method": "lk",
        "k": k,
        "n_test": len(nll),
        "active_units": sum(units.counts),
        "active_units_per_layer": units.counts,
        "unit_variances": [v.tolist() for v in units.variances],
        "seconds": seconds,
        "images_per_s": len(nll) / seconds,
        "seed": seed,
        "test_images": rundir.images_record(splits, x_test, n_total),
        "data": run.data if run is not None else None,
        "model": measured,
        "runtime": describe(dev),
        # the samples are drawn chunk by chunk, so with one seed the numbers depend on the chunking too
        "chunking": dict(
            zip(("images", "samples"), chunking(model, k, len(nll), memory_budget, dev)),
            memory_budget=int(memory_budget),
        ),
        "files": rundir.evaluation_files(name) if save else None,
    }
    if save:
        rundir.write_evaluation(run_dir, name, result, bounds)
    return result
