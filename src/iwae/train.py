"""Training: the config, the learning-rate schedule, the loop, checkpoints and metrics.

    from iwae.train import TrainConfig, train
    run_dir = train(TrainConfig(objective="iwae", k=5, epochs=10, out="runs/iwae-k5"))

follows Burda et al. (2016): Adam (beta1 0.9, beta2 0.999, eps 1e-4), minibatches of 20 with
gradients summed over the minibatch, dynamic binarization, and the ``paper`` schedule of 3^i epochs
at learning rate 1e-3 * 10^(-i/7) for i = 0..7 (3,280 epochs). ``epochs = N`` runs the first N
epochs of the schedule. Every epoch logs the training objective's bound, the validation L_k, wall
time and examples/s to ``metrics.csv`` and TensorBoard, and writes a checkpoint atomically, so
``train(..., resume=True)`` continues a killed run; on CPU it ends with the same parameters, bit
for bit, as the uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml

from . import data as data_module
from .checkpoint import CheckpointError, atomic_write, load_tensors, save_tensors
from .errors import ConfigError
from .estimators import ObjectiveSpec, accumulate_gradients
from .models import VAE, ModelConfig
from .objectives import iwae as iwae_bound
from .runtime import tune_allocator

__all__ = ["TrainConfig", "train", "train_or_resume", "run_identity", "trained_epochs", "training_seconds",
           "model_sha256", "paper_schedule", "learning_rate", "kl_weight",
           "load", "build_model"]

SCHEDULES = ("paper", "constant")
PAPER_STAGES = 8  # i = 0..7
# settings that may differ between two invocations on the same run (they do not change its result)
NOT_IDENTITY = ("threads", "data_dir", "out", "device", "epochs", "init_from")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run directory."""

    # data
    dataset: str = "mnist"  # mnist, binarized-mnist, fashion-mnist, omniglot, or npz:PATH
    data_dir: str | None = None  # folder of the data files (else $IWAE_DATA_DIR, the cache, download)
    train_subset: int | None = None  # train on the first N training examples only
    # model
    layers: int = 1  # stochastic layers (Burda et al.'s 1- and 2-layer architectures)
    latent_dims: list[int] | None = None  # units per stochastic layer, bottom-up; None = Burda's
    hidden_dims: list[list[int]] | None = None  # tanh widths per stochastic layer; None = Burda's
    prior: str = "normal"  # p(z) of the top layer: normal, mog (mixture of Gaussians), vamp (VampPrior)
    components: int | None = None  # mixture components (mog) or pseudo-inputs (vamp), required for them; normal: 1
    learn_mixture_weights: bool = False  # mog: learn the mixture weights (else uniform)
    # objective
    objective: str = "iwae"  # vae, iwae, miwae, ciwae, piwae
    k: int = 5  # total samples per example
    m: int = 1  # groups of k // m samples, for miwae and piwae
    beta: float = 0.5  # weight of the ELBO, for ciwae
    estimator: str = "reparam"  # the encoder's gradient: reparam, stl, dreg, rws, rws-dreg
    kl_warmup: int = 0  # vae only: epochs over which the weight of log p(z) - log q(z|x) rises from 0 to 1
    # optimisation
    batch_size: int = 20
    schedule: str = "paper"  # paper: 3^i epochs at lr * 10^(-i/7); constant: lr throughout
    epochs: int | None = None  # None: the whole paper schedule (3,280 epochs)
    lr: float = 1e-3  # initial (paper) or constant learning rate
    beta1: float = 0.9  # Adam; Burda et al.'s released code uses 0.99
    beta2: float = 0.999
    adam_eps: float = 1e-4
    # validation
    valid_k: int | None = None  # samples for the per-epoch validation L_k; None = k
    # run
    init_from: str | None = None  # start from this run directory's trained model (fresh optimiser), e.g. to continue
    init_sha256: str | None = None  # SHA-256 of init_from's model.safetensors, if it must be that model
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None = torch's default
    out: str = "runs/run"

    def __post_init__(self) -> None:
        try:
            self._validate()
        except ValueError as e:  # a ConfigError names the settings its message is about: the CLI prints their flags
            raise ConfigError.naming(e, [f.name for f in fields(self)]) from None

    def _validate(self) -> None:
        for name in ("beta", "lr", "beta1", "beta2", "adam_eps"):  # inf and nan pass the range checks below
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.spec  # validates objective, k, m, beta, estimator
        if self.components is None:  # a default of one would make mog a plain Gaussian and vamp one pseudo-input
            if self.prior in ("mog", "vamp"):
                raise ValueError(f"prior {self.prior} needs components: how many Gaussians (mog) or pseudo-inputs "
                                 f"(vamp) it has; Tomczak & Welling use 500")
            self.components = 1
        if self.components < 1:  # checked here too, so that the message names this setting, not the model's
            raise ValueError(f"components must be >= 1, got {self.components}")
        if self.learn_mixture_weights and self.prior != "mog":
            raise ValueError(f"learn_mixture_weights applies to the mog prior only, not {self.prior}; "
                             f"use prior mog")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.epochs is None and self.schedule != "paper":
            raise ValueError("the constant schedule needs a number of epochs")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.adam_eps > 0):
            raise ValueError("Adam needs 0 <= beta1, beta2 < 1 and eps > 0")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be >= 1, got {self.train_subset}")
        if self.valid_k is not None and self.valid_k < 1:
            raise ValueError(f"valid_k must be >= 1, got {self.valid_k}")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be >= 0 epochs, got {self.kl_warmup}")
        if self.kl_warmup and self.objective != "vae":
            raise ValueError(f"kl_warmup applies to the vae objective (the ELBO) only, not {self.objective}; "
                             f"use objective vae or kl_warmup 0")
        self.model_config(input_dim=784)  # validates the sizes

    @property
    def spec(self) -> ObjectiveSpec:
        return ObjectiveSpec(self.objective, self.k, self.m, self.beta, self.estimator)

    @property
    def total_epochs(self) -> int:
        return self.epochs if self.epochs is not None else sum(3**i for i in range(PAPER_STAGES))

    def model_config(self, input_dim: int) -> ModelConfig:
        """The network sizes: ``latent_dims`` / ``hidden_dims`` where given, else Burda et al.'s for ``layers``."""
        if self.latent_dims is None or self.hidden_dims is None:
            if self.layers not in (1, 2):
                raise ValueError(f"{self.layers} stochastic layers need explicit latent_dims and hidden_dims "
                                 f"(Burda et al. define 1 and 2)")
            burda = ModelConfig.burda(self.layers, input_dim)
        latent = self.latent_dims or burda.latent_dims
        hidden = self.hidden_dims or burda.hidden_dims
        if len(latent) != self.layers:
            raise ValueError(f"latent_dims {list(latent)} has {len(latent)} entries for {self.layers} layers")
        return ModelConfig(input_dim, tuple(latent), tuple(map(tuple, hidden)), self.prior, self.components,
                           self.learn_mixture_weights)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"config file {path} not found")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(values, dict):
            raise CheckpointError(f"config file {path} must hold a mapping of settings")
        return cls.from_dict(values)


