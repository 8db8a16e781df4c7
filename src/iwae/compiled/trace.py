"""The training step as a function of tensors, traced into one graph (:mod:`iwae.compiled.step` compiles it).

The eager step, written functionally: ``torch.func.functional_call`` runs the model's own
``log_weight_parts`` and :func:`iwae.estimators.gradient_terms` on parameters that are graph inputs,
``torch.autograd.grad`` records the backward pass of each surrogate into the same graph (the decoder's
term for the decoder's parameters, the encoder's for the encoder's, as :func:`iwae.estimators.backward`),
the non-finite check follows, and Adam's update (:func:`adam_update`) writes the parameters and Adam's
state in place, skipped as a whole where the check fails. ``make_fx`` turns it into a graph of ATen
operations; the model's custom autograd functions (the fused Bernoulli log-likelihood, tanh by sigmoid,
the sliced mixture density) are traced through their own backward methods.

:func:`check_compilable` says which models and optimizers this applies to.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from ..estimators import ESTIMATOR_TABLE, ObjectiveSpec, gradient_terms
from ..precision import PRECISIONS, training_autocast

__all__ = ["NotCompilable", "check_compilable", "trace_step", "adam_update", "draw_shapes", "input_dim"]


class NotCompilable(ValueError):
    """The whole-step compiled program does not apply to this model, optimizer or setting (the message says why)."""


def check_compilable(
    model: nn.Module, optimizer: torch.optim.Optimizer, spec: ObjectiveSpec, precision: str = "32"
) -> None:
    """Raises :class:`NotCompilable` where the compiled step cannot run this step; returns None where it can.

    The step it compiles is iwae.train's: Adam (not AMSGrad, no weight decay, not maximising) over all
    the model's parameters in one group, with ``fused`` or ``foreach`` as it likes, on an iwae VAE whose
    ``log_weight_parts`` takes its draws as ``eps``.
    """
    if precision not in PRECISIONS:
        raise NotCompilable(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if type(optimizer) is not torch.optim.Adam:
        raise NotCompilable(f"the compiled step runs Adam, not {type(optimizer).__name__}")
    if len(optimizer.param_groups) != 1:
        raise NotCompilable(f"the compiled step runs one Adam parameter group, not {len(optimizer.param_groups)}")
    group = optimizer.param_groups[0]
    for name, plain in (
        ("amsgrad", False),
        ("weight_decay", 0),
        ("maximize", False),
        ("differentiable", False),
        ("capturable", False),
    ):
        if group.get(name, plain) != plain:
            raise NotCompilable(f"the compiled step runs plain Adam, not Adam with {name}={group[name]!r}")
    if isinstance(group["lr"], torch.Tensor) or any(isinstance(b, torch.Tensor) for b in group["betas"]):
        raise NotCompilable("the compiled step takes a float learning rate and betas, not tensors")
    params = list(model.parameters())
    if [id(p) for p in group["params"]] != [id(p) for p in params]:
        raise NotCompilable("the optimizer must hold exactly the model's parameters, in the model's order")
    if any(p.device != params[0].device for p in params):
        raise NotCompilable("the model's parameters are on more than one device")
    if not all(hasattr(model, name) for name in ("log_weight_parts", "encoder_parameters", "decoder_parameters")):
        raise NotCompilable(
            f"{type(model).__name__} is not an iwae VAE (log_weight_parts, encoder and decoder parameters)"
        )
    if "eps" not in inspect.signature(model.log_weight_parts).parameters or not isinstance(
        getattr(model, "encoder", None), nn.ModuleList
    ):
        raise NotCompilable(
            f"{type(model).__name__}.log_weight_parts does not take its draws (eps) from the caller, "
            f"as the compiled step gives them"
        )


class _Forward(nn.Module):
    """The forward half of the eager step, as a module whose parameters functional_call can swap:
    ``(x, eps, kl_weight) -> (bound (B,), [(surrogate (B,), ids of its parameters or None), ...])``."""

    def __init__(self, model: nn.Module, spec: ObjectiveSpec, precision: str):
        super().__init__()
        self.model, self.spec, self.precision = model, spec, precision
        self.prior_direct = ESTIMATOR_TABLE[spec.estimator].needs_prior_direct(spec)

    def forward(self, x: torch.Tensor, eps: list[torch.Tensor], kl_weight: torch.Tensor | float):
        with training_autocast(self.precision, x.device):
            parts = self.model.log_weight_parts(x, self.spec.k, prior_direct=self.prior_direct, eps=eps)
            result = gradient_terms(self.model, parts, self.spec, kl_weight)
        terms = [(surrogate, None if params is None else {id(p) for p in params}) for surrogate, params in result.terms]
        return result.bound, terms


def adam_update(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    step_size: torch.Tensor,
    bias2_sqrt: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam update, as torch's fused Adam computes it (``torch._fused_adam_``):

        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2,
        param = param - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),   step_size = lr / (1 - beta1^t).

    ``step_size`` and ``sqrt(1 - beta2^t)`` are 0-dim tensors computed once per step (on the CPU on the
    host, in float64 as torch's kernel does): inside the fused loop they would be recomputed (``pow``)
    for every vector of elements, which measured 4x slower than the whole rest of Adam's update."""
    m = exp_avg * beta1 + grad * (1 - beta1)
    v = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
    return param - step_size * m / (v.sqrt() / bias2_sqrt + eps), m, v


