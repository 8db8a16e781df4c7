"""The loop of runs trained as one batched model: each member set up, stepped, checkpointed and
validated as its single run would be, and stopped alone when its loss or gradient turns nan or inf."""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import data as data_module
from .. import rundir
from ..errors import ConfigError
from ..runtime import choose_threads, synchronize, tune_allocator
from ..train import loop as train_module
from ..train.announce import estimate_line, plan_line
from ..train.checks import check_run
from ..train.resume import resume_point
from .group import MemberResult, batch_by_default, check_group, stackable
from .stacked import StackedVAE, _gather_state, _layout, _member_state, _slice_state, member_tensor, stack_parameters
from .step import _accumulate, _nonfinite_members

__all__ = ["train_members"]


# ----------------------------------------------------------------------------- one member
@dataclass
class _Member:
    config: object
    run_dir: Path
    saved: tuple | None = None  # (tensors, meta) of the checkpoint to resume
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None
    torch_rng: torch.Tensor | None = None  # the global RNG state a single run would checkpoint
    metrics: list | None = None
    partial: object = None
    wall_time: float = 0.0
    start: tuple = (0, 0)  # (epoch, step) it starts from
    checkpointed: tuple | None = None
    writer: object = None
    order: torch.Tensor | None = None
    bound_sum: torch.Tensor | None = None
    run_start: float = 0.0
    result: MemberResult | None = None
    data: dict | None = None  # the record of its data files, written with its weights (check_run)


def _check_folder(config, resume: bool, overwrite: bool) -> _Member:
    """What :func:`iwae.train.train` checks of a run folder before it touches it (its
    :func:`~iwae.train.resume_point`, with the same errors)."""
    member = _Member(config, Path(config.out))
    member.saved, finished = resume_point(config, resume=resume, overwrite=overwrite)
    if finished:
        member.result = MemberResult(config, member.run_dir, "trained before")
    return member


def _nonfinite_message(epoch: int, bad_step: int, checkpointed: tuple | None) -> str:
    # the words of iwae.train.train's FloatingPointError, so that a member fails as its single run would
    last = (
        f"checkpoint.safetensors (epoch {checkpointed[0]}, step {checkpointed[1]}) is intact"
        if checkpointed
        else "no checkpoint was written yet"
    )
    return (
        f"training stopped: the loss or a gradient became nan or inf in epoch {epoch + 1} at step {bad_step}, "
        f"and the parameters did not take that step; {last}; try a smaller --lr in a new run"
    )