# ----------------------------------------------------------------------------- schedule
def paper_schedule(stages: int = PAPER_STAGES, lr: float = 1e-3) -> list[tuple[int, float]]:
    """Burda et al.'s schedule: ``[(3^i epochs, lr * 10^(-i/7)) for i in range(stages)]``."""
    return [(3**i, lr * 10 ** (-i / 7)) for i in range(stages)]


def kl_weight(config: TrainConfig, epoch: int) -> float:
    """KL warm-up: the weight of log p(z) - log q(z|x) in the 0-based ``epoch``, epoch / kl_warmup up to 1."""
    return min(1.0, epoch / config.kl_warmup) if config.kl_warmup else 1.0


def learning_rate(config: TrainConfig, epoch: int) -> tuple[int, float]:
    """``(stage, learning rate)`` of the 0-based ``epoch``; the paper schedule's last rate continues past 3,280."""
    if config.schedule == "constant":
        return 0, config.lr
    end = 0
    for stage, (n, lr) in enumerate(paper_schedule(lr=config.lr)):
        end += n
        if epoch < end:
            return stage, lr
    return PAPER_STAGES - 1, paper_schedule(lr=config.lr)[-1][1]


# ----------------------------------------------------------------------------- model i/o
def build_model(config: TrainConfig, input_dim: int) -> VAE:
    return VAE(config.model_config(input_dim))


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> VAE:
    """The trained model of a run directory, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    tensors, meta = load_tensors(run_dir / "model.safetensors")
    if "model_config" not in meta:
        raise CheckpointError(f"{run_dir / 'model.safetensors'} has no model config in its metadata")
    try:
        model = VAE(ModelConfig(**meta["model_config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / 'model.safetensors'} has an invalid model config ({e}); "
                              f"was it written by another version of iwae?") from e
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir / 'model.safetensors'} does not fit its model config: {e}") from e
    return model.to(device).eval()


def model_sha256(run_dir: str | os.PathLike) -> str:
    """SHA-256 of a run directory's model.safetensors: which trained model a continued run starts from."""
    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _init_from(model: VAE, source: Path, sha256: str | None) -> None:
    """Copies the trained weights of run directory ``source`` into ``model``; the architectures must
    match, and the file must be the one whose digest is ``sha256`` (when given)."""
    if sha256 is not None and model_sha256(source) != sha256:
        raise ValueError(f"init_from {source}: its model.safetensors is not the model this run was planned "
                         f"from (SHA-256 differs); was it trained again?")
    tensors, meta = load_tensors(source / "model.safetensors")
    if meta.get("model_config") != model.config.to_dict():
        raise ValueError(f"init_from {source}: its model ({meta.get('model_config')}) is not this run's "
                         f"({model.config.to_dict()})")
    model.load_state_dict(tensors)


