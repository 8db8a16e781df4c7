"""The stacked model: the members' weights on a leading dimension M, every layer one batched product
(``torch.bmm`` / ``baddbmm`` on (M, rows, in) x (M, in, out)), and the slicing of weights and Adam's
state between the stack and each member's own model."""

from __future__ import annotations

import torch
from torch import nn

from ..models.gaussian import diag_normal_log_prob, diag_normal_log_prob_from_eps
from ..models.likelihood import bernoulli_log_prob_from_logits
from ..models.likelihoods import Bernoulli
from ..models.networks import BernoulliMLP, GaussianMLP, MLPDecoder, Tanh, tanh_kernel
from ..models.priors import StandardNormalPrior

__all__ = ["StackedVAE", "stack_parameters", "member_tensor"]


def _mlp_names(module: nn.Module, prefix: str) -> list[str] | None:
    """The Linear layers of a tanh MLP (``body`` of Linear, Tanh pairs, then ``head``) by parameter
    prefix, or None if ``module`` is not laid out so."""
    body, head = getattr(module, "body", None), getattr(module, "head", None)
    if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Linear) or len(body) % 2:
        return None
    names = []
    for j in range(0, len(body), 2):
        if type(body[j]) is not nn.Linear or type(body[j + 1]) is not Tanh:
            return None
        names.append(f"{prefix}.body.{j}")
    return names + [f"{prefix}.head"]


def _layout(model: nn.Module) -> dict | None:
    """Where each Linear of a VAE's networks is (encoder layers, decoder[0], inner decoder layers), if
    the model is one this module knows how to stack: Gaussian tanh MLPs, a Bernoulli tanh MLP for
    p(x|z_1) and the standard Normal prior, and no parameter outside them."""
    try:
        encoder, decoder, prior = model.encoder, model.decoder, model.prior_module
    except AttributeError:
        return None
    if type(prior) is not StandardNormalPrior or type(decoder[0]) not in (MLPDecoder, BernoulliMLP):
        return None
    if type(getattr(model, "likelihood", None)) is not Bernoulli:
        return None
    if any(type(layer) is not GaussianMLP for layer in list(encoder) + list(decoder[1:])):
        return None
    layout = {
        "encoder": [_mlp_names(layer, f"encoder.{i}") for i, layer in enumerate(encoder)],
        "decoder": [_mlp_names(layer, f"decoder.{i}") for i, layer in enumerate(decoder)],
    }
    if any(names is None for names in layout["encoder"] + layout["decoder"]):
        return None
    covered = {f"{p}.{w}" for names in layout["encoder"] + layout["decoder"] for p in names for w in ("weight", "bias")}
    return layout if covered == {name for name, _ in model.named_parameters()} else None


def _key(name: str) -> str:
    return name.replace(".", "__")  # a parameter's name may not hold dots