# ----------------------------------------------------------------------------- the loop
@rundir.locks("iwae train", lambda a: [c.out for c in a["configs"]])  # every member's folder, before any is read
def train_members(
    configs: list,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    splits: data_module.Splits | None = None,
    batch: bool | None = None,
    accept_changed_data: bool = False,
) -> list[MemberResult]:
    """Trains the runs ``configs`` together as one batched model, or one after another; each member's
    folder ends as :func:`iwae.train.train` would leave it for that config alone (batched: weights equal
    within float rounding; one after another: bit for bit).

    Args:
        configs: the members' settings; they may differ only in :data:`MAY_DIFFER` (:func:`check_group`).
        resume: continue each member from its last checkpoint, as ``train(..., resume=True)``; the
            members must stand at the same epoch and step (a member already done is left as it is).
        overwrite: replace existing run directories.
        progress: a progress bar and a line per member and epoch.
        splits: the data already loaded (else ``config.load_data()``: its binarization).
        batch: stack the members into one batched model (True), or train them one after another (False);
            None: resumed members go on as their checkpoints say they were trained (batched together, or
            not), so that a resumed group ends bit for bit as the uninterrupted one; new ones as
            :func:`~iwae.members.batch_by_default` decides for the configs' device.
        accept_changed_data: resume on data files that changed since the checkpoints, deliberately.

    Returns:
        One :class:`MemberResult` per config, in order. A member whose loss or gradient turns nan or
        inf is ``failed`` with the FloatingPointError its single run would raise; the others go on.

    Raises:
        ConfigError: members that may not share a model; ValueError, CheckpointError,
            FileExistsError: as :func:`iwae.train.train` for a member's folder, before any is touched.
    """
    configs = list(configs)
    check_group(configs)
    if batch is None:
        batch = _trained_together(configs) if resume else None
    if batch is None:
        batch = batch_by_default(configs[0].device)
    why = stackable(configs[0])
    if not batch or why is not None or len(configs) == 1:
        if progress and why is not None and batch:
            print(f"members: cannot batch runs with {why}; training them one after another", file=sys.stderr)
        for c in configs:  # every folder checked before any is touched, as for a batched group
            _check_folder(c, resume, overwrite)
        return [
            _train_alone(train_module, c, resume, overwrite, progress, splits, accept_changed_data) for c in configs
        ]

    members = [_check_folder(c, resume, overwrite) for c in configs]  # every folder checked before any is touched
    active = [m for m in members if m.result is None]
    points = {
        (m.saved[1].get("epoch"), m.saved[1].get("step"), m.saved[1].get("epoch_position")) if m.saved else (0, 0, None)
        for m in active
    }
    if len(points) > 1:
        where = ", ".join(f"{m.run_dir} at step {m.saved[1].get('step') if m.saved else 0}" for m in active)
        raise ValueError(
            f"members to resume together must stand at the same step ({where}); resume them one at a "
            f"time with iwae train --resume RUN_DIR"
        )
    rundir.close_group(rundir.group_record([m.run_dir for m in members]))  # what a kill left of the last commit
    for m in members:
        if m.result is not None:  # trained all its epochs: as train() does for it, nothing is drawn
            rundir.remove_run_temporaries(m.run_dir)
            rundir.sync_outputs(m.run_dir, m.config, list(m.saved[1].get("metrics", [])))
            if progress:
                print(f"nothing to do: {m.run_dir} has trained all {m.config.total_epochs} epochs", file=sys.stderr)
    config = configs[0]
    device = train_module._check_device(config)
    choose_threads(config.threads)  # None: torch's default, at most the free cores
    tune_allocator()
    splits = splits or config.load_data()
    x_train = splits.first("train", config.train_subset, "train_subset")
    x_train, x_valid = x_train.to(device), splits.valid.to(device)
    n_train = x_train.shape[0]
    for m in active:
        if m.config.init_from and m.saved is None and not (Path(m.config.init_from) / "model.safetensors").is_file():
            raise ConfigError(
                f"init_from {m.config.init_from} holds no model.safetensors (a trained run)", ["init_from"]
            )
        if m.config.init_from and m.saved is None:
            rundir.check_weights(m.config.init_from)  # damaged or foreign weights refused before any folder
    for i, m in enumerate(active):  # every member checked (the memory of all of them) before any folder is touched
        m.data = check_run(
            m.config,
            splits,
            x_train,
            x_valid,
            device,
            members=len(active),
            saved=m.saved,
            accept_changed_data=accept_changed_data,
            progress=progress and i == 0,
        )

    # each member set up exactly as train() sets up its run: the global seed, the model, its
    # output bias and prior, the optimiser, the generator; restored from its checkpoint if resumed
    for m in active:
        rundir.prepare(m.run_dir, replace=m.saved is None and overwrite and not resume, clear_start=m.saved is None)
        torch.manual_seed(m.config.seed)
        m.model = train_module.build_model(m.config, x_train.shape[1]).to(device)
        m.model.init_output_bias(splits.train.mean(0) if m.config.train_subset is None else x_train.mean(0))
        m.model.init_prior(x_train)
        if m.config.init_from and m.saved is None:
            rundir.init_from(m.model, m.config.init_from, m.config.init_sha256)
        m.optimizer = train_module._make_optimizer(m.config, m.model, device)
        m.generator = torch.Generator(device=device)
        m.generator.manual_seed(m.config.seed)
        m.metrics = []
        if m.saved is not None:
            epoch, step, m.metrics, m.partial, m.wall_time = rundir.restore(
                m.run_dir / rundir.CHECKPOINT, *m.saved, m.model, m.optimizer, m.generator, n_train
            )
            m.start = (epoch, step)
            rundir.sync_outputs(m.run_dir, m.config, m.metrics)
            m.checkpointed = m.start
        else:
            rundir.write_config(m.run_dir, m.config)
            rundir.save_model(m.run_dir, m.model, 0, data=m.data)
        m.torch_rng = torch.get_rng_state()
    if not active:
        return [m.result for m in members]
    assert len({(m.start, m.partial.position if m.partial else None) for m in active}) == 1, "members apart"
    if _layout(active[0].model) is None:
        if progress:
            print("members: this model cannot be stacked; training the members one after another", file=sys.stderr)
        for m in active:
            m.result = _train_alone(
                train_module, m.config, resume or m.saved is not None, True, progress, splits, accept_changed_data
            )
        return [m.result for m in members]
    try:
        _loop(train_module, active, x_train, x_valid, splits.dynamic, device, progress)
    finally:
        for m in active:
            if m.writer is not None:
                m.writer.close()
    return [m.result for m in members]


