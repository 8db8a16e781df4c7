"""Run directories: the one module that reads and writes the files of a run.

    from iwae.rundir import open_run
    run = open_run("runs/iwae-k5")        # config, model (last completed epoch), weights, splits (lazy)

A run directory holds

    config.yaml               the resolved training config (re-runnable with ``iwae train --config``);
                              the model's architecture is derived from it (TrainConfig.model_config)
                              and stored nowhere else
    model.safetensors         the model's weights; metadata: epoch, input_dim (the data's pixels),
                              model_digest (SHA-256 of the architecture, to check that the weights and
                              config.yaml belong together), run_identity (the run they belong to),
                              data (the data files trained on, with their SHA-256) and, beside it,
                              tensors_sha256 (SHA-256 of the tensors, checked by every read)
    checkpoint.safetensors    everything needed to resume: weights, optimizer state, RNG state
                              and the generator's device type, epoch, step and the metrics so
                              far, in one file; in the middle of an epoch (``checkpoint_every``)
                              also the epoch's shuffled order, position and partial bound
    metrics.csv               one row per epoch
    tb/                       TensorBoard event files
    eval_k{K}[_n{N}]_seed{S}.json / .npy   an evaluation (:func:`eval_name`) and its per-image L_k
    surgery_n{N}.json         ELBO surgery (``iwae analyze``)
    result.json               written last by ``iwae reproduce``: the run is finished (:func:`run_status`)
    error.json                the run failed (``iwae reproduce``)
    samples.png, qew.png ...  figures the CLI draws into the run by default (written by the figure code)
    .iwae-created             which command created the folder (:mod:`.folder`)
    checkpoint.staged.safetensors   a batched member's checkpoint before its group commits it (:mod:`.group`)

A folder of seeds (``iwae train --seeds 0,1,2 --out D``) holds one run per seed, ``D/seed0``, ``D/seed1``,
..., and no config.yaml of its own (:mod:`.seeds`).

Runs written before the model config was stored once (their safetensors metadata holds a
``model_config``) are read as before: that metadata is their architecture.

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``), flushed and
renamed over the old one (:mod:`iwae.checkpoint`), so a killed run never leaves a half-written file
under its real name; a write that fails raises :class:`~iwae.checkpoint.WriteError` and leaves the
old file as it was.

The package: :mod:`.layout` (file names, the folder as a whole), :mod:`.folder` (who made a folder,
creating and replacing it), :mod:`.lock` (one writer per folder), :mod:`.names` (run names),
:mod:`.identity` (config.yaml and which settings make the same run), :mod:`.weights`
(model.safetensors), :mod:`.integrity` (digests of weights, data and evaluations: what identifies them
and who checks them when; read it first), :mod:`.checkpoints` (checkpoint.safetensors), :mod:`.group` (the group commit
of batched members), :mod:`.seeds` (a folder of seeds), :mod:`.metrics` (metrics.csv, tb/),
:mod:`.evaluations`, :mod:`.results`
(what ``iwae reproduce`` writes) and :mod:`.run` (:func:`open_run`). Code outside reads and writes
run folders through the names this package exports.

Two rules live here and nowhere else: which settings make two configs the same run
(:func:`run_identity`, :func:`run_key`), and when a run is finished (:func:`run_status`).

What identifies what, and who checks it when (the one place this is written down; the docs'
"Reliability" page says the same in prose):

- A run is its folder and the identity settings of its config.yaml (:func:`run_identity`). A folder
  has one writer at a time (:mod:`.lock`: every command that writes into it holds an OS lock on it;
  a second is refused naming the holder); it is created and replaced whole, never emptied where a
  reader can look, and only by whom may (:mod:`.folder`: its ``.iwae-created`` mark says which
  command made it; the engine replaces only what a reproduction made, ``--overwrite`` only run
  folders, nobody a symbolic link). A run an experiment file names is a plain name inside the
  output folder (:mod:`.names`), checked when the file is read, before ``--dry-run`` prints.
  Checked: by ``train --resume`` and ``iwae reproduce`` (same settings, :func:`check_same_run`),
  by every writer (the lock), by the engine's plan (the folder is its own) before anything runs.
- Runs trained as one batched model commit each checkpoint together (:mod:`.group`), and each
  checkpoint says how its run was trained (``trained_as``: alone, or batched with which runs),
  which result.json and the report repeat.
- Its weights, its data and an evaluation: the digests of weights' tensor bytes, of the data files and
  of the test tensor an evaluation measured, the run's identity in every weights file, and who verifies
  them when (load, evaluate, resume, AIS, figures, compare: :func:`comparable`) are written down in
  :mod:`.integrity`, the other half of this rule.
"""