class StackedVAE(nn.Module):
    """M VAEs of one architecture as one module: each parameter of the members' ``VAE`` stacked on a
    leading member dimension (:func:`stack_parameters`: ``(M, *shape)``, a Linear weight as
    ``(M, in, out)``), and each layer one batched matrix product.

    It offers what :func:`iwae.estimators.gradient_terms` asks of a model (``encoder_parameters``,
    ``decoder_parameters``, ``prior_module``); the log-weights come from :meth:`log_weight_parts`,
    which takes each member's eps (drawn from its own generator) instead of drawing them.
    """

    def __init__(self, template: nn.Module, stacked: dict[str, torch.Tensor]):
        super().__init__()
        layout = _layout(template)
        assert layout is not None, "StackedVAE needs a model that stackable() and _layout() accept"
        self.layout = layout
        self.names = [name for name, _ in template.named_parameters()]  # the members' parameter order
        for name in self.names:
            self.register_parameter(_key(name), nn.Parameter(stacked[name]))
        self.prior_module = template.prior_module  # N(0, I): no parameters, its log_prob on any shape
        encoder_ids = {id(p) for p in template.encoder_parameters()}
        self._encoder = [self.param(n) for n, p in template.named_parameters() if id(p) in encoder_ids]
        self._decoder = [self.param(n) for n, p in template.named_parameters() if id(p) not in encoder_ids]
        self.members = next(iter(stacked.values())).shape[0]

    def param(self, name: str) -> nn.Parameter:
        """The stacked ``(M, ...)`` parameter of the members' parameter ``name`` (a weight ``(M, in, out)``)."""
        return getattr(self, _key(name))

    def encoder_parameters(self) -> list[nn.Parameter]:
        return self._encoder

    def decoder_parameters(self) -> list[nn.Parameter]:
        return self._decoder

    # ----------------------------------------------------------------- the batched layers
    def _mlp(self, names: list[str], h: torch.Tensor, *, detach: bool = False, output: bool = False) -> torch.Tensor:
        """The tanh MLP of Linear layers ``names`` on ``h`` of shape ``(M, ..., in)``, each member's rows with its
        own weights; ``detach``: the weights detached (the views of log q)."""
        lead = h.shape[1:-1]
        h = h.reshape(h.shape[0], -1, h.shape[-1])  # (M, N, in)
        tanh = tanh_kernel(h.device)
        for j, name in enumerate(names):
            w, b = self.param(f"{name}.weight"), self.param(f"{name}.bias")
            if detach:
                w, b = w.detach(), b.detach()
            if j == len(names) - 1 and output and h.device.type == "cpu":
                # as the single model's output layer on CPU: the product, then the bias in place
                h = torch.bmm(h, w).add_(b.unsqueeze(1))
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w)  # (M, N, in) x (M, in, out)
            if j < len(names) - 1:
                h = tanh(h)
        return h.reshape(h.shape[:1] + lead + h.shape[-1:])

    def _loc_log_scale(
        self, names: list[str], h: torch.Tensor, detach: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self._mlp(names, h, detach=detach).chunk(2, dim=-1)
        return loc, log_scale

    # ----------------------------------------------------------------- log-weights
    def log_weight_parts(
        self, x: torch.Tensor, eps: list[torch.Tensor], *, stop_params: bool = False, stop_samples: bool = False
    ) -> dict[str, torch.Tensor | None]:
        """Each member's log p(x, z), log q(z|x), log p(x|z_1) and the views of log q, ``(M, K, B)`` each,
        at z_l = loc_l + sigma_l * eps_l, the computation of ``VAE.log_weight_parts`` with
        :func:`iwae.estimators.add_views`, batched over the members.

        Args:
            x: each member's minibatch, ``(M, B, D)``.
            eps: per stochastic layer, bottom-up, the members' standard Normal draws ``(M, K, B, D_l)``.
            stop_params, stop_samples: also the views of log q with the encoder's parameters, or the
                samples, detached (see :func:`iwae.estimators.add_views`).
        """
        enc, dec = self.layout["encoder"], self.layout["decoder"]
        loc, log_scale = self._loc_log_scale(enc[0], x)  # (M, B, D_1)
        loc, log_scale = loc.unsqueeze(1), log_scale.unsqueeze(1)  # (M, 1, B, D_1): broadcast over K
        zs = [torch.addcmul(loc, log_scale.exp(), eps[0])]  # (M, K, B, D_1)
        log_q = diag_normal_log_prob_from_eps(eps[0], log_scale)  # (M, K, B)
        for names, e in zip(enc[1:], eps[1:]):
            loc_l, log_scale_l = self._loc_log_scale(names, zs[-1])  # (M, K, B, D_l)
            zs.append(torch.addcmul(loc_l, log_scale_l.exp(), e))
            log_q = log_q + diag_normal_log_prob_from_eps(e, log_scale_l)
        log_p = self.prior_module.log_prob(zs[-1])
        for names, z_above, z_below in zip(dec[1:], zs[1:], zs[:-1]):
            log_p = log_p + diag_normal_log_prob(z_below, *self._loc_log_scale(names, z_above))
        log_lik = bernoulli_log_prob_from_logits(self._mlp(dec[0], zs[0], output=True), x.unsqueeze(1))
        parts = {
            "log_p": log_p + log_lik,
            "log_q": log_q,
            "log_likelihood": log_lik,
            "log_q_stop_params": None,
            "log_q_stop_samples": None,
        }
        inputs = [None] + zs[:-1]
        if stop_params:  # layer 1's loc and sigma detached as drawn; a layer above run with its weights detached
            view = diag_normal_log_prob(zs[0], loc.detach(), log_scale.detach())
            for names, h, z in zip(enc[1:], inputs[1:], zs[1:]):
                view = view + diag_normal_log_prob(z, *self._loc_log_scale(names, h, detach=True))
            parts["log_q_stop_params"] = view
        if stop_samples:  # the samples detached, layer 1 as drawn, a layer above on its detached input
            view = diag_normal_log_prob(zs[0].detach(), loc, log_scale)
            for names, h, z in zip(enc[1:], inputs[1:], zs[1:]):
                view = view + diag_normal_log_prob(z.detach(), *self._loc_log_scale(names, h.detach()))
            parts["log_q_stop_samples"] = view
        return parts


def _transposed(name: str) -> bool:
    """Whether the stacked form of parameter ``name`` is transposed: a Linear weight, (out, in) in a
    member, is stacked as (M, in, out), so that the batched product takes it as it is and its
    gradient comes out in the layout it is stored in (a transposed gradient cost a transposing copy
    of every weight gradient, 40% of a step at k = 1 with 10 members)."""
    return name.endswith(".weight")


def _stacked(tensors: list[torch.Tensor], name: str) -> torch.Tensor:
    """The members' tensors of parameter ``name`` (or of its Adam state) in their stacked form."""
    return torch.stack([t.detach().t() if _transposed(name) else t.detach() for t in tensors])


def stack_parameters(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The members' parameters by name, stacked on a leading member dimension as :class:`StackedVAE`
    keeps them (a Linear weight transposed: ``(M, in, out)``)."""
    return {name: _stacked([m.get_parameter(name) for m in models], name) for name, _ in models[0].named_parameters()}


def member_tensor(stacked: torch.Tensor, name: str, i: int) -> torch.Tensor:
    """Member ``i``'s tensor of parameter ``name`` (or of its Adam state) from its stacked form, in the
    member's own layout (contiguous)."""
    return (stacked[i].t() if _transposed(name) else stacked[i]).contiguous()


def _gather_state(optimizers: list[torch.optim.Optimizer], models: list[nn.Module], name: str) -> dict | None:
    """The members' Adam state of parameter ``name``, stacked (None when it has none yet: a fresh run)."""
    states = [opt.state.get(model.get_parameter(name)) for opt, model in zip(optimizers, models)]
    if not states[0]:
        return None
    out = {}
    for key, value in states[0].items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            out[key] = _stacked([s[key] for s in states], name)
        else:  # Adam's step count: shared by the members, which are at the same step
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


def _slice_state(state: dict, index) -> dict:
    """The stacked Adam state of some members (``index``, a list), still stacked."""
    return {
        k: (
            v[index].clone()
            if isinstance(v, torch.Tensor) and v.dim() > 0
            else v.clone()
            if isinstance(v, torch.Tensor)
            else v
        )
        for k, v in state.items()
    }


def _member_state(state: dict, name: str, i: int) -> dict:
    """Member ``i``'s Adam state of parameter ``name``, as its own optimizer holds it."""
    return {
        k: (
            member_tensor(v, name, i)
            if isinstance(v, torch.Tensor) and v.dim() > 0
            else v.clone()
            if isinstance(v, torch.Tensor)
            else v
        )
        for k, v in state.items()
    }