def _trained_together(configs) -> bool | None:
    """Whether the members' checkpoints say their last stretch was trained as one batched model with each
    other (True), each alone (False), or None: no checkpoint says (new runs, an older iwae)."""
    last = [(rundir.trained_as(c.out) or [None])[-1] for c in configs]
    if any(stretch is None for stretch in last):
        return None
    names = {Path(c.out).name for c in configs}
    return all(stretch.get("batched_with") and set(stretch["batched_with"]) <= names for stretch in last)


def _train_alone(
    train_module, config, resume: bool, overwrite: bool, progress: bool, splits, accept_changed_data: bool = False
) -> MemberResult:
    try:
        run_dir = train_module.train(
            config,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            splits=splits,
            accept_changed_data=accept_changed_data,
        )
    except FloatingPointError as e:
        return MemberResult(config, Path(config.out), "failed", e)
    return MemberResult(config, run_dir, "trained")


class _Group:
    """The stacked model and its Adam, rebuilt without the members that stop."""

    def __init__(self, train_module, members: list[_Member], device: torch.device):
        self.train_module, self.device, self.members = train_module, device, members
        template = members[0].model
        models = [m.model for m in members]
        names = [name for name, _ in template.named_parameters()]
        stacked = stack_parameters(models)
        states = {n: _gather_state([m.optimizer for m in members], models, n) for n in names}
        self._build(template, stacked, states)
        # D_l of each stochastic layer: half the width of its encoder layer's (loc, log sigma) head
        self.latent_dims = [
            self.model.param(f"{names[-1]}.bias").shape[1] // 2 for names in self.model.layout["encoder"]
        ]

    def _build(self, template: nn.Module, stacked: dict, states: dict) -> None:
        self.model = StackedVAE(template, stacked)
        self.optimizer = self.train_module._make_optimizer(self.members[0].config, self.model, self.device)
        for name in self.model.names:
            if states.get(name) is not None:
                self.optimizer.state[self.model.param(name)] = states[name]

    def keep(self, index: list[int]) -> None:
        """Drops every member but ``index`` (their weights, gradients and Adam state come along)."""
        old = self.model
        stacked = {n: old.param(n).detach()[index].clone() for n in old.names}
        grads = {n: old.param(n).grad[index].clone() for n in old.names if old.param(n).grad is not None}
        states = {
            n: (
                _slice_state(self.optimizer.state[old.param(n)], index)
                if self.optimizer.state.get(old.param(n))
                else None
            )
            for n in old.names
        }
        lr = self.optimizer.param_groups[0]["lr"]
        self.members = [self.members[i] for i in index]
        self._build(self.members[0].model, stacked, states)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for n, g in grads.items():
            self.model.param(n).grad = g

    def step(
        self,
        x_train: torch.Tensor,
        i: int,
        batch_size: int,
        k: int,
        dims: list[int],
        dynamic: bool,
        kinds: dict[tuple, list[int]],
    ) -> tuple[torch.Tensor, list[int]]:
        """One training step's draws and gradients for the batch at position ``i`` of each member's
        epoch order: returns the members' bounds ``(M, B)`` and the members whose bound or gradient is
        not finite (the caller drops them before ``optimizer.step()``)."""
        xs, eps = [], [[] for _ in dims]
        for m in self.members:  # each member's draws in its single run's order
            x = x_train[m.order[i : i + batch_size]]
            if dynamic:
                x = data_module.binarize(x, m.generator)
            xs.append(x)
            for layer, d in enumerate(dims):
                eps[layer].append(
                    torch.randn((k, x.shape[0], d), generator=m.generator, device=x.device, dtype=x.dtype)
                )
        self.optimizer.zero_grad(set_to_none=True)
        bound = _accumulate(self.model, torch.stack(xs), [torch.stack(e) for e in eps], kinds)  # (M, B)
        return bound, _nonfinite_members(bound, self.model)

    def sync(self, lr: float) -> None:
        """Copies each member's slice of the weights and of Adam's state into its own model and optimizer
        (what its folder's files are written from)."""
        for i, m in enumerate(self.members):
            with torch.no_grad():
                for name, p in m.model.named_parameters():
                    p.copy_(member_tensor(self.model.param(name), name, i))
                    state = self.optimizer.state.get(self.model.param(name))
                    if state:
                        m.optimizer.state[p] = _member_state(state, name, i)
            for group in m.optimizer.param_groups:
                group["lr"] = lr