def trace_step(
    model: nn.Module,
    spec: ObjectiveSpec,
    precision: str,
    *,
    layers: int,
    betas: tuple[float, float],
    adam_eps: float,
    kl_warmup: bool,
    device_bias: bool,
    example: list[torch.Tensor],
) -> tuple[torch.fx.GraphModule, list[int]]:
    """The step traced into one graph, and the indices of the parameters that get a gradient.

    The graph's inputs, in order: the model's parameters, its buffers, Adam's ``exp_avg``, ``exp_avg_sq``
    and ``step`` of each parameter, ``hyper`` (float64 ``(2,)``: the step size and sqrt(1 - beta2^t)
    computed on the host, or, with ``device_bias``, the learning rate in ``hyper[0]`` and the bias
    corrections computed in the graph from Adam's ``step``), the KL weight (0-dim), the mask of real rows
    ``(B,)``, the minibatch ``(B, D)`` and eps of each of the ``layers`` stochastic layers ``(K, B, D_l)``.
    It returns the bound ``(B,)`` and the 0-dim bool "the step was finite and taken"; it updates the
    parameters and Adam's state in place.

    Raises:
        NotCompilable: ``make_fx`` cannot trace the model's step (data-dependent control flow, an
            operation it does not know).
    """
    names = [name for name, _ in model.named_parameters()]
    buffer_names = [name for name, _ in model.named_buffers()]
    n, nb = len(names), len(buffer_names)
    forward = _Forward(model, spec, precision)
    beta1, beta2 = betas
    trained: list[int] = []

    def step(*inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params, rest = list(inputs[:n]), inputs[n:]
        buffers, rest = rest[:nb], rest[nb:]
        exp_avg, exp_avg_sq, steps, rest = rest[:n], rest[n : 2 * n], rest[2 * n : 3 * n], rest[3 * n :]
        hyper, kl, mask, x, eps = rest[0], rest[1], rest[2], rest[3], list(rest[4 : 4 + layers])
        leaves = [p.detach().requires_grad_() for p in params]
        ids = [id(leaf) for leaf in leaves]  # functional_call puts these in the model's place
        tensors = {f"model.{name}": t for name, t in zip(names, leaves)}
        tensors.update({f"model.{name}": t for name, t in zip(buffer_names, buffers)})
        with torch.enable_grad():
            bound, terms = torch.func.functional_call(forward, tensors, (x, eps, kl if kl_warmup else 1.0))
            grads: list[torch.Tensor | None] = [None] * n
            for i, (surrogate, which) in enumerate(terms):  # as estimators.backward: each term its parameters
                if which is not None and not which <= set(ids):
                    raise NotCompilable("a surrogate trains tensors that are not the model's parameters")
                index = [j for j in range(n) if which is None or ids[j] in which]
                # gradients summed over the minibatch; the padding rows of a short batch weigh 0
                loss = -(surrogate * mask).sum()
                found = torch.autograd.grad(
                    loss, [leaves[j] for j in index], allow_unused=True, retain_graph=i < len(terms) - 1
                )
                for j, g in zip(index, found):
                    if g is not None:
                        grads[j] = g if grads[j] is None else grads[j] + g
        bound = bound.detach()
        flags = [torch.isfinite(torch.where(mask > 0, bound, 0.0)).all()]
        flags += [torch.isfinite(g).all() for g in grads if g is not None]
        finite = torch.stack(flags).all()
        first = next((j for j, g in enumerate(grads) if g is not None), None)
        if device_bias and first is not None:  # t from Adam's own step count, in float64 as on the host
            t = steps[first].to(torch.float64) + 1
            step_size, bias2_sqrt = hyper[0] / (1 - torch.pow(beta1, t)), torch.sqrt(1 - torch.pow(beta2, t))
        else:
            step_size, bias2_sqrt = hyper[0], hyper[1]  # float64, rounded to each parameter's dtype below
        for j, g in enumerate(grads):
            if g is None:  # as torch's Adam: a parameter without a gradient is left alone
                continue
            trained.append(j)
            dtype = params[j].dtype
            new = adam_update(
                params[j],
                exp_avg[j],
                exp_avg_sq[j],
                g.to(dtype),
                step_size.to(dtype),
                bias2_sqrt.to(dtype),
                beta1,
                beta2,
                adam_eps,
            )
            for target, value in zip((params[j], exp_avg[j], exp_avg_sq[j]), new):
                target.copy_(torch.where(finite, value, target))
            steps[j].copy_(steps[j] + finite.to(steps[j].dtype))
        return bound, finite

    try:
        graph = make_fx(step, tracing_mode="fake")(*example)
    except NotCompilable:
        raise
    except Exception as e:  # a model make_fx cannot trace: data-dependent control flow, an untraceable op
        raise NotCompilable(
            f"the step of this model cannot be traced ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    return graph, trained


def draw_shapes(model: nn.Module, precision: str) -> list[tuple[int, torch.dtype]]:
    """``(D_l, dtype)`` of eps of every stochastic layer, as ``VAE.sample_posterior`` draws them (the
    dtype of q's loc, float32 also under bf16 autocast): from one no-grad pass of the encoder on one row."""
    first = next(model.parameters())
    dims = []
    with torch.no_grad(), training_autocast(precision, first.device):
        h = torch.zeros((1, input_dim(model)), device=first.device, dtype=first.dtype)
        for layer in model.encoder:
            h, _ = layer.loc_log_scale(h)
            dims.append((h.shape[-1], h.dtype))
    return dims


def input_dim(model: nn.Module) -> int:
    """D, the number of pixels the model takes (``model.config.input_dim``)."""
    config = getattr(model, "config", None)
    if not isinstance(getattr(config, "input_dim", None), int):
        raise NotCompilable(f"{type(model).__name__} has no config.input_dim")
    return config.input_dim
