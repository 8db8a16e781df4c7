"""The training loop: build the model, the optimiser and the random stream, then for every epoch the
minibatch steps, the validation bound, the checkpoint and the metrics (see :mod:`iwae.train`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import data as data_module
from .. import rundir
from ..compiled import CompiledStep, compiled_forward, compiled_step
from ..config.train import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..estimators import accumulate_gradients
from ..evaluate import log_likelihood
from ..memory import DEFAULT_MEMORY_BUDGET, bytes_per_row
from ..models import HVAE, VAE, make_model
from ..objectives import iwae as iwae_bound
from ..runtime import choose_threads, synchronize, tune_allocator
from .announce import estimate_line, plan_line
from .checks import check_run
from .early_stopping import EarlyStopping
from .resume import resume_point
from .schedule import kl_weight, learning_rate
from .step import _defer_finite_check, _nonfinite, _nonfinite_now, _normalize_gradients

__all__ = ["train", "train_or_resume", "build_model", "load", "validation_bound"]


# ----------------------------------------------------------------------------- model i/o
def build_model(config: TrainConfig, input_dim: int, image_shape: tuple[int, ...] | None = None) -> VAE | HVAE:
    """The model ``config`` describes for data of ``input_dim`` pixels (:func:`iwae.models.make_model`)."""
    return make_model(config.model_config(input_dim, image_shape))


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """The model of a run directory, in eval mode (:func:`iwae.rundir.load_model`)."""
    return rundir.load_model(run_dir, device)


# ----------------------------------------------------------------------------- evaluation helper
@torch.no_grad()
def validation_bound(
    model: VAE,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    batch_size: int = 100,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> float:
    """Mean L_k over ``x`` (already binarized), in nats, ``batch_size`` images at a time; no decoder
    call exceeds ``memory_budget`` bytes (by :mod:`iwae.memory`'s estimate of a sample's memory).

    Where ``batch_size * k`` samples fit the budget (with the default 1 GiB and Burda's 1-layer net,
    k up to about 690) each batch is one ``model.log_weights`` call, as before the budget existed,
    so the values and the training generator's later draws stay as they were. Beyond that, the
    batch goes through :func:`iwae.evaluate.log_likelihood`, which draws the samples in chunks."""
    was_training = model.training
    model.eval()
    one_call = min(batch_size, x.shape[0]) * k * bytes_per_row(model) <= memory_budget
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        if one_call:
            total += iwae_bound(model.log_weights(xb, k, generator)).sum().item()
        else:
            total += log_likelihood(model, xb, k, memory_budget=memory_budget, generator=generator).sum().item()
    model.train(was_training)
    return total / x.shape[0]


# device type -> whether this torch has a fused Adam for it: tried once, by the first optimizer made for it
_FUSED_ADAM: dict[str, bool] = {}


def _make_optimizer(config: TrainConfig, model: VAE, device: torch.device) -> torch.optim.Optimizer:
    """Adam with Burda et al.'s settings, fused where this torch has a fused kernel for ``device``.

    Fused Adam updates all tensors in one kernel: about +45% steps/s at batch 20, k = 1 on CPU. Torch
    before 2.4 has it for CUDA only and refuses ``fused=True`` for CPU tensors (a RuntimeError): there
    the unfused Adam makes the same update, elementwise."""
    settings = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps)
    if device.type in ("cpu", "cuda") and _FUSED_ADAM.get(device.type, True):
        try:
            optimizer = torch.optim.Adam(model.parameters(), **settings, fused=True)
        except RuntimeError:  # no fused kernel for this device in this torch
            _FUSED_ADAM[device.type] = False
        else:
            _FUSED_ADAM[device.type] = True
            return optimizer
    return torch.optim.Adam(model.parameters(), **settings)


def _step_program(
    config: TrainConfig, model: VAE, optimizer: torch.optim.Optimizer, device: torch.device, progress: bool
) -> CompiledStep | None:
    """``--compile step``: the run's step as one compiled program (:mod:`iwae.compiled.step`; on CUDA
    replayed as a CUDA graph), or None with a one-line note on stderr where it does not apply."""
    if config.optimizer != "adam":  # the program holds Adam's update; AdamNormGrad rescales gradients first
        print(f"--compile step: --optimizer {config.optimizer} trains eager", file=sys.stderr, flush=True)
        return None
    if progress:
        print("compiling the training step (cached for later runs and resumes)", file=sys.stderr, flush=True)
    return compiled_step(
        model,
        optimizer,
        config.spec,
        config.batch_size,
        precision=config.precision,
        kl_warmup=config.kl_warmup > 0,
        note=lambda line: print(line, file=sys.stderr, flush=True),
    )


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _check_device(config: TrainConfig) -> torch.device:
    """The torch device of ``config.device`` (whose form __post_init__ checked), if this machine has it."""
    try:
        device = torch.device(config.device)
    except RuntimeError as e:  # e.g. an index beyond what torch parses
        raise ValueError(
            f"device {config.device!r} is not a device torch knows ({e}); use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {config.device} requested but CUDA is not available on this machine; use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {config.device} requested but this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    return device


# ----------------------------------------------------------------------------- the loop
@rundir.locks("iwae train", lambda a: a["config"].out)  # one writer per run folder
def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    splits: data_module.Splits | None = None,
    model: VAE | None = None,
    accept_changed_data: bool = False,
) -> Path:
    """Trains a model as ``config`` says and returns its run directory ``config.out``.

    ``model`` trains a model built in Python (e.g. ``VAE(cfg, encoder=..., decoder=...)``) in place
    of the one ``config``'s architecture settings describe, with the same loop, objective,
    estimator, schedule, checkpoints and validation; it is trained in place (and moved to
    ``config.device``). Its output bias and VampPrior start from the data as a built model's do.
    The weights are written as safetensors; a model of user modules is rebuilt by its user and
    loaded with ``model.load_state_dict(iwae.checkpoint.load_tensors(RUN/"model.safetensors")[0])``
    (``iwae.load`` refuses it: there is no pickled code to rebuild it from).

    Args:
        config: the run's settings.
        resume: continue the run in ``config.out`` from its last checkpoint (from the beginning if it
            was stopped before its first one); says on stderr where it continues from, and that there
            is nothing to do if all ``config.total_epochs`` are trained.
        overwrite: replace an existing run directory instead of refusing. Without it a directory
            that holds only a run stopped before its first checkpoint is replaced too.
        progress: show a progress bar and a line per epoch.
        splits: data already loaded (else ``config.load_data()``: its binarization and dequantisation).
        model: the model to train (else ``build_model(config, ...)``); its ``input_dim`` must be the data's.
        accept_changed_data: resume on data files whose SHA-256 changed since the checkpoint was written,
            deliberately (the weights then record when the data changed); else that is refused.

    Before anything is written the run is checked (:func:`iwae.train.checks.check_run`): the data against
    the likelihood, the batch size against the data, the memory of the model and of one step against
    the device's, the data files against the checkpoint's record, the validation bound's cost.

    Raises:
        ValueError: bad settings (a ConfigError naming them); a resume on another device type or for
            fewer epochs than trained.
        DataError: resuming on data files that changed since the checkpoint (without ``accept_changed_data``).
        CheckpointError: a checkpoint that is unreadable, corrupt, of another run or does not fit the config.
        FloatingPointError: the loss or a gradient became nan or inf (the parameters did not take
            that step; the last checkpoint is intact).
    """
    run_dir = Path(config.out)
    ckpt_path = run_dir / rundir.CHECKPOINT
    total_epochs = config.total_epochs
    saved, finished = resume_point(config, resume=resume, overwrite=overwrite)
    if finished:
        rundir.remove_run_temporaries(run_dir)
        rundir.sync_outputs(run_dir, config, list(saved[1].get("metrics", [])))
        stopped = (saved[1].get("early_stopping") or {}).get("stopped")
        done = f"stopped early after epoch {saved[1].get('epoch')}" if stopped else f"trained all {total_epochs} epochs"
        print(f"nothing to do: {run_dir} has {done}", file=sys.stderr)
        return run_dir  # on any device: nothing is drawn
    device = _check_device(config)
    if config.precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision bf16-mixed needs a GPU with bfloat16 (Ampere or newer); {config.device} has "
            f"none: use precision 32",
            ["precision"],
        )
    choose_threads(config.threads)  # None: torch's default, at most the free cores
    tune_allocator()

    # data first: a data error must not leave an empty run directory or delete an old run
    splits = splits or config.load_data()
    x_train = splits.first("train", config.train_subset, "train_subset")  # refuses more than there are
    x_train, x_valid = x_train.to(device), splits.valid.to(device)
    n_train = x_train.shape[0]
    if model is not None and model.config.input_dim != x_train.shape[1]:
        raise ConfigError(
            f"the model takes {model.config.input_dim} pixels, {config.dataset} has {x_train.shape[1]}", ["dataset"]
        )
    data = check_run(
        config,
        splits,
        x_train,
        x_valid,
        device,
        model=model,
        saved=saved,
        accept_changed_data=accept_changed_data,
        progress=progress,
    )
    if config.init_from and saved is None and not (Path(config.init_from) / "model.safetensors").is_file():
        # before the run directory is made: a missing source must not leave an empty run behind
        raise ConfigError(f"init_from {config.init_from} holds no model.safetensors (a trained run)", ["init_from"])
    if config.init_from and saved is None:
        rundir.check_weights(config.init_from)  # damaged or foreign weights refused before the folder is made

    # replaced, or (a run stopped before its first checkpoint: nothing trained to keep) cleared
    rundir.prepare(run_dir, replace=saved is None and overwrite and not resume, clear_start=saved is None)

    # model, optimiser, randomness (one generator drives shuffling, binarization and sampling)
    torch.manual_seed(config.seed)
    model = (model if model is not None else build_model(config, x_train.shape[1], splits.image_shape)).to(device)
    model.init_output_bias(splits.train.mean(0) if config.train_subset is None else x_train.mean(0))
    model.init_prior(x_train)  # VampPrior: pseudo-inputs from training images; others: nothing
    if config.init_from and saved is None:
        rundir.init_from(model, config.init_from, config.init_sha256)
    optimizer = _make_optimizer(config, model, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    spec = config.spec
    valid_k = config.valid_k or config.k
    forward = compiled_forward(config.compile, device)  # None: eager, or the whole step compiled below
    # the step's precision and compiled forward, passed only when not the defaults (float32, eager)
    speed = {k: v for k, v in (("precision", config.precision), ("forward", forward)) if v not in ("32", None)}
    normalize = config.optimizer == "adam-normgrad"
    stopper = None if config.early_stopping is None else EarlyStopping(config.early_stopping, config.kl_warmup)

    start_epoch, step, metrics, partial, wall_time = 0, 0, [], None, 0.0
    if saved is not None:
        start_epoch, step, metrics, partial, wall_time = rundir.restore(
            ckpt_path, *saved, model, optimizer, generator, n_train
        )
        rundir.sync_outputs(run_dir, config, metrics)
        kept = rundir.read_early_stopping(ckpt_path, *saved, model)
        if stopper is not None:
            if kept is None:
                raise CheckpointError(f"{ckpt_path} holds no early-stopping state, and the run stops early")
            try:
                stopper = EarlyStopping.restored(config.early_stopping, config.kl_warmup, *kept)
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{ckpt_path}: {e}") from None
        where = f"step {step}" + (
            f", {partial.position} of {n_train} images into epoch {start_epoch + 1}" if partial else ""
        )
        print(f"resuming {run_dir} from epoch {start_epoch} of {total_epochs} ({where})", file=sys.stderr)
    else:
        rundir.write_config(run_dir, config)
        rundir.save_model(run_dir, model, 0, data=data)
    checkpointed = (start_epoch, step) if saved is not None else None  # what checkpoint.safetensors holds
    # --compile step: the whole step as one program (built here, before any epoch is timed), or None where
    # it does not apply (a one-line note says why; the run trains with the eager step)
    program = _step_program(config, model, optimizer, device, progress) if config.compile == "step" else None
    params = list(model.parameters())  # the eager step's finite check reads their gradients

    if progress or config.epochs is None:  # the whole paper schedule is said even with progress off
        print(plan_line(config, n_train, start_epoch), file=sys.stderr)
    writer = rundir.tensorboard_writer(run_dir, purge_step=start_epoch + 1 if saved is not None else None)
    run_start = time.perf_counter() - wall_time
    # deferred, the check hands its flag to fused Adam as found_inf: the unfused Adam would ignore it
    defer = _defer_finite_check(device) and bool(optimizer.defaults.get("fused"))
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # deferred check: first nan/inf step

    def stop_if_nonfinite(epoch: int, bad_step: int | None = None) -> None:
        if bad_step is None and defer:
            bad_step = int(first_bad.item())  # the deferred check's one host sync, before any checkpoint
            bad_step = None if bad_step < 0 else bad_step
        if bad_step is None:
            return
        last = (
            f"checkpoint.safetensors (epoch {checkpointed[0]}, step {checkpointed[1]}) is intact"
            if checkpointed
            else "no checkpoint was written yet"
        )
        raise FloatingPointError(
            f"training stopped: the loss or a gradient became nan or inf in epoch {epoch + 1} "
            f"at step {bad_step}, and the parameters did not take that step; {last}; "
            f"try a smaller --lr in a new run"
        )

    try:
        for epoch in range(start_epoch, total_epochs):
            stage, lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            warmup_weight = kl_weight(config, epoch)
            if partial is not None:  # resumed in the middle of this epoch
                order, first, bound_sum = partial.order, partial.position, partial.bound_sum
                t0 = time.perf_counter() - partial.seconds
                partial = None
            else:
                order = torch.randperm(n_train, generator=generator, device=device)
                first, bound_sum = 0, torch.zeros((), device=device)
                t0 = time.perf_counter()
            bar = tqdm(
                range(first, n_train, config.batch_size),
                desc=f"epoch {epoch + 1}/{total_epochs}",
                disable=None if progress else True,  # None: off when stderr is not a terminal
                leave=False,
                file=sys.stderr,
                unit="batch",
            )
            for i in bar:
                x = x_train[order[i : i + config.batch_size]]
                if splits.dynamic:
                    x = data_module.binarize(x, generator)
                elif splits.dequantize:
                    x = data_module.dequantize(x, generator)
                if program is not None:  # checks and skips a non-finite step inside; no .grad to clear
                    bound, finite = program(x, generator, warmup_weight)
                    if defer:
                        first_bad = torch.where(~finite & (first_bad < 0), step + 1, first_bad)
                    elif not finite:
                        stop_if_nonfinite(epoch, step + 1)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    bound = accumulate_gradients(model, x, spec, generator, warmup_weight, **speed)
                    if defer:
                        bad = _nonfinite(bound, params)
                        first_bad = torch.where(bad & (first_bad < 0), step + 1, first_bad)
                        optimizer.found_inf = bad.float()  # fused Adam skips the update when it is 1
                    elif _nonfinite_now(bound, params):
                        stop_if_nonfinite(epoch, step + 1)
                    if normalize:
                        _normalize_gradients(model)
                    optimizer.step()
                bound_sum += bound.sum()
                step += 1
                if not bar.disable and step % 50 == 0:  # .item() syncs CUDA: only for a bar that is shown
                    bar.set_postfix(bound=f"{bound_sum.item() / min(i + config.batch_size, n_train):.2f}")
                position = i + config.batch_size
                if config.checkpoint_every and step % config.checkpoint_every == 0 and position < n_train:
                    stop_if_nonfinite(epoch)
                    rundir.save_checkpoint(
                        run_dir,
                        model,
                        optimizer,
                        generator,
                        epoch,
                        step,
                        metrics,
                        rundir.EpochState(order, position, bound_sum, time.perf_counter() - t0),
                        time.perf_counter() - run_start,
                        early_stopping=None if stopper is None else (stopper.state(), stopper.best_weights),
                        data=data,
                    )
                    checkpointed = (epoch, step)
            bar.close()
            stop_if_nonfinite(epoch)
            train_bound = bound_sum.item() / n_train
            synchronize(device)  # the epoch's time includes its queued CUDA kernels (.item() syncs today, by accident)
            epoch_time = time.perf_counter() - t0
            valid_bound = validation_bound(model, x_valid, valid_k, generator)
            row = {
                "epoch": epoch + 1,
                "stage": stage,
                "lr": lr,
                "step": step,
                "train_bound": train_bound,
                f"valid_L{valid_k}": valid_bound,
                "epoch_time_s": epoch_time,
                "examples_per_s": n_train / epoch_time,
                "wall_time_s": time.perf_counter() - run_start,
            }
            metrics.append(row)
            for key in ("train_bound", f"valid_L{valid_k}", "examples_per_s", "lr"):
                writer.add_scalar(key, row[key], epoch + 1)
            writer.flush()
            # the model first, then the checkpoint that commits the epoch, then what can be rebuilt
            # from the checkpoint (metrics.csv, see rundir.sync_outputs): a kill between two of them loses
            # nothing, and model.safetensors is never behind checkpoint.safetensors (with early stopping,
            # once the run ends, it holds the best epoch's weights: the model the test evaluation reads)
            kept = None
            if stopper is not None:
                stopper.update(epoch + 1, valid_bound, model.state_dict())
                kept = (stopper.state(), stopper.best_weights)
            if stopper is not None and (stopper.stopped or epoch + 1 == total_epochs) and stopper.best_weights:
                rundir.save_model(run_dir, model, stopper.best_epoch, stopper.best_weights, data=data)
            else:
                rundir.save_model(run_dir, model, epoch + 1, data=data)
            rundir.save_checkpoint(
                run_dir,
                model,
                optimizer,
                generator,
                epoch + 1,
                step,
                metrics,
                wall_time=row["wall_time_s"],
                early_stopping=kept,
                data=data,
            )
            checkpointed = (epoch + 1, step)
            rundir.write_metrics(run_dir, metrics)
            if (progress or config.epochs is None) and epoch == start_epoch:  # quiet, but weeks: say how long
                print(estimate_line(epoch_time, total_epochs - epoch - 1), file=sys.stderr)
            if progress:
                eta = (time.perf_counter() - run_start) / (epoch + 1) * (total_epochs - epoch - 1)
                print(
                    f"epoch {epoch + 1}/{total_epochs}  lr {lr:.2e}  train {spec.label} {train_bound:.3f}  "
                    f"valid L_{valid_k} {valid_bound:.3f}  {row['examples_per_s']:.0f} ex/s  "
                    f"ETA {_duration(eta)}",
                    file=sys.stderr,
                )
            if stopper is not None and stopper.stopped:
                if progress:
                    print(
                        f"early stopping: no better validation L_{valid_k} for {stopper.bad_epochs} epochs; "
                        f"model.safetensors holds the best, "
                        + (f"epoch {stopper.best_epoch} ({stopper.best:.3f})" if stopper.best_weights else "none"),
                        file=sys.stderr,
                    )
                break
    finally:
        writer.close()
    return run_dir


# ----------------------------------------------------------------------------- train, or resume what is there
@rundir.locks("iwae train", lambda a: a["config"].out)
def train_or_resume(config: TrainConfig, *, splits: data_module.Splits | None = None, progress: bool = True) -> str:
    """Trains ``config.out``, resuming its checkpoint when one of the same run is there.

    Returns what was done: ``trained`` (new directory), ``resumed``, ``trained before`` (nothing left
    to train), or ``restarted`` (a directory
    without a readable checkpoint is replaced). A checkpoint of another run (other
    :func:`iwae.rundir.run_identity`) or of more epochs than asked for raises ValueError and is left alone.
    """
    run_dir = Path(config.out)
    if run_dir.is_dir():
        rundir.settle(run_dir)  # a group commit a kill interrupted: finished or undone
    if rundir.has_checkpoint(run_dir):
        try:
            old = rundir.read_config(run_dir)
        except (CheckpointError, ValueError, TypeError):
            old = config  # unreadable config: the checkpoint check below decides
        diff = rundir.changed_settings(old, config)
        if diff:
            raise ValueError(
                f"{run_dir} was trained with other settings ({', '.join(diff)}); "
                f"use another --out for a different protocol"
            )
        try:
            done = rundir.trained_epochs(run_dir)
        except CheckpointError:
            done = None  # unreadable: start again below
        if done is not None:
            if done > config.total_epochs:
                raise ValueError(
                    f"{run_dir} has trained {done} epochs, more than the {config.total_epochs} "
                    f"asked for; use another --out"
                )
            if done == config.total_epochs or rundir.finished_training(
                rundir.read_checkpoint(run_dir)[1], config.total_epochs
            ):  # nothing to train (all epochs, or stopped early), on any device
                rundir.sync_outputs(run_dir, config, rundir.checkpoint_metrics(run_dir))
                return "trained before"
            train(config, resume=True, progress=progress, splits=splits)  # checks the device type
            return "resumed"
    existed = not rundir.is_empty(run_dir)  # an empty folder (iwae's hidden files only) held no run
    train(config, overwrite=True, progress=progress, splits=splits)
    return "restarted" if existed else "trained"