from .checkpoints import (
    EpochState,
    check_same_device_type,
    checkpoint_metrics,
    checkpoint_path,
    finished_training,
    generator_device,
    has_checkpoint,
    only_start_files,
    read_checkpoint,
    read_early_stopping,
    restore,
    save_checkpoint,
    trained_as,
    trained_epochs,
)
from .evaluations import (
    eval_name,
    evaluation_files,
    list_evaluations,
    read_bounds,
    read_evaluation,
    write_evaluation,
    write_figure_record,
    write_surgery,
)
from .folder import MARKER, REPRODUCE, check_replaceable, created_by
from .group import STAGED, close_group, commit_group, group_record, settle
from .identity import (
    ADDED_DEFAULTS,
    NOT_IDENTITY,
    changed_settings,
    check_moved_data,
    check_run_data_present,
    check_same_run,
    read_config,
    read_config_values,
    run_identity,
    run_key,
    write_config,
)
from .integrity import (
    AIS_SETTINGS,
    changed_files,
    check_belongs,
    check_data,
    check_finite,
    comparable,
    data_record,
    data_text,
    identity_record,
    images_record,
    images_sha256,
    images_text,
)
from .layout import (
    CHECKPOINT,
    CONFIG,
    ERROR_FILE,
    METRICS,
    MODEL,
    RESULT_FILE,
    RUN_FILES,
    START_FILES,
    TENSORBOARD,
    clear_start_files,
    delete,
    is_empty,
    model_bytes,
    prepare,
    read_files,
    remove_run_temporaries,
    run_folder,
    write_files,
)
from .lock import LOCK_FILE, FolderBusy, locks, writing
from .metrics import (
    has_metrics,
    metrics_text,
    read_metrics,
    sync_outputs,
    tensorboard_writer,
    training_seconds,
    write_metrics,
)
from .names import RUN_NAME_RULE, check_run_name, is_run_name
from .results import (
    RunStatus,
    clear_error,
    dependency_digest,
    finished_result,
    read_error,
    run_status,
    write_error,
    write_result,
)
from .run import Run, open_run
from .seeds import SEED_FOLDER, check_run_or_seeds, is_seed_group, member_seed, seed_members
from .weights import (
    check_weights,
    init_from,
    load_model,
    load_trained,
    model_config_of,
    model_digest,
    model_epoch,
    model_sha256,
    save_model,
    training_data,
)

__all__ = [
    "Run",
    "open_run",
    # layout
    "CONFIG",
    "MODEL",
    "CHECKPOINT",
    "METRICS",
    "TENSORBOARD",
    "RESULT_FILE",
    "ERROR_FILE",
    "START_FILES",
    "RUN_FILES",
    "is_empty",
    "run_folder",
    "clear_start_files",
    "prepare",
    "delete",
    "remove_run_temporaries",
    "read_files",
    "write_files",
    "model_bytes",
    # one writer at a time, and who made a folder
    "LOCK_FILE",
    "MARKER",
    "REPRODUCE",
    "FolderBusy",
    "writing",
    "locks",
    "created_by",
    "check_replaceable",
    # run names
    "RUN_NAME_RULE",
    "check_run_name",
    "is_run_name",
    # identity and config.yaml
    "NOT_IDENTITY",
    "ADDED_DEFAULTS",
    "run_identity",
    "run_key",
    "changed_settings",
    "read_config",
    "read_config_values",
    "write_config",
    "check_same_run",
    "check_moved_data",
    "check_run_data_present",
    # model.safetensors
    "model_digest",
    "save_model",
    "model_config_of",
    "load_model",
    "model_epoch",
    "model_sha256",
    "training_data",
    "check_weights",
    "load_trained",
    "init_from",
    # integrity: identities and digests, who checks what
    "images_sha256",
    "images_record",
    "images_text",
    "data_text",
    "data_record",
    "identity_record",
    "check_belongs",
    "check_finite",
    "changed_files",
    "check_data",
    "comparable",
    "AIS_SETTINGS",
    # checkpoint.safetensors
    "EpochState",
    "save_checkpoint",
    "read_checkpoint",
    "has_checkpoint",
    "checkpoint_metrics",
    "generator_device",
    "check_same_device_type",
    "restore",
    "trained_epochs",
    "finished_training",
    "read_early_stopping",
    "checkpoint_path",
    "trained_as",
    # the group commit of batched members
    "STAGED",
    "group_record",
    "commit_group",
    "settle",
    "close_group",
    "only_start_files",
    # metrics.csv, tb/
    "metrics_text",
    "write_metrics",
    "read_metrics",
    "has_metrics",
    "training_seconds",
    "tensorboard_writer",
    "sync_outputs",
    # evaluations
    "eval_name",
    "evaluation_files",
    "list_evaluations",
    "write_evaluation",
    "read_evaluation",
    "read_bounds",
    "write_surgery",
    "write_figure_record",
    # a folder of seeds (iwae train --seeds)
    "SEED_FOLDER",
    "seed_members",
    "is_seed_group",
    "member_seed",
    "check_run_or_seeds",
    # results of iwae reproduce
    "write_result",
    "write_error",
    "read_error",
    "clear_error",
    "RunStatus",
    "dependency_digest",
    "run_status",
    "finished_result",
]