def _save_model(run_dir: Path, model: VAE, epoch: int) -> None:
    save_tensors(
        run_dir / "model.safetensors",
        model.state_dict(),
        {"model_config": model.config.to_dict(), "epoch": epoch},
    )


def _save_checkpoint(run_dir: Path, model: VAE, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     epoch: int, step: int, metrics: list[dict]) -> None:
    opt_state = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict] = {}
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"epoch": epoch, "step": step, "metrics": metrics, "param_groups": opt_state["param_groups"],
            "optim_scalars": scalars, "model_config": model.config.to_dict()}
    save_tensors(run_dir / "checkpoint.safetensors", tensors, meta)


def _load_checkpoint(run_dir: Path, model: VAE, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     ) -> tuple[int, int, list[dict]]:
    tensors, meta = load_tensors(run_dir / "checkpoint.safetensors")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for idx, extra in meta.get("optim_scalars", {}).items():
            state.setdefault(int(idx), {}).update(extra)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        return int(meta["epoch"]), int(meta["step"]), list(meta["metrics"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / 'checkpoint.safetensors'} is incomplete or does not match the config: {e}") from e


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    if not metrics:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(metrics[0]))
    writer.writeheader()
    writer.writerows(metrics)
    with atomic_write(run_dir / "metrics.csv") as f:
        f.write(buf.getvalue())


