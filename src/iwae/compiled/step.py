"""The whole training step as one compiled program: forward, the estimator's surrogates, backward, Adam.

    step = CompiledStep(model, optimizer, spec, batch_size=20)
    for x in minibatches:                       # x already binarized, as iwae.train draws it
        bound, finite = step(x, generator)      # (B,) bounds and a 0-dim bool: did the step apply?
        if not finite: stop                     # the parameters did not take that step

does what ``optimizer.zero_grad(); accumulate_gradients(model, x, spec, generator); optimizer.step()``
does (iwae.train's eager step, with its non-finite check), in one program per (model, objective,
estimator, precision, batch size):

1. The step's random numbers, eps of every stochastic layer, are drawn *eagerly* from the run's
   generator, one ``torch.randn`` per layer in the eager step's order and shapes, so the random
   stream is the eager one: a run may switch between the eager and the compiled step at a resume.
2. The eager step, written functionally, is traced with ``make_fx`` (``torch.fx``) into one graph of
   ATen operations (:mod:`iwae.compiled.trace`): the forward pass, every estimator's surrogates, their
   backward passes, the non-finite check and Adam's update; the numbers are those of the eager step to
   float rounding (tested).
   One difference under bf16-mixed: eager autocast casts a weight to bfloat16 once per step and
   reuses the copy (its weight cache), so the gradients of a weight used more than once (the encoder:
   on x, in the stop-params view, on a VampPrior's pseudo-inputs) are summed in bfloat16 before the
   cast back; tracing runs without that cache, so each use's gradient is cast to float32 first and
   the sum is float32. The two differ by one bfloat16 rounding (2^-9, relative); with the cache off,
   eager and compiled agree to float32 rounding (tested).
3. The graph is compiled by inductor (:mod:`iwae.compiled.program`): one C++ program of fused loops
   around MKL's matrix products, called without Dynamo's guards (Triton kernels on CUDA, replayed as
   one CUDA graph: a B = 20 step is a few hundred small kernels, whose launches a graph replaces by
   one). It updates the parameters and Adam's ``exp_avg``, ``exp_avg_sq`` and ``step`` in place, in
   the optimizer's own state tensors, so a checkpoint of the optimizer is what an eager run writes.

Inputs that change during a run are tensors, so no value recompiles: the learning rate (read from
the optimizer's param group at every call; its bias corrections computed on the host from the step
count on the CPU, in the program from Adam's step tensor on CUDA, where a copy from the host would
wait for the GPU), the KL warm-up weight, and the minibatch. The last, smaller minibatch of an epoch is padded
to the batch size with copies of its first row and zero eps and masked out of the surrogates, the
bound and the non-finite check: one program per run, not two (a second static program costs a
second compile, 35-43 s cold on a loaded 2-core CPU; a graph with symbolic sizes ran 1% slower).

A nan or inf in the bound or in any gradient element makes the program skip the update of every
parameter and of Adam's state (``torch.where`` on the flag) and return ``finite`` False: iwae.train's
guarantee that the parameters do not take that step.

Compile time (tens of seconds on a 2-core CPU) is paid once per program and process; inductor's
on-disk caches (:func:`iwae.compiled.program.cache_dir`) serve the same program to a later process,
e.g. a resume, in a few seconds. ``benchmarks/compiled_step.py`` measures it.

Where the step cannot be compiled (another optimizer than Adam as iwae.train builds it, a model whose
forward cannot be traced or that does not take its draws from the caller), :func:`compiled_step` says
why on one line and returns None: train eager.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import nn

from ..estimators import ObjectiveSpec
from . import program as program_module
from .trace import NotCompilable, check_compilable, draw_shapes, input_dim, trace_step

__all__ = ["CompiledStep", "NotCompilable", "compiled_step", "check_compilable"]


class CompiledStep:
    """iwae.train's training step for ``model`` on ``spec`` as one compiled program (module docstring).

    Args:
        model: an iwae VAE (any prior, likelihood, network, number of stochastic layers, user modules
            that ``make_fx`` can trace).
        optimizer: its ``torch.optim.Adam`` over ``model.parameters()`` (as iwae.train builds it). Its
            state is created, as torch's Adam creates it, for the parameters that get a gradient, and
            updated in place; its param group's ``lr`` is read at every call.
        spec: the objective and estimator.
        batch_size: B; a call takes up to B rows (fewer are padded and masked).
        precision: ``32`` or ``bf16-mixed`` (:mod:`iwae.precision`).
        kl_warmup: whether calls pass a KL warm-up weight (vae only): the weight is then an input and
            the surrogates always take the weighted form, also at weight 1 (the same value to rounding).
        compile: False runs the traced graph without inductor (the same operations, eager): for tests
            of the graph itself, and where no C++ compiler is at hand.
        cuda_graph: replay the program as a CUDA graph (default: on CUDA). Its inputs are then copied
            into the graph's own tensors at every call.

    Raises:
        NotCompilable: see :func:`check_compilable`, and a model that ``make_fx`` cannot trace.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        spec: ObjectiveSpec,
        batch_size: int,
        *,
        precision: str = "32",
        kl_warmup: bool = False,
        compile: bool = True,
        cuda_graph: bool | None = None,
    ):
        check_compilable(model, optimizer, spec, precision)
        if kl_warmup and spec.name != "vae":
            raise NotCompilable(f"KL warm-up is defined for the vae objective only, not {spec.name}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.optimizer, self.spec = model, optimizer, spec
        self.batch_size, self.precision, self.kl_warmup = batch_size, precision, kl_warmup
        group = optimizer.param_groups[0]
        self._betas = (float(group["betas"][0]), float(group["betas"][1]))
        self._params = list(model.parameters())
        self.device = self._params[0].device
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        # the bias corrections of Adam: on the host on the CPU; in the program elsewhere (a host-to-device
        # copy at every step would wait for the GPU)
        self._device_bias = _bias_on_device(self.device)
        self._draws = draw_shapes(model, precision)  # [(D_l, dtype)] of eps, layer by layer
        self._state_ref: tuple | None = None
        self._step_count = 0
        self._lr: float | None = None
        self._replay: Callable[[], tuple] | None = None
        self._full_mask = True
        self._build(compile, float(group["eps"]))

    # ----------------------------------------------------------------- the program
    def _input_tensors(self) -> list[torch.Tensor]:
        """The program's inputs but the per-step ones: parameters, buffers, Adam's state (placeholders of
        the right shape for parameters without state yet), the host scalars and the KL weight."""
        params = [p.detach() for p in self._params]  # aliases: the program updates the parameters in place
        buffers = [b.detach() for _, b in self.model.named_buffers()]
        states = [self.optimizer.state.get(p) or {} for p in self._params]
        exp_avg = [s.get("exp_avg", torch.zeros_like(p)) for s, p in zip(states, params)]
        exp_avg_sq = [s.get("exp_avg_sq", torch.zeros_like(p)) for s, p in zip(states, params)]
        steps = [s.get("step", torch.zeros((), dtype=torch.float32, device=self.device)) for s in states]
        return params + buffers + exp_avg + exp_avg_sq + steps + [self._hyper, self._kl]

    def _build(self, compile: bool, adam_eps: float) -> None:
        b, k = self.batch_size, self.spec.k
        # float64: the step size and sqrt(1 - beta2^t) (CPU), or the learning rate (CUDA)
        self._hyper = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._hyper_view = self._hyper.numpy() if self.device.type == "cpu" else None
        self._kl = torch.ones((), dtype=torch.float32, device=self.device)
        self._mask = torch.ones(b, dtype=self._params[0].dtype, device=self.device)
        self._eps = [torch.zeros((k, b, d), dtype=dtype, device=self.device) for d, dtype in self._draws]
        # x in the parameters' dtype, as the eager step needs it (float32; float64 for a float64 model)
        self._x_dtype = self._params[0].dtype
        self._x = torch.zeros((b, input_dim(self.model)), dtype=self._x_dtype, device=self.device)
        example = self._input_tensors() + [self._mask, self._x] + self._eps
        self.graph, self._trained = trace_step(
            self.model,
            self.spec,
            self.precision,
            layers=len(self._draws),
            betas=self._betas,
            adam_eps=adam_eps,
            kl_warmup=self.kl_warmup,
            device_bias=self._device_bias,
            example=example,
        )
        self._program = program_module.compile_graph(self.graph, example, self.device) if compile else self.graph

    # ----------------------------------------------------------------- a step
    def _sync_state(self) -> None:
        """(Re)reads the optimizer's state: creates Adam's state, as torch's Adam would at its first step,
        for the parameters that get a gradient, and takes the step count from it."""
        for j in self._trained:
            p = self._params[j]
            state = self.optimizer.state[p]
            if not state:
                # torch.optim.Adam._init_group's state, for a fused or capturable Adam and otherwise
                fused = self.optimizer.param_groups[0].get("fused") or self.optimizer.param_groups[0].get("capturable")
                state["step"] = (
                    torch.zeros((), dtype=torch.float32, device=p.device)
                    if fused
                    else torch.tensor(0.0, dtype=torch.float32)
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        counts = {int(self.optimizer.state[self._params[j]]["step"]) for j in self._trained}
        if len(counts) > 1:
            raise NotCompilable(f"the parameters have taken different numbers of Adam steps ({sorted(counts)})")
        self._step_count = counts.pop() if counts else 0
        # on CPU the count is read from Adam's state at every step (1 us): right also after eager steps
        self._step_tensor = (
            self.optimizer.state[self._params[self._trained[0]]]["step"]
            if self._trained and self.device.type == "cpu"
            else None
        )
        self._args = self._input_tensors()
        self._state_ref = (self.optimizer.state, self._params[0].data_ptr())
        self._replay = None  # a CUDA graph holds the old tensors: captured again
        self._lr = None

    def _inputs(self, x: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The per-step inputs (mask, x, eps of each layer), drawing eps from ``generator`` as the eager step
        does (one ``torch.randn`` per layer, in order, of shape ``(K, b, D_l)``). A short minibatch is padded
        with its first row and zero eps, masked out. For a CUDA graph they are written into its tensors."""
        b, full, k = x.shape[0], self.batch_size, self.spec.k
        if b == full:
            for buffer in self._eps:
                torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype, device=buffer.device, out=buffer)
            eps = self._eps
            if self.cuda_graph:
                self._x.copy_(x)
                if not self._full_mask:
                    self._mask.fill_(1.0)
                    self._full_mask = True
                return [self._mask, self._x, *eps]
            return [self._mask, x.to(self._x_dtype), *eps]
        drawn = [
            torch.randn((k, b, d), generator=generator, dtype=dtype, device=self.device) for d, dtype in self._draws
        ]
        if self.cuda_graph:
            for buffer, e in zip(self._eps, drawn):
                buffer[:, :b].copy_(e)
                buffer[:, b:].zero_()
            self._x[:b].copy_(x)
            self._x[b:].copy_(x[:1].expand(full - b, -1))
            self._mask.zero_()
            self._mask[:b] = 1.0
            self._full_mask = False
            return [self._mask, self._x, *self._eps]
        eps = [torch.cat([e, e.new_zeros((k, full - b, e.shape[2]))], 1) for e in drawn]
        mask = torch.zeros_like(self._mask)
        mask[:b] = 1.0
        return [mask, torch.cat([x, x[:1].expand(full - b, -1)]).to(self._x_dtype), *eps]

    def _set_hyper(self) -> int:
        """Writes this step's learning rate (and on the CPU its bias corrections) into the program's input;
        returns the step's t."""
        t = (self._step_count if self._step_tensor is None else int(self._step_tensor)) + 1
        lr = self.optimizer.param_groups[0]["lr"]
        if self._device_bias:  # the program computes the bias corrections from Adam's step tensor
            if lr != self._lr:
                self._hyper[0].fill_(lr)  # a kernel with the value as its argument: no wait for the device
                self._lr = lr
            return t
        beta1, beta2 = self._betas
        # float64, as torch's fused Adam; written through a numpy view in ~0.1 us
        self._hyper_view[0], self._hyper_view[1] = lr / (1 - beta1**t), math.sqrt(1 - beta2**t)
        return t

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on the minibatch ``x`` ``(b, D)``, b <= B, drawing eps from ``generator``.

        Returns:
            The bound of each example ``(b,)`` (detached, as ``accumulate_gradients`` returns it) and a
            0-dim bool tensor on the model's device: True where the step was taken, False where the bound
            or a gradient was nan or inf and nothing changed (read it when convenient: on CUDA, reading
            it waits for the GPU).
        """
        b = x.shape[0]
        if not 0 < b <= self.batch_size:
            raise ValueError(f"the compiled step takes 1 to {self.batch_size} examples, got {b}")
        if self.kl_warmup:
            self._kl.fill_(kl_weight)
        elif kl_weight != 1.0:
            raise ValueError("this compiled step was built without KL warm-up (kl_warmup=False); kl_weight must be 1")
        state, ptr = self._state_ref or (None, None)
        if state is not self.optimizer.state or ptr != self._params[0].data_ptr():
            self._sync_state()  # first call, or the optimizer's state was loaded / the parameters moved
        inputs = self._inputs(x, generator)
        t = self._set_hyper()
        with torch.no_grad():
            if self.cuda_graph:
                if self._replay is None:
                    self._replay = program_module.capture_cuda_graph(self._program, self._args + inputs)
                bound, finite = (out.clone() for out in self._replay())  # the graph's outputs are reused
            else:
                bound, finite = self._program(*self._args, *inputs)
        # on CUDA the host counts (reading the state would wait for the GPU); a skipped, non-finite step
        # is counted too, but it stops the run anyway
        self._step_count = t
        return bound[:b], finite


def _bias_on_device(device: torch.device) -> bool:
    """Whether Adam's bias corrections are computed in the program (from Adam's step tensor) rather than
    on the host: everywhere but on the CPU, where the host reads the step count for free."""
    return device.type != "cpu"


def compiled_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    spec: ObjectiveSpec,
    batch_size: int,
    *,
    precision: str = "32",
    kl_warmup: bool = False,
    note: Callable[[str], None] | None = None,
) -> CompiledStep | None:
    """A :class:`CompiledStep`, or None (train eager) with a one-line note where it does not apply.

    ``note`` receives that line (default: printed to stderr)."""
    try:
        return CompiledStep(model, optimizer, spec, batch_size, precision=precision, kl_warmup=kl_warmup)
    except NotCompilable as e:
        (note or (lambda line: print(line, file=sys.stderr)))(
            f"iwae: the compiled step does not apply ({e}); training with the eager step"
        )
        return None
