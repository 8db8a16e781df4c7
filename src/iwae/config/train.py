"""TrainConfig: everything a training run depends on, as plain data; saved as ``config.yaml`` in its run directory.

    from iwae.config import TrainConfig
    config = TrainConfig(objective="iwae", k=5, epochs=10, out="runs/iwae-k5")

Each field carries its help text and choices (``_setting``), from which ``iwae train`` builds one flag per
field, so this module loads no PyTorch: ``iwae train --help`` reads it as it is. The checks of a config
(its types, ranges, the objective and the model it names) run when it is made; ``config.yaml`` files are
read by :meth:`TrainConfig.from_yaml` (a run folder's by :func:`iwae.rundir.read_config`).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..choices import (
    BINARIZATIONS,
    COMPILE_MODES,
    ESTIMATORS,
    LIKELIHOODS,
    MODELS,
    NETWORKS,
    OBJECTIVES,
    OPTIMIZERS,
    PRECISIONS,
    PRIORS,
    SCHEDULES,
    resolve_binarize,
)
from ..errors import CheckpointError, ConfigError
from .model import ModelConfig
from .objective import ObjectiveSpec

if TYPE_CHECKING:
    from ..data import Splits

__all__ = ["TrainConfig", "configure", "RESUMABLE", "SCHEDULES", "PAPER_STAGES", "CONFIG_FILE", "MAX_SIZE", "MAX_SEED"]

CONFIG_FILE = "config.yaml"  # a run directory's config (iwae.rundir.CONFIG)
# the largest count or size a setting may take (k, batch size, layer widths, components, epochs, ...): no tensor
# dimension of a run comes near it, and a product of two of them still fits torch's int64 sizes
MAX_SIZE = 2**31 - 1
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed
PAPER_STAGES = 8  # i = 0..7
DEVICE = re.compile(r"cpu|cuda(:\d{1,4})?")


def _setting(
    default: object,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    resumable: bool = False,
    folder: bool = False,
    flag_default: object = MISSING,
) -> object:
    """A TrainConfig field with what ``iwae train`` shows for it, so that adding a field adds its flag:
    ``help`` (the flag's help text), ``choices`` (the library's list of the valid values), ``shown``
    (the text of ``[default: ...]`` where the default is None), ``resumable`` (may change when a run
    is resumed), ``folder`` (a directory path) and ``flag_default`` (where the flag's default is not
    the field's: none, for a setting the command line requires)."""
    metadata = {"help": help, "choices": choices, "shown": shown, "resumable": resumable, "folder": folder}
    if flag_default is not MISSING:
        metadata["flag_default"] = flag_default
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run directory.

    Each field carries its help text and choices (see ``_setting``): ``iwae train`` builds one flag
    per field from them (``train_subset`` -> ``--train-subset``).
    """

    # data
    dataset: str = _setting(
        "mnist",
        "mnist, binarized-mnist, fashion-mnist, omniglot; the VampPrior paper's mnist-vamp (50,000/10,000/10,000), "
        "caltech101, frey (28x20 grey levels); or npz:PATH (your arrays: train, test, optional valid; the path is "
        "stored absolute).",
    )
    data_dir: str | None = _setting(
        None, "Folder with the data files (else $IWAE_DATA_DIR, the cache, download).", folder=True
    )
    train_subset: int | None = _setting(None, "Train on the first N training examples only.")
    binarize: str = _setting(
        "auto",
        "Grey-level data: dynamic (a fresh binarization at every use), static (once, "
        "seeded), none (grey levels k/255); auto: dynamic for the bernoulli likelihood, none "
        "for the others.",
        choices=("auto",) + BINARIZATIONS,
    )
    dequantize: bool = _setting(
        False,
        "8-bit data with binarize none: y = (255 x + u) / 256, u ~ U[0, 1), afresh for "
        "training, seeded for valid/test (continuous likelihoods only).",
    )
    # model (latent_dims / hidden_dims None: Burda et al.'s for ``layers``, Tomczak & Welling's for hvae)
    model: str = _setting(
        "vae",
        "vae: a chain of stochastic layers (Burda et al.); hvae: the two-level VAE of Tomczak & Welling, "
        "q(z2|x) q(z1|x,z2) and p(z2) p(z1|z2) p(x|z1,z2) (2 layers; default latent dims 40,40 (z1,z2), hidden "
        "dims 300,300/300,300: the coupled networks' branch and join widths / q(z2|x)'s blocks).",
        choices=MODELS,
    )
    layers: int = _setting(1, "Stochastic layers, 1 or 2 for Burda et al.'s nets (2 for hvae).")
    latent_dims: list[int] | None = _setting(None, "Units per stochastic layer, bottom-up, e.g. 50, 100,50 or 2.")
    hidden_dims: list[list[int]] | None = _setting(
        None, "Tanh widths per stochastic layer, layers separated by '/', e.g. 200,200/100,100."
    )
    network: str = _setting(
        "mlp",
        "The encoder and decoder: Burda et al.'s tanh MLPs, Tomczak & Welling's GatedDense "
        "(hidden dims: block widths, default 300,300) or a small conv net (hidden dims: channels, "
        "default 32,64); gated and conv have one stochastic layer.",
        choices=NETWORKS,
    )
    prior: str = _setting(
        "normal", "p(z) of the top layer: N(0, I), a learnable mixture of Gaussians, or the VampPrior.", choices=PRIORS
    )
    # components: None means 1 for the normal prior, as config.yaml files have recorded
    components: int | None = _setting(None, "Mixture components (mog) or pseudo-inputs (vamp); required for them.")
    learn_mixture_weights: bool = _setting(False, "mog: learn the mixture weights (else uniform).")
    likelihood: str = _setting(
        "bernoulli",
        "p(x|z): Bernoulli pixels (binary data), a Gaussian density, or the "
        "discretized logistic over 256 grey levels (8-bit data).",
        choices=LIKELIHOODS,
    )
    sigma: float | None = _setting(
        None, "gaussian only: fixed standard deviation of p(x|z).", shown="learned, a bounded log-variance head"
    )
    # objective
    objective: str = _setting("iwae", "Training objective.", choices=OBJECTIVES)
    k: int = _setting(5, "Total samples per example (for miwae/piwae: M groups of k/M).")
    m: int = _setting(1, "Groups M, for miwae and piwae.")
    beta: float = _setting(0.5, "ELBO weight in [0, 1], for ciwae.")
    estimator: str = _setting(
        "reparam",
        "The encoder's gradient estimator (the decoder always gets its objective's gradient).",
        choices=ESTIMATORS,
    )
    kl_warmup: int = _setting(0, "vae only: epochs over which the weight of log p(z) - log q(z|x) rises from 0 to 1.")
    # optimisation
    batch_size: int = _setting(20, "Examples per minibatch (gradients are summed over it).")
    schedule: str = _setting(
        "paper", "paper: 3^i epochs at lr*10^(-i/7), i=0..7; constant: --lr throughout.", choices=SCHEDULES
    )
    epochs: int | None = _setting(
        None, "Run the first N epochs of the schedule.", shown="all 3,280 of the paper schedule", resumable=True
    )
    lr: float = _setting(1e-3, "Initial or constant learning rate.")
    optimizer: str = _setting(
        "adam",
        "adam; or adam-normgrad: Adam on each parameter's gradient divided by its L2 norm (+1e-7), the "
        "optimiser of Tomczak & Welling's code (AdamNormGrad).",
        choices=OPTIMIZERS,
    )
    beta1: float = _setting(0.9, "Adam beta1 (Burda et al.'s code: 0.99).")
    beta2: float = _setting(0.999, "Adam beta2.")
    adam_eps: float = _setting(1e-4, "Adam epsilon (Burda et al.: 1e-4).")
    # validation
    valid_k: int | None = _setting(None, "Samples for the per-epoch validation L_k.", shown="--k")
    early_stopping: int | None = _setting(
        None,
        "Patience P: stop when the validation L_k has not improved for more than P epochs in a row (not "
        "counted during KL warm-up), and keep the best epoch's model (Tomczak & Welling: 50).",
        shown="off",
    )
    # run
    init_from: str | None = _setting(
        None, "Start from this run directory's trained model (a fresh optimiser).", folder=True
    )
    init_sha256: str | None = _setting(
        None, "With --init-from: refuse it unless its model.safetensors has this SHA-256."
    )
    seed: int = _setting(0, "Seed of the initialisation, the data order and the samples.")
    device: str = _setting(
        "cpu",
        "cpu, cuda or cuda:N. A run resumes on the device type it was trained on (CPU "
        "and CUDA draw other random numbers).",
        resumable=True,
    )
    threads: int | None = _setting(
        None, "CPU threads for torch.", shown="torch's, at most the free cores", resumable=True
    )  # None: torch's default, capped at the cores the load average leaves free (iwae.runtime.choose_threads)
    # speed (iwae.precision, iwae.compiled): precision changes the numbers, so it is part of the run's identity
    precision: str = _setting(
        "32",
        "Training precision: 32 (float32), or bf16-mixed (matrix products in bfloat16 "
        "under autocast, the rest float32). Evaluation is float32 either way.",
        choices=PRECISIONS,
    )
    compile: str = _setting(
        "none",
        "How the training step runs: none (eager); step (the whole step, forward, backward and "
        "Adam, as one compiled program, a CUDA graph on CUDA; compiled once, then cached); default or "
        "reduce-overhead (torch.compile of the forward pass only).",
        choices=COMPILE_MODES,
        resumable=True,
    )
    checkpoint_every: int | None = _setting(
        None,
        "Also checkpoint every N optimizer steps, so that a killed run loses at most N steps.",
        shown="at the end of each epoch",
        resumable=True,
    )
    # the Python API's default; the command line requires --out (or --resume)
    out: str = _setting("runs/run", "Run directory to create.", folder=True, flag_default=None)

    def __post_init__(self) -> None:
        try:
            _check_types(self)
            self.dataset = resolve_user_path(self.dataset)
            self._validate()
        except ValueError as e:  # a ConfigError names the settings its message is about: the CLI prints their flags
            raise ConfigError.naming(e, [f.name for f in fields(self)]) from None

    def _validate(self) -> None:
        _check_ranges(self)
        for name in ("beta", "lr", "beta1", "beta2", "adam_eps"):  # inf and nan pass the range checks below
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.spec  # noqa: B018 - the property validates objective, k, m, beta, estimator
        if self.components is None:  # a default of one would make mog a plain Gaussian and vamp one pseudo-input
            if self.prior in ("mog", "vamp"):
                raise ValueError(
                    f"prior {self.prior} needs components: how many Gaussians (mog) or pseudo-inputs "
                    f"(vamp) it has; Tomczak & Welling use 500"
                )
            self.components = 1
        if self.components < 1:  # checked here too, so that the message names this setting, not the model's
            raise ValueError(f"components must be >= 1, got {self.components}")
        if self.learn_mixture_weights and self.prior != "mog":
            raise ValueError(f"learn_mixture_weights applies to the mog prior only, not {self.prior}; use prior mog")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if self.sigma is not None and self.likelihood != "gaussian":
            raise ValueError(
                f"sigma is the fixed standard deviation of the gaussian likelihood, not of "
                f"{self.likelihood}; use likelihood gaussian, or no sigma"
            )
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {self.sigma}")
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
        if self.early_stopping is not None and self.early_stopping < 0:
            raise ValueError(f"early_stopping (a patience) must be >= 0, got {self.early_stopping}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 optimizer steps, got {self.checkpoint_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be >= 0 epochs, got {self.kl_warmup}")
        if self.kl_warmup and self.objective != "vae":
            raise ValueError(
                f"kl_warmup applies to the vae objective (the ELBO) only, not {self.objective}; "
                f"use objective vae or kl_warmup 0"
            )
        if self.model == "hvae" and self.latent_dims is not None and len(self.latent_dims) != 2:
            raise ValueError(
                f"the hvae model has two latent levels, z1 and z2: latent_dims needs 2 entries, got "
                f"{list(self.latent_dims)}"
            )
        if self.model == "hvae" and self.layers != 2:
            raise ValueError(f"the hvae model has two latent levels, z1 and z2: use layers 2, not {self.layers}")
        if self.model == "vae" and self.network != "mlp" and self.layers != 1:
            raise ValueError(
                f"network {self.network} has one stochastic layer, got layers {self.layers}; "
                f"use network mlp for 2 layers (or model hvae)"
            )
        self.binarization  # noqa: B018 - the property validates binarize
        if self.dequantize:
            likelihood = self.likelihood
            if likelihood in ("bernoulli", "logistic256"):
                raise ValueError(
                    f"dequantize applies to continuous likelihoods (gaussian), not to {likelihood}, "
                    f"which models the 8-bit values themselves"
                )
            if self.binarization != "none":
                raise ValueError(f"dequantize applies to grey levels: use binarize none (or auto), not {self.binarize}")
        # conv validates against the data's image shape when the model is built; this validates the sizes
        # (and refuses hvae with conv)
        if self.network != "conv" or self.model == "hvae":
            self.model_config(input_dim=784)

    @property
    def spec(self) -> ObjectiveSpec:
        return ObjectiveSpec(self.objective, self.k, self.m, self.beta, self.estimator)

    @property
    def total_epochs(self) -> int:
        return self.epochs if self.epochs is not None else sum(3**i for i in range(PAPER_STAGES))

    @property
    def binarization(self) -> str:
        """The data's binarization mode: ``binarize``, with ``auto`` resolved by the likelihood
        (:func:`iwae.choices.resolve_binarize`)."""
        return resolve_binarize(self.binarize, self.likelihood)

    def load_data(self, data_dir: str | None = None, **kwargs) -> Splits:
        """This run's dataset as training saw it: ``load_dataset`` with its binarization and dequantisation
        (from ``data_dir``, else the config's)."""
        # deferred: the data loaders load PyTorch, which a config (read by ``iwae train --help``) must not
        from ..data import load_dataset

        return load_dataset(
            self.dataset, data_dir or self.data_dir, binarize=self.binarization, dequantize=self.dequantize, **kwargs
        )

    def model_config(self, input_dim: int, image_shape: tuple[int, ...] | None = None) -> ModelConfig:
        """The network sizes: ``latent_dims`` / ``hidden_dims`` where given, else Burda et al.'s for ``layers``
        (the gated network's default widths are the VampPrior paper's 300, 300; conv's channels 32, 64).
        The hvae model's defaults are the paper's, z1 = z2 = 40 and 300-unit networks, for mlp and gated."""
        if self.model == "hvae":
            sizes = {}
            if self.latent_dims:
                sizes["latent_dims"] = tuple(self.latent_dims)
            if self.hidden_dims:
                sizes["hidden_dims"] = tuple(map(tuple, self.hidden_dims))
            return ModelConfig.hvae(
                input_dim,
                **sizes,
                prior=self.prior,
                prior_components=self.components,
                prior_learn_weights=self.learn_mixture_weights,
                likelihood=self.likelihood,
                sigma=None if self.sigma is None else float(self.sigma),
                network=self.network,
                image_shape=image_shape,
            )
        if self.latent_dims is None or self.hidden_dims is None:
            if self.layers not in (1, 2):
                raise ValueError(
                    f"{self.layers} stochastic layers need explicit latent_dims and hidden_dims "
                    f"(Burda et al. define 1 and 2)"
                )
            burda = ModelConfig.burda(self.layers, input_dim)
        latent = self.latent_dims or burda.latent_dims
        default_hidden = {"gated": ((300, 300),), "conv": ((32, 64),)}.get(self.network)
        hidden = self.hidden_dims or default_hidden or burda.hidden_dims
        if len(latent) != self.layers:
            raise ValueError(f"latent_dims {list(latent)} has {len(latent)} entries for {self.layers} layers")
        extra = {} if self.network == "mlp" else {"network": self.network}
        return ModelConfig(
            input_dim,
            tuple(latent),
            tuple(map(tuple, hidden)),
            self.prior,
            self.components,
            self.learn_mixture_weights,
            likelihood=self.likelihood,
            sigma=None if self.sigma is None else float(self.sigma),
            image_shape=image_shape,
            **extra,
        )

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
        """The config in a YAML file ``path``, or in a run directory's ``config.yaml``.

        Raises:
            CheckpointError: the file is missing, not YAML, not a mapping, or not a valid config.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"config file {path} not found")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(values, dict):
            raise CheckpointError(f"config file {path} must hold a mapping of settings")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config file {path}: {e}") from e


# the settings ``iwae train --resume`` may change: where and how long the run goes on, not what it is

RESUMABLE = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("resumable"))


def configure(overrides: dict, *, base: str | os.PathLike | None = None) -> TrainConfig:
    """The config of a new run: TrainConfig's defaults, or the settings of the config file ``base``,
    with ``overrides`` on top. ``latent_dims`` given without ``layers`` sets ``layers`` to its length
    (also over a file's ``layers``: ``latent_dims=[100, 50]`` means 2 layers); ``model=hvae`` without
    ``latent_dims`` sets it to 2 (z1, z2). ``out``, the run directory, must be given (in ``overrides`` or
    ``base``): a default folder would mix runs."""
    values = TrainConfig.from_yaml(base).to_dict() if base else {}
    values.update(overrides)
    if not values.get("out"):
        raise ConfigError("out is required: the run directory to create", ["out"])
    resized = "latent_dims" in overrides or overrides.get("model") == "hvae"
    if "layers" not in overrides and (resized or values.get("layers") is None):
        hvae = values.get("model") == "hvae"  # two layers, z1 and z2
        values["layers"] = len(values["latent_dims"]) if values.get("latent_dims") else 2 if hvae else 1
    return TrainConfig.from_dict(values)


def resolve_user_path(dataset: str) -> str:
    """``npz:PATH`` with PATH absolute (``~`` expanded, relative to the working folder, symlinks kept),
    so that a run's config.yaml names its data file from anywhere; other names unchanged."""
    path = dataset[len("npz:") :] if dataset.startswith("npz:") else ""
    return f"npz:{os.path.abspath(os.path.expanduser(path))}" if path else dataset


def _matches(value: object, hint: object) -> bool:
    """Whether ``value`` has the type a TrainConfig field declares (``int | None``, ``list[int]``, ...)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is an int to Python, not to a config
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    return True


def _check_ranges(config: TrainConfig) -> None:
    """Refuses an integer setting beyond what a run can hold (MAX_SIZE; a seed beyond 64 bits): such a
    value would reach torch as a size it cannot allocate or an index it overflows."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "seed":
            if not -MAX_SEED - 1 <= value <= MAX_SEED:
                raise ValueError(f"seed must be a 64-bit integer, between {-MAX_SEED - 1} and {MAX_SEED}, got {value}")
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            for v in item if isinstance(item, list) else [item]:
                if isinstance(v, int) and not isinstance(v, bool) and v > MAX_SIZE:
                    raise ValueError(f"{f.name} must be at most {MAX_SIZE}, got {v}")


def _check_types(config: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(config):
        value = getattr(config, f.name)
        if not _matches(value, hints[f.name]):
            hint = getattr(hints[f.name], "__name__", None) if isinstance(hints[f.name], type) else None
            hint = hint or str(hints[f.name]).replace("NoneType", "None")
            extra = ""
            if isinstance(value, str) and "float" in hint:
                extra = " (YAML reads 1e-3 as text: write 1.0e-3)"
            raise ValueError(f"config key {f.name!r} must be {hint}, got {value!r} ({type(value).__name__}){extra}")
