"""Gradient estimators: which surrogate each set of parameters differentiates for an objective.

:mod:`iwae.objectives` defines the bounds; this module turns a bound into a gradient. The decoder
(theta, with a learnable prior) always ascends its objective's own reparameterised gradient; the
estimator decides the encoder's (phi) gradient:

- ``reparam``: the objective itself, through reparameterised samples (the default).
- ``stl``, "sticking the landing" [1]: the objective with log q evaluated with the encoder's
  parameters detached, so the score-function term is dropped (unbiased for K = 1, and for the
  ELBO at any K).
- ``dreg``, doubly reparameterised gradients [2]: for IWAE the surrogate
  sum_i w~_i^2 log w_i with q's parameters detached inside log q (w~ the normalised weights, held
  constant), plus sum_i w~_i times the prior's direct dependence on phi (VampPrior, see below);
  for MIWAE per group of K; for the ELBO it is STL; PIWAE's encoder uses it on MIWAE.
- ``rws``, reweighted wake-sleep's wake-phi update [3]: sum_i w~_i log q(stop_grad(z_i) | x).
- ``rws-dreg`` [2]: sum_i (w~_i - w~_i^2) log w_i, q's parameters detached, the prior's too.

Derivation (the surrogates' gradients, for any prior and any number of stochastic layers). Write
z_i = (z_{1,i}, ..., z_{L,i}) = T_phi(eps_i), the whole chain q(z_1 | x) q(z_2 | z_1) ...
reparameterised, and split the total phi-gradient of log w_i = log p(x, z_i) - log q_phi(z_i | x) into

    d log w_i / d phi = P_i + D_i - S_i,
    P_i = (d log w_i / d z_i at fixed phi) . (d T_phi(eps_i) / d phi)   the path through every z_l,
    D_i = d log p_phi(z_{L,i}) / d phi at fixed z                          the prior's direct term,
    S_i = d log q_phi(z_i | x) / d phi at fixed z = sum_l d log q(z_l | z_{l-1}) / d phi   the score.

D_i is zero except for the VampPrior, p(z_L) = (1/C) sum_c q_phi(z_L | u_c): its pseudo-inputs go
through the encoder. The decoder's p(z_{l-1} | z_l) and p(x | z_1) have no phi, so they enter P
only; with 2 layers the score is that of q(z_1 | x) and of q(z_2 | z_1) at fixed z_1, z_2, while
z_2's dependence on phi_1 through z_1 is part of the path. Tucker et al.'s identity [2],
E[f S_i] = E[(df / dz_i at fixed phi) . dT/dphi] for f a function of the samples only, with
f = w~_i gives E[w~_i S_i] = E[(w~_i - w~_i^2) P_i]. It rewrites the score term and nothing else, so

    IWAE:    E[sum_i w~_i (P_i + D_i - S_i)] = E[sum_i w~_i^2 P_i + w~_i D_i]      (dreg)
    RWS:     E[sum_i w~_i S_i]               = E[sum_i (w~_i - w~_i^2) P_i]         (rws-dreg)
    ELBO:    E[P_i + D_i - S_i]              = E[P_i + D_i], since E[S_i] = 0         (stl, K = 1)

and MIWAE, CIWAE and PIWAE's encoder term combine these per group / per part. Views of the
log-weights give these terms: ``log p - log q_stop_params`` has phi-gradient P + D (q's parameters
detached, the samples attached, layer inputs included; built here by :func:`add_views` from the
model's draws, with torch.func) and the prior's ``log_prior_direct`` = log p(stop_grad(z_L)) has
D. So dreg ascends sum_i w~_i^2 (log p - log q_stop_params)_i + (w~_i - w~_i^2) log_prior_direct_i
and rws-dreg sum_i (w~_i - w~_i^2) (log p - log q_stop_params - log_prior_direct)_i. STL keeps D
with the objective's own weights: it drops the score S and nothing else.

PIWAE routes IWAE(M*K) to the decoder and MIWAE(M, K) to the encoder [4]. One training step is

    bound = accumulate_gradients(model, x, spec, generator)   # fills .grad, returns the true bound

which samples once and runs the decoder forward once; an estimator other than ``reparam``
back-propagates through the decoder a second time for the encoder's term (no weight gradients).

Each estimator is one entry of :data:`ESTIMATOR_TABLE` (an :class:`Estimator`: its surrogate, the
objectives it supports (also listed, for the configs, in :data:`iwae.choices.ESTIMATOR_OBJECTIVES`),
the view of log q it needs, whether it weights the prior's direct term apart, its relative cost per
step); everything else reads the table.

References:
    [1] G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing. NeurIPS 2017.
    [2] G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient Estimators
        for Monte Carlo Objectives. ICLR 2019.
    [3] J. Bornschein, Y. Bengio. Reweighted Wake-Sleep. ICLR 2015.
    [4] T. Rainforth et al. Tighter Variational Bounds are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import objectives
from .choices import ESTIMATOR_OBJECTIVES, ESTIMATORS
from .config import ObjectiveSpec
from .models.gaussian import diag_normal_log_prob
from .models.vae import LogWeightParts
from .precision import training_autocast

__all__ = [
    "ObjectiveSpec",
    "GradientTerms",
    "gradient_terms",
    "backward",
    "accumulate_gradients",
    "add_views",
    "forward_terms",
    "Estimator",
    "ESTIMATOR_TABLE",
    "ESTIMATORS",
]


@dataclass
class GradientTerms:
    """``bound``: the true bound per example ``(B,)``, for reporting. ``terms``: pairs of a surrogate
    ``(B,)`` to ascend and the parameters it may update (``None`` = all)."""

    bound: torch.Tensor
    terms: list[tuple[torch.Tensor, list[torch.nn.Parameter] | None]]


def _objective(spec: ObjectiveSpec, log_w: torch.Tensor, *, encoder: bool = False) -> torch.Tensor:
    """The value of spec's objective on log-weights ``(k, B)``; for PIWAE the decoder's or the encoder's part."""
    k, b = log_w.shape
    if spec.name == "vae":
        return objectives.elbo(log_w)
    if spec.name == "iwae":
        return objectives.iwae(log_w)
    if spec.name == "ciwae":
        return objectives.ciwae(log_w, spec.beta)
    grouped = log_w.reshape(spec.m, k // spec.m, b)
    if spec.name == "miwae":
        return objectives.miwae(grouped)
    decoder_objective, encoder_objective = objectives.piwae(grouped)  # piwae
    return encoder_objective if encoder else decoder_objective


def _dreg(log_w: torch.Tensor, log_w_path: torch.Tensor, direct: torch.Tensor | None, groups: int) -> torch.Tensor:
    """(1/M) sum_m sum_k [w~_{m,k}^2 log w_{m,k} + (w~_{m,k} - w~_{m,k}^2) direct_{m,k}]: w~ normalised
    within each of ``groups`` groups, held constant; ``direct`` (or None: no such term) carries the
    prior's direct dependence on phi, whose weight w~ the identity leaves alone (module docstring)."""
    k, b = log_w.shape
    w = torch.softmax(log_w.detach().reshape(groups, k // groups, b), dim=1)  # (M, K, B)
    surrogate = w.square() * log_w_path.reshape(groups, k // groups, b)
    if direct is not None:
        surrogate = surrogate + (w - w.square()) * direct.reshape(groups, k // groups, b)
    return surrogate.sum(1).mean(0)


# ----------------------------------------------------------------------------- the encoder surrogates
# Each takes the spec and the parts (with the view its table entry names) and returns the (B,)
# surrogate whose phi-gradient is the estimator's; the formulas are derived in the module docstring.
def _reparam_surrogate(spec: ObjectiveSpec, parts: LogWeightParts) -> torch.Tensor:
    """The objective itself (for PIWAE the encoder's part, MIWAE(M, K)), through the samples."""
    return _objective(spec, parts.log_weights, encoder=True)


def _path(parts: LogWeightParts) -> torch.Tensor:
    """log p - log q_stop_params, whose phi-gradient is P_i + D_i: no score term."""
    return parts.log_p - parts.log_q_stop_params


def _stl_surrogate(spec: ObjectiveSpec, parts: LogWeightParts) -> torch.Tensor:
    """The objective of log p - log q_stop_params: the score S dropped, nothing else [1]."""
    return _objective(spec, _path(parts), encoder=True)


def _dreg_surrogate(spec: ObjectiveSpec, parts: LogWeightParts) -> torch.Tensor:
    """sum_i w~_i^2 P-view + (w~_i - w~_i^2) D-view per group [2]; the ELBO's is STL's."""
    log_w, log_w_path, direct = parts.log_weights, _path(parts), parts.log_prior_direct
    if spec.name == "vae":  # K independent one-sample ELBOs: DReG is STL
        return objectives.elbo(log_w_path)
    if spec.name == "ciwae":
        return spec.beta * objectives.elbo(log_w_path) + (1 - spec.beta) * _dreg(log_w, log_w_path, direct, 1)
    return _dreg(log_w, log_w_path, direct, spec.m if spec.name in ("miwae", "piwae") else 1)


def _rws_surrogate(spec: ObjectiveSpec, parts: LogWeightParts) -> torch.Tensor:
    """Wake-phi: sum_i w~_i log q(stop_grad(z_i) | x) [3]."""
    w = torch.softmax(parts.log_weights.detach(), dim=0)  # (k, B)
    return (w * parts.log_q_stop_samples).sum(0)


def _rws_dreg_surrogate(spec: ObjectiveSpec, parts: LogWeightParts) -> torch.Tensor:
    """sum_i (w~_i - w~_i^2) P-view [2]: RWS's target has no term in the prior's phi, so D is removed."""
    w = torch.softmax(parts.log_weights.detach(), dim=0)  # (k, B)
    log_w_path = _path(parts)
    if parts.log_prior_direct is not None:  # the path P_i alone
        log_w_path = log_w_path - parts.log_prior_direct
    return ((w - w.square()) * log_w_path).sum(0)


@dataclass(frozen=True)
class Estimator:
    """One encoder gradient estimator, as :data:`ESTIMATOR_TABLE` lists it.

    Adding an estimator is one entry in the table, its surrogate function, and its name with the
    objectives it is defined for in :data:`iwae.choices.ESTIMATOR_OBJECTIVES` (which ObjectiveSpec's
    validation and the CLI's choices read without PyTorch); the views :func:`accumulate_gradients`
    builds, the dispatch in :func:`gradient_terms` and reproduce's time estimate read the table.
    """

    surrogate: Callable[[ObjectiveSpec, LogWeightParts], torch.Tensor]  # (spec, parts) -> (B,), ascended by phi
    objectives: tuple[str, ...]  # the objectives it is defined for
    # the view of log q it needs: "stop_params" (q's parameters detached, samples attached) or
    # "stop_samples" (samples detached); None: the log-weights alone
    log_q_view: str | None
    # objectives for which it weights the prior's direct dependence on phi apart (VampPrior):
    # its parts must then hold log p(stop_grad(z_L)), ``log_prior_direct``
    prior_direct: tuple[str, ...]
    cost: float  # time per training step relative to reparam (1-layer MNIST model, k = 50), for planning
    description: str  # one line, with the reference

    def needs_prior_direct(self, spec: ObjectiveSpec) -> bool:
        return spec.name in self.prior_direct


_ALL = objectives.OBJECTIVES
_FOR = ESTIMATOR_OBJECTIVES  # the objectives each estimator is defined for: iwae.choices, read without PyTorch
ESTIMATOR_TABLE: dict[str, Estimator] = {
    "reparam": Estimator(
        _reparam_surrogate,
        _FOR["reparam"],
        None,
        (),
        1.0,
        "the objective's own reparameterised gradient (Kingma & Welling 2014)",
    ),
    "stl": Estimator(
        _stl_surrogate,
        _FOR["stl"],
        "stop_params",
        (),
        1.33,
        "sticking the landing: the score term dropped (Roeder et al. 2017)",
    ),
    "dreg": Estimator(
        _dreg_surrogate,
        _FOR["dreg"],
        "stop_params",
        tuple(o for o in _ALL if o != "vae"),
        1.33,
        "doubly reparameterised, w~^2 on the path (Tucker et al. 2019)",
    ),
    "rws": Estimator(
        _rws_surrogate,
        _FOR["rws"],
        "stop_samples",
        (),
        1.07,
        "reweighted wake-sleep's wake-phi update (Bornschein & Bengio 2015)",
    ),
    "rws-dreg": Estimator(
        _rws_dreg_surrogate,
        _FOR["rws-dreg"],
        "stop_params",
        ("iwae",),
        1.33,
        "RWS's wake-phi gradient doubly reparameterised (Tucker et al. 2019)",
    ),
}
# ESTIMATORS, the names in the table's order (the CLI's choices), come from iwae.choices
assert tuple(ESTIMATOR_TABLE) == ESTIMATORS, (
    f"iwae.choices.ESTIMATORS {ESTIMATORS} != the table's {tuple(ESTIMATOR_TABLE)}"
)


def _needs_prior_direct(spec: ObjectiveSpec) -> bool:
    """Whether spec's encoder surrogate weights the prior's direct term apart (its views need log_prior_direct)."""
    return ESTIMATOR_TABLE[spec.estimator].needs_prior_direct(spec)


# ----------------------------------------------------------------------------- the views of log q
class _Method(nn.Module):
    """``module.<name>(*args)`` as a forward, so torch.func.functional_call can run it with other parameters."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.module, self.name = module, name

    def forward(self, *args):
        return getattr(self.module, self.name)(*args)


def _loc_log_scale_params_detached(layer: nn.Module, *h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer.loc_log_scale(*h)`` with the layer's parameters detached: gradients reach the inputs ``h`` only.
    Any module works unchanged (no twin forward): torch.func swaps in the detached tensors."""
    params = {f"module.{name}": p.detach() for name, p in layer.named_parameters()}
    return torch.func.functional_call(_Method(layer, "loc_log_scale"), params, h)


def add_views(
    model: nn.Module, parts: LogWeightParts, *, stop_params: bool = False, stop_samples: bool = False
) -> LogWeightParts:
    """``parts`` with the views of log q that the estimators differentiate, from ``parts.posterior``:

        log_q_stop_params  = sum_l log N(z_l; loc_l, sigma_l^2 | phi detached), samples attached:
                             phi-gradient through the samples only (the path, STL, DReG);
        log_q_stop_samples = sum_l log N(stop_grad(z_l); loc_l(stop_grad(z_{l-1})), ...):
                             phi-gradient through q's parameters only (RWS).

    The first encoder layer's loc and log sigma depend on x only (not on a sample), so they are
    reused, detached for the first view (which then detaches the parameters without a second pass);
    a layer that reads samples is run again on its inputs (``parts.posterior.layer_inputs()``, with
    its parameters detached, or on the detached inputs): q(z_2 | z_1) of Burda's chain, and the
    HVAE's q(z_1 | x, z_2), whose path view keeps the gradient through z_2. No decoder pass: the
    decoder ran once, in ``model.log_weight_parts``.

    Args:
        model: the model whose ``encoder`` layers (``loc_log_scale(h)``) drew ``parts.posterior``.
        parts: from ``model.log_weight_parts``.
        stop_params, stop_samples: which views to add (those already present are kept).
    """
    post = parts.posterior
    want_sp = stop_params and parts.log_q_stop_params is None
    want_ss = stop_samples and parts.log_q_stop_samples is None
    if not (want_sp or want_ss):
        return parts
    if post is None:
        raise ValueError("the views of log q need the samples: pass the LogWeightParts of model.log_weight_parts")
    log_q_sp = log_q_ss = None
    for i, (layer, (h, z)) in enumerate(zip(model.encoder, post.layer_inputs())):
        if want_sp:
            first = (post.loc.detach(), post.log_scale.detach()) if i == 0 else None  # the first layer as drawn
            term = diag_normal_log_prob(z, *(first or _loc_log_scale_params_detached(layer, *h)))
            log_q_sp = term if log_q_sp is None else log_q_sp + term
        if want_ss:  # the first layer as drawn, a layer that reads samples again on its detached inputs
            loc, log_scale = (post.loc, post.log_scale) if i == 0 else layer.loc_log_scale(*(a.detach() for a in h))
            term = diag_normal_log_prob(z.detach(), loc, log_scale)
            log_q_ss = term if log_q_ss is None else log_q_ss + term
    return dataclasses.replace(
        parts,
        log_q_stop_params=parts.log_q_stop_params if log_q_sp is None else log_q_sp,
        log_q_stop_samples=parts.log_q_stop_samples if log_q_ss is None else log_q_ss,
    )


def _prior_depends_on_encoder(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "prior_module", None), "depends_on_encoder", False))


def _kl_weighted(parts: LogWeightParts, kl_weight: float) -> LogWeightParts:
    """Parts whose log-weights are log p(x|z) + kl_weight * (log p(z) - log q(z|x)), for KL warm-up."""
    if parts.log_likelihood is None:
        raise ValueError("KL warm-up needs LogWeightParts with log_likelihood, from model.log_weight_parts")
    lik = parts.log_likelihood
    scaled = [
        None if t is None else kl_weight * t for t in (parts.log_q, parts.log_q_stop_params, parts.log_prior_direct)
    ]
    return LogWeightParts(lik + kl_weight * (parts.log_p - lik), scaled[0], scaled[1], None, lik, scaled[2])


def gradient_terms(
    model: torch.nn.Module,
    log_w: torch.Tensor | LogWeightParts,
    spec: ObjectiveSpec,
    kl_weight: float | torch.Tensor = 1.0,
) -> GradientTerms:
    """The surrogates whose gradients train ``model`` on ``spec``'s objective with ``spec``'s estimator.

    Args:
        model: a model with ``encoder_parameters()`` and ``decoder_parameters()``.
        log_w: log-weights of shape ``(k, B)`` from ``model.log_weights(x, spec.k)`` (enough for
            ``reparam``), or the :class:`~iwae.models.LogWeightParts` from ``model.log_weight_parts``
            (with ``prior_direct=True`` where the estimator's table entry asks for it); the view of
            log q that the estimator needs is added here (:func:`add_views`) unless present.
        spec: the objective and estimator.
        kl_weight: KL warm-up, ELBO only: the surrogates use log p(x|z) + kl_weight * (log p(z) -
            log q(z|x)) in place of log w (the reported bound does not). Default 1.0: none. A 0-dim
            tensor (the compiled step's input, :mod:`iwae.compiled.step`) always takes the weighted form.

    Returns:
        The true bound (detached, for reporting) and the (surrogate, parameters) pairs.

    Raises:
        ValueError: for a kl_weight other than 1 with an objective other than ``vae``.
    """
    parts = log_w if isinstance(log_w, LogWeightParts) else None
    entry = ESTIMATOR_TABLE[spec.estimator]
    if isinstance(kl_weight, torch.Tensor) or kl_weight != 1.0:
        if spec.name != "vae":
            raise ValueError(
                f"KL warm-up (kl_weight {kl_weight}) is defined for the vae objective (the ELBO) "
                f"only, not {spec.name}; train {spec.name} without warm-up"
            )
        if parts is None:
            raise ValueError("KL warm-up needs the LogWeightParts from model.log_weight_parts, not bare log-weights")
        parts = _with_views(model, parts, entry)  # before scaling: the views are scaled with log q
        bound = objectives.elbo(parts.log_weights).detach()
        result = gradient_terms(model, _kl_weighted(parts, kl_weight), spec)
        return GradientTerms(bound, result.terms)
    log_w = parts.log_weights if parts is not None else log_w
    k, b = log_w.shape
    if k != spec.k:
        raise ValueError(f"log_w has {k} samples per example but the objective expects k = {spec.k}")
    bound = _objective(spec, log_w)
    if entry.surrogate is _reparam_surrogate and spec.name != "piwae":
        # the encoder's surrogate is the decoder's objective: one term trains every parameter
        return GradientTerms(bound.detach(), [(bound, None)])
    if parts is None:
        if entry.log_q_view is not None:
            raise ValueError(
                f"the {spec.estimator} estimator needs the LogWeightParts of model.log_weight_parts "
                f"(its samples, for the view of log q), not bare log-weights"
            )
        parts = LogWeightParts(log_w, log_w.new_zeros(()))  # log_weights is log_w itself
    parts = _with_views(model, parts, entry)
    if entry.needs_prior_direct(spec) and _prior_depends_on_encoder(model) and parts.log_prior_direct is None:
        # without the view the prior's direct term would get DReG's weights: a biased gradient
        raise ValueError(
            f"the {spec.estimator} estimator with a prior that depends on the encoder "
            f"({type(model.prior_module).__name__}) needs model.log_weight_parts(..., prior_direct=True)"
        )
    encoder_term = entry.surrogate(spec, parts)
    return GradientTerms(
        bound.detach(), [(bound, model.decoder_parameters()), (encoder_term, model.encoder_parameters())]
    )


def _with_views(model: torch.nn.Module, parts: LogWeightParts, entry: Estimator) -> LogWeightParts:
    """``parts`` with the view of log q that ``entry`` names (built once: present views are kept)."""
    return add_views(
        model, parts, stop_params=entry.log_q_view == "stop_params", stop_samples=entry.log_q_view == "stop_samples"
    )


def backward(result: GradientTerms) -> None:
    """Accumulates the gradient of the summed surrogates (gradients summed over the minibatch,
    as in Burda et al.'s code) into ``.grad``; the loss is the negated surrogate."""
    for i, (surrogate, params) in enumerate(result.terms):
        last = i == len(result.terms) - 1
        (-surrogate.sum()).backward(inputs=params, retain_graph=not last)


def forward_terms(
    model: torch.nn.Module,
    x: torch.Tensor,
    spec: ObjectiveSpec,
    generator: torch.Generator | None = None,
    kl_weight: float = 1.0,
) -> GradientTerms:
    """The forward half of :func:`accumulate_gradients`: one sampling, one decoder pass, the estimator's terms."""
    # one sampling and one decoder pass; gradient_terms adds the estimator's view of log q
    parts = model.log_weight_parts(x, spec.k, generator, prior_direct=_needs_prior_direct(spec))
    return gradient_terms(model, parts, spec, kl_weight)


def accumulate_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    spec: ObjectiveSpec,
    generator: torch.Generator | None = None,
    kl_weight: float = 1.0,
    *,
    precision: str = "32",
    forward: Callable[..., GradientTerms] | None = None,
) -> torch.Tensor:
    """Samples ``spec.k`` latents per row of ``x``, adds the estimator's gradient of the negated,
    minibatch-summed objective to the parameters' ``.grad``, and returns the true bound ``(B,)``.
    ``kl_weight`` < 1 is KL warm-up (vae objective only; see :func:`gradient_terms`).

    ``precision`` ``bf16-mixed`` runs the forward pass under bfloat16 autocast and the backward pass
    outside it, as PyTorch recommends (:mod:`iwae.precision`); ``forward`` replaces
    :func:`forward_terms` (a compiled one, :mod:`iwae.compiled`)."""
    with training_autocast(precision, x.device):
        result = (forward or forward_terms)(model, x, spec, generator, kl_weight)
    backward(result)
    return result.bound
