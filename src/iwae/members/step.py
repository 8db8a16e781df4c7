"""One step of runs stacked as one batched model: each member's estimator gradient of its own objective
in the stacked parameters' ``.grad`` (:func:`_accumulate`), and which members' bound or gradient turned
nan or inf (:func:`_nonfinite_members`); :mod:`iwae.members.loop` runs them."""

from __future__ import annotations

import torch

from ..estimators import ESTIMATOR_TABLE, gradient_terms
from ..models.vae import LogWeightParts
from .stacked import StackedVAE

__all__: list[str] = []  # used by iwae.members.loop, not a public API


def _accumulate(
    model: StackedVAE, x: torch.Tensor, eps: list[torch.Tensor], kinds: dict[tuple, list[int]]
) -> torch.Tensor:
    """Fills the stacked parameters' ``.grad`` with each member's estimator gradient of its negated,
    minibatch-summed objective and returns the members' true bounds ``(M, B)``.

    ``kinds`` maps (spec, KL weight) to the members that share them; each kind's members go to
    :func:`iwae.estimators.gradient_terms` side by side, log w of shape (K, M_kind * B). The
    surrogates that train all parameters, the decoder's or the encoder's are summed over the kinds
    and back-propagated once per parameter set (a member's surrogate has no gradient in another
    member's slice, so the sum's gradient is each member's own)."""
    views = {ESTIMATOR_TABLE[spec.estimator].log_q_view for spec, _ in kinds}
    parts = model.log_weight_parts(x, eps, stop_params="stop_params" in views, stop_samples="stop_samples" in views)
    members, k, b = parts["log_q"].shape
    bound = x.new_empty(members, b)
    losses = {"all": [], "decoder": [], "encoder": []}
    for (spec, kl), index in kinds.items():

        def side_by_side(t):  # (M, K, B) -> (K, M_kind * B): this kind's members as one batch
            if t is None:
                return None
            t = t if len(index) == members else t[index]
            return t.transpose(0, 1).reshape(k, len(index) * b)

        kind_parts = LogWeightParts(
            side_by_side(parts["log_p"]),
            side_by_side(parts["log_q"]),
            side_by_side(parts["log_q_stop_params"]),
            side_by_side(parts["log_q_stop_samples"]),
            log_likelihood=side_by_side(parts["log_likelihood"]),
        )
        result = gradient_terms(model, kind_parts, spec, kl)
        bound[index] = result.bound.reshape(len(index), b)
        for surrogate, params in result.terms:
            which = "all" if params is None else "encoder" if params is model.encoder_parameters() else "decoder"
            losses[which].append(-surrogate.sum())
    if not losses["decoder"] and not losses["encoder"]:
        torch.stack(losses["all"]).sum().backward()
    else:  # as estimators.backward: each parameter set its surrogates, the decoder's first
        decoder_loss = torch.stack(losses["all"] + losses["decoder"]).sum()
        encoder_loss = torch.stack(losses["all"] + losses["encoder"]).sum()
        decoder_loss.backward(inputs=model.decoder_parameters(), retain_graph=True)
        encoder_loss.backward(inputs=model.encoder_parameters())
    return bound


def _nonfinite_members(bound: torch.Tensor, model: StackedVAE) -> list[int]:
    """The members whose bound or gradient holds a nan or inf: iwae.train's rule (any element), by the
    float32 sums per member first and confirmed in float64, where no sum of finite floats overflows."""

    def totals(dtype: torch.dtype) -> torch.Tensor:
        sums = [bound.sum(1, dtype=dtype)] + [
            p.grad.reshape(p.shape[0], -1).sum(1, dtype=dtype) for p in model.parameters() if p.grad is not None
        ]
        return torch.stack(sums).sum(0)  # (M,)

    suspect = ~torch.isfinite(totals(torch.float32))
    if not bool(suspect.any()):
        return []
    bad = ~torch.isfinite(totals(torch.float64))
    return [int(j) for j in torch.nonzero(bad).flatten()]
