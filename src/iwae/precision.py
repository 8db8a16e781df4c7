"""Training precision: ``32`` (float32 throughout) or ``bf16-mixed`` (the names PyTorch Lightning uses).

    with training_autocast("bf16-mixed", device):
        bound = accumulate_gradients(model, x, spec, generator)

``bf16-mixed`` runs the training step's forward pass under ``torch.autocast(device_type,
dtype=torch.bfloat16)``: the matrix products (``nn.Linear``, ``matmul``) take bfloat16 inputs and
accumulate in float32, their outputs are rounded to bfloat16. Everything else stays float32:

- the parameters, their gradients and Adam's state (autocast casts a bfloat16 copy of each weight
  once per step; the gradient flows back to the float32 parameter);
- each layer's distribution parameters: an encoder layer's ``(loc, log_scale)`` and the decoder's
  logits are cast to float32 as they leave the network (``networks.GaussianMLP.loc_log_scale``,
  the output layer's bias is added in float32), so eps, z, log q, log p(x | z), the log-weights, the
  logsumexp and the likelihood's sum over 784 pixels are float32. The bound a step reports is then
  an exact float32 bound of a model whose loc, log sigma and logits carry one bfloat16 rounding
  (relative 2^-9 = 0.2%), not a bfloat16 sum;
- tanh is computed in float32 from the bfloat16 product and rounded once
  (``networks._TanhFunction``): in bfloat16, 2 sigmoid(2h) - 1 would lose the small activations
  (sigmoid near 1/2 has a ulp of 2^-8), and the float32 form costs the same (185 us for a
  1000 x 200 block on one core, against 264 us for bfloat16 ``torch.tanh``).

Which layers stay float32, measured on this CPU (AVX512-BF16, 1 thread, machine shared): a (1000 x
200) x (200 x 784) product, the decoder's output layer at B = 20, k = 50 and the largest of a step,
runs at 404 GFLOP/s in bfloat16 against 86 in float32. Against float32 gradients of the same step
(same samples), the bf16-mixed gradient of all parameters has cosine 0.99993 and relative error
1.2% with every layer in bfloat16, and 0.99993 and 1.2% with the output layer kept in float32,
which halved the step's speed (21.9 -> 11.3 steps/s at B = 20, k = 50). So no layer is kept in
float32: only each layer's output distribution parameters are. The test NLL of bf16-mixed training
against float32 training (13 epochs of Table 1's short protocol) is in the README (Speed).

Evaluation is always float32 (L_k, AIS, active units are measurements): only the training step is
wrapped, never the validation bound or :func:`iwae.evaluate.evaluate`.
"""

from __future__ import annotations

import contextlib

import torch

from .choices import PRECISIONS

__all__ = ["PRECISIONS", "training_autocast", "autocast_dtype"]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype of the matrix products under ``precision``: None for ``32``, bfloat16 for ``bf16-mixed``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return torch.bfloat16 if precision == "bf16-mixed" else None


def training_autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context a training step runs in: ``torch.autocast(device.type, torch.bfloat16)`` for
    ``bf16-mixed``, a no-op for ``32``."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