# ----------------------------------------------------------------------------- evaluation helper
@torch.no_grad()
def validation_bound(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator, batch_size: int = 100) -> float:
    """Mean L_k over ``x`` (already binarized), in nats."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        total += iwae_bound(model.log_weights(x[i:i + batch_size], k, generator)).sum().item()
    model.train(was_training)
    return total / x.shape[0]


def _make_optimizer(config: TrainConfig, model: VAE, device: torch.device) -> torch.optim.Optimizer:
    # fused Adam updates all tensors in one kernel: about +45% steps/s at batch 20, k = 1 on CPU
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                            eps=config.adam_eps, fused=fused)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------- the loop
def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          splits: data_module.Splits | None = None) -> Path:
    """Trains a model as ``config`` says and returns its run directory ``config.out``.

    Args:
        config: the run's settings.
        resume: continue the run in ``config.out`` from its last checkpoint.
        overwrite: replace an existing run directory instead of refusing.
        progress: show a progress bar.
        splits: data already loaded (else ``load_dataset(config.dataset, config.data_dir)``).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    tune_allocator()
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")

    run_dir = Path(config.out)
    if resume:
        if not (run_dir / "checkpoint.safetensors").is_file():
            raise CheckpointError(f"cannot resume: {run_dir} holds no checkpoint.safetensors")
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"run directory {run_dir} exists and is not empty; choose another --out, "
                              f"--resume it, or pass --overwrite")

    # data first: a data error must not leave an empty run directory or delete an old run
    splits = splits or data_module.load_dataset(config.dataset, config.data_dir)
    x_train = splits.first("train", config.train_subset, "train_subset")  # refuses more than there are
    x_train, x_valid = x_train.to(device), splits.valid.to(device)
    n_train = x_train.shape[0]

    if not resume and run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # model, optimiser, randomness (one generator drives shuffling, binarization and sampling)
    torch.manual_seed(config.seed)
    model = build_model(config, x_train.shape[1]).to(device)
    model.init_output_bias(splits.train.mean(0) if config.train_subset is None else x_train.mean(0))
    model.init_prior(x_train)  # VampPrior: pseudo-inputs from training images; others: nothing
    if config.init_from and not resume:
        _init_from(model, Path(config.init_from), config.init_sha256)
    optimizer = _make_optimizer(config, model, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    spec = config.spec
    valid_k = config.valid_k or config.k

    start_epoch, step, metrics = 0, 0, []
    if resume:
        start_epoch, step, metrics = _load_checkpoint(run_dir, model, optimizer, generator)
    else:
        with atomic_write(run_dir / "config.yaml") as f:
            yaml.safe_dump(config.to_dict(), f, sort_keys=False)
        _save_model(run_dir, model, 0)

    from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only needed here

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1 if resume else None)
    total_epochs = config.total_epochs
    run_start = time.perf_counter() - (metrics[-1]["wall_time_s"] if metrics else 0.0)
    try:
        from tqdm.auto import tqdm

        for epoch in range(start_epoch, total_epochs):
            stage, lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            warmup_weight = kl_weight(config, epoch)
            t0 = time.perf_counter()
            order = torch.randperm(n_train, generator=generator, device=device)
            bound_sum = torch.zeros((), device=device)
            bar = tqdm(range(0, n_train, config.batch_size), desc=f"epoch {epoch + 1}/{total_epochs}",
                       disable=None if progress else True,  # None: off when stderr is not a terminal
                       leave=False, file=sys.stderr, unit="batch")
            for i in bar:
                x = x_train[order[i: i + config.batch_size]]
                if splits.dynamic:
                    x = data_module.binarize(x, generator)
                optimizer.zero_grad(set_to_none=True)
                bound = accumulate_gradients(model, x, spec, generator, warmup_weight)
                optimizer.step()
                bound_sum += bound.sum()
                step += 1
                if progress and step % 50 == 0:
                    bar.set_postfix(bound=f"{bound_sum.item() / min(i + config.batch_size, n_train):.2f}")
            bar.close()
            train_bound = bound_sum.item() / n_train
            if not math.isfinite(train_bound):
                raise FloatingPointError(f"the training bound became {train_bound} in epoch {epoch + 1}; "
                                         f"try a smaller learning rate")
            epoch_time = time.perf_counter() - t0
            valid_bound = validation_bound(model, x_valid, valid_k, generator)
            row = {
                "epoch": epoch + 1, "stage": stage, "lr": lr, "step": step,
                "train_bound": train_bound, f"valid_L{valid_k}": valid_bound,
                "epoch_time_s": epoch_time, "examples_per_s": n_train / epoch_time,
                "wall_time_s": time.perf_counter() - run_start,
            }
            metrics.append(row)
            for key in ("train_bound", f"valid_L{valid_k}", "examples_per_s", "lr"):
                writer.add_scalar(key, row[key], epoch + 1)
            writer.flush()
            _save_model(run_dir, model, epoch + 1)
            _save_checkpoint(run_dir, model, optimizer, generator, epoch + 1, step, metrics)
            _write_metrics(run_dir, metrics)
            if progress:
                eta = (time.perf_counter() - run_start) / (epoch + 1) * (total_epochs - epoch - 1)
                print(f"epoch {epoch + 1}/{total_epochs}  lr {lr:.2e}  train {spec.label} {train_bound:.3f}  "
                      f"valid L_{valid_k} {valid_bound:.3f}  {row['examples_per_s']:.0f} ex/s  "
                      f"ETA {_duration(eta)}", file=sys.stderr)
    finally:
        writer.close()
    return run_dir