def _loop(train_module, members: list[_Member], x_train, x_valid, dynamic: bool, device, progress: bool) -> None:
    config = members[0].config
    batch_size, k, total_epochs = config.batch_size, config.k, config.total_epochs
    n_train = x_train.shape[0]
    group = _Group(train_module, members, device)
    (start_epoch, step), partial = members[0].start, members[0].partial
    dims = group.latent_dims
    for m in members:
        m.writer = rundir.tensorboard_writer(m.run_dir, purge_step=start_epoch + 1 if m.saved is not None else None)
        m.run_start = time.perf_counter() - m.wall_time
    if progress or config.epochs is None:  # the whole paper schedule is said even with progress off
        print(plan_line(config, n_train, start_epoch, members=len(members)), file=sys.stderr)

    def fail(m: _Member, epoch: int, bad_step: int) -> None:
        m.result = MemberResult(
            m.config, m.run_dir, "failed", FloatingPointError(_nonfinite_message(epoch, bad_step, m.checkpointed))
        )
        if progress:
            print(f"{m.run_dir}: {m.result.error}", file=sys.stderr)

    record = rundir.group_record([m.run_dir for m in members])

    def commit(entries: list[tuple[_Member, int, rundir.EpochState | None, float]]) -> None:
        """The checkpoints of ``entries`` (member, completed epochs, place in the epoch, wall time) as one
        group commit (:mod:`iwae.rundir.group`): every member's staged, then the record, then renamed;
        a kill anywhere leaves all members at this step or all at the last."""
        commit_id = f"{step}-{uuid.uuid4().hex}"
        names = [m.run_dir.name for m, *_ in entries]
        for m, epoch_done, partial_state, wall_time in entries:
            torch.set_rng_state(m.torch_rng)  # the global RNG state its single run would record
            rundir.save_checkpoint(
                m.run_dir,
                m.model,
                m.optimizer,
                m.generator,
                epoch_done,
                step,
                m.metrics,
                partial_state,
                wall_time,
                batched_with=[n for n in names if n != m.run_dir.name],
                commit={"id": commit_id, "record": os.path.relpath(record, m.run_dir)},
                data=m.data,
            )
        rundir.commit_group(record, commit_id, [m.run_dir for m, *_ in entries], entries[0][1], step)
        for m, epoch_done, *_ in entries:
            rundir.settle(m.run_dir)
            m.checkpointed = (epoch_done, step)
        rundir.close_group(record)

    for epoch in range(start_epoch, total_epochs):
        if not group.members:
            break
        stage, lr = train_module.learning_rate(config, epoch)
        for g in group.optimizer.param_groups:
            g["lr"] = lr
        kinds = _kinds(train_module, group.members, epoch)
        if partial is not None:
            first = partial.position
            for m in group.members:
                m.order = m.partial.order
            bound_sums = torch.stack([m.partial.bound_sum.reshape(()) for m in group.members])  # (M,)
            t0 = time.perf_counter() - partial.seconds
            partial = None
        else:
            first = 0
            for m in group.members:
                m.order = torch.randperm(n_train, generator=m.generator, device=device)
            bound_sums = torch.zeros(len(group.members), device=device)  # each member's bound summed so far
            t0 = time.perf_counter()
        bar = tqdm(
            range(first, n_train, batch_size),
            desc=f"epoch {epoch + 1}/{total_epochs} ({len(group.members)} members)",
            disable=None if progress else True,
            leave=False,
            file=sys.stderr,
            unit="batch",
        )
        for i in bar:
            bound, bad = group.step(x_train, i, batch_size, k, dims, dynamic, kinds)
            if bad:
                for j in bad:
                    fail(group.members[j], epoch, step + 1)
                keep = [j for j in range(len(group.members)) if j not in bad]
                if not keep:
                    group.members = []
                    break
                bound, bound_sums = bound[keep], bound_sums[keep]
                group.keep(keep)
                kinds = _kinds(train_module, group.members, epoch)
            group.optimizer.step()
            bound_sums += bound.sum(1)
            step += 1
            position = i + batch_size
            if config.checkpoint_every and step % config.checkpoint_every == 0 and position < n_train:
                group.sync(lr)
                entries = []
                for j, m in enumerate(group.members):
                    m.bound_sum = bound_sums[j].clone()
                    where = rundir.EpochState(m.order, position, m.bound_sum, time.perf_counter() - t0)
                    entries.append((m, epoch, where, time.perf_counter() - m.run_start))
                commit(entries)
        bar.close()
        if not group.members:
            break
        synchronize(device)
        epoch_time = time.perf_counter() - t0
        group.sync(lr)
        entries = []
        for j, m in enumerate(group.members):
            m.bound_sum = bound_sums[j]
            valid_k = m.config.valid_k or m.config.k
            valid_bound = train_module.validation_bound(m.model, x_valid, valid_k, m.generator)
            row = {
                "epoch": epoch + 1,
                "stage": stage,
                "lr": lr,
                "step": step,
                "train_bound": m.bound_sum.item() / n_train,
                f"valid_L{valid_k}": valid_bound,
                "epoch_time_s": epoch_time,
                "examples_per_s": n_train / epoch_time,
                "wall_time_s": time.perf_counter() - m.run_start,
            }
            m.metrics.append(row)
            for key in ("train_bound", f"valid_L{valid_k}", "examples_per_s", "lr"):
                m.writer.add_scalar(key, row[key], epoch + 1)
            m.writer.flush()
            # the order of train(): the model, the checkpoint that commits the epoch (here all members'
            # at once), then metrics.csv
            rundir.save_model(m.run_dir, m.model, epoch + 1, data=m.data)
            entries.append((m, epoch + 1, None, row["wall_time_s"]))
        commit(entries)
        for m, *_ in entries:
            rundir.write_metrics(m.run_dir, m.metrics)
            if progress:
                row, valid_k = m.metrics[-1], m.config.valid_k or m.config.k
                print(
                    f"{m.run_dir}: epoch {epoch + 1}/{total_epochs}  lr {lr:.2e}  train {m.config.spec.label} "
                    f"{row['train_bound']:.3f}  valid L_{valid_k} {row[f'valid_L{valid_k}']:.3f}",
                    file=sys.stderr,
                )
        if progress and epoch == start_epoch:
            print(estimate_line(epoch_time, total_epochs - epoch - 1), file=sys.stderr)
        if progress:
            print(
                f"epoch {epoch + 1}/{total_epochs}: {len(group.members)} members, "
                f"{n_train * len(group.members) / epoch_time:.0f} member-examples/s",
                file=sys.stderr,
            )
    for m in group.members:
        m.result = MemberResult(m.config, m.run_dir, "trained")


def _kinds(train_module, members: list[_Member], epoch: int) -> dict[tuple, list[int]]:
    """The members by (objective spec, KL weight of ``epoch``): one gradient_terms call per kind."""
    kinds: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        kinds.setdefault((m.config.spec, train_module.kl_weight(m.config, epoch)), []).append(i)
    return kinds