# ----------------------------------------------------------------------------- train, or resume what is there
def run_identity(config: TrainConfig) -> dict:
    """The settings that decide a run's result: its config without where it runs or how long (``NOT_IDENTITY``).

    Two configs with the same identity describe the same run, so one may resume the other.
    """
    return {k: v for k, v in config.to_dict().items() if k not in NOT_IDENTITY}


def trained_epochs(run_dir: str | os.PathLike) -> int:
    """Epochs the checkpoint of ``run_dir`` has trained (CheckpointError if it has none or it is unreadable)."""
    _, meta = load_tensors(Path(run_dir) / "checkpoint.safetensors")
    return int(meta.get("epoch", 0))


def training_seconds(run_dir: str | os.PathLike) -> float:
    """Wall time of all the run's epochs, across resumptions, from its metrics.csv (0 without one)."""
    try:
        with open(Path(run_dir) / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["wall_time_s"]) if rows else 0.0
    except (OSError, KeyError, ValueError):
        return 0.0


def train_or_resume(config: TrainConfig, *, splits: data_module.Splits | None = None, progress: bool = True) -> str:
    """Trains ``config.out``, resuming its checkpoint when one of the same run is there.

    Returns what was done: ``trained`` (new directory), ``resumed``, ``trained before`` (nothing left
    to train), or ``restarted`` (a directory
    without a readable checkpoint is replaced). A checkpoint of another run (other
    :func:`run_identity`) or of more epochs than asked for raises ValueError and is left alone.
    """
    run_dir = Path(config.out)
    if (run_dir / "checkpoint.safetensors").is_file():
        try:
            old = TrainConfig.from_yaml(run_dir / "config.yaml")
        except (CheckpointError, ValueError, TypeError):
            old = config  # unreadable config: the checkpoint check below decides
        if run_identity(old) != run_identity(config):
            diff = sorted(k for k, v in run_identity(config).items() if run_identity(old).get(k) != v)
            raise ValueError(f"{run_dir} was trained with other settings ({', '.join(diff)}); "
                             f"use another --out for a different protocol")
        try:
            done = trained_epochs(run_dir)
        except CheckpointError:
            done = None  # unreadable: start again below
        if done is not None:
            if done > config.total_epochs:
                raise ValueError(f"{run_dir} has trained {done} epochs, more than the {config.total_epochs} "
                                 f"asked for; use another --out")
            with atomic_write(run_dir / "config.yaml") as f:  # the run's config records the new epochs
                yaml.safe_dump(config.to_dict(), f, sort_keys=False)
            if done == config.total_epochs:
                return "trained before"
            train(config, resume=True, progress=progress, splits=splits)
            return "resumed"
    existed = run_dir.exists()
    train(config, overwrite=True, progress=progress, splits=splits)
    return "restarted" if existed else "trained"
