"""The posterior of a one-layer model: q(z|x) as a Gaussian, the true posterior p(z|x) on a grid of a
2-D latent, and q_EW, the posterior implicit in the IWAE bound, by sampling-importance-resampling.

q_EW [1] is the posterior implicit in the IWAE bound: draw k samples from q(z|x) and keep one with
probability proportional to its importance weight (sampling-importance-resampling). As k grows it
approaches the true posterior p(z|x), which :func:`posterior_grid` computes on a grid for 2-D latents.

Only the public surface of a model is used (``encode``, ``decode``, ``prior``); models with more than
one stochastic layer are refused: q(z_L) of the top layer has no closed-form density. :func:`sample_qew`
also takes the HVAE (``top_posterior``), whose SIR draws are of the whole latent (z_1, z_2).

References:
    [1] C. Cremer, Q. Morris, D. Duvenaud. Reinterpreting Importance-Weighted Autoencoders.
        ICLR 2017 Workshop.
"""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal

__all__ = ["sample_qew", "posterior_grid", "histogram_on_grid", "qew_density_on_grid", "total_variation"]

_ROWS_PER_DECODE = 1 << 14  # decoder rows per call


def _refuse_layers(layers: int) -> None:
    if layers != 1:
        raise ValueError(
            f"posterior analysis needs one stochastic layer, the model has {layers}: the "
            f"aggregate posterior and q_EW of a hierarchy need the density of q(z_L|x), "
            f"which has no closed form"
        )


def _one_layer(model) -> None:
    """Refuses a model with more than one stochastic layer (``num_layers``, 1 where the model has none)."""
    _refuse_layers(getattr(model, "num_layers", 1))


def _gaussian_posterior(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x)'s ``loc`` and ``scale``, shape ``(B, D)``, from ``model.encode``; refuses L > 1 layers."""
    q = model.encode(x)
    if isinstance(q, tuple):
        _refuse_layers(len(q))
    base = q.base_dist if isinstance(q, Independent) else q
    if not isinstance(base, Normal):
        raise ValueError(f"posterior analysis needs a Gaussian q(z|x), got {type(base).__name__}")
    return base.loc, base.scale


@torch.no_grad()
def sample_qew(model, x: torch.Tensor, k: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws from q_EW(z|x) by sampling-importance-resampling, following reference [2].

    For each draw: z_1..z_k ~ q(z|x), log w_i = log p(x, z_i) - log q(z_i|x), and one z_i is kept with
    probability softmax(log w)_i (normalised in log space; unnormalised weights are never formed).
    k = 1 gives q(z|x) itself. The samples and log w are the model's own, from
    ``model.log_weights_with_samples`` (the same function that training and L_k use).

    Args:
        model: a 1-stochastic-layer model with ``log_weights_with_samples`` (:class:`~iwae.models.VAE`).
        x: inputs, shape ``(B, input_dim)``.
        k: proposals per draw.
        n: draws per input.
        generator: random numbers for proposals and choices (one generator serves both).

    Returns:
        Shape ``(n, B, D)``; for the HVAE the whole latent (z_1, z_2) concatenated, ``(n, B, D_1 + D_2)``.
    """
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be >= 1, got k={k}, n={n}")
    if not hasattr(model, "top_posterior"):
        _one_layer(model)
    b = x.shape[0]
    draws = max(1, _ROWS_PER_DECODE // (k * b))  # draws per decoder call
    out = []
    for j in range(0, n, draws):
        m = min(draws, n - j)
        # the model's own log w and the samples it was computed at, m draws of k proposals
        log_w, zs = model.log_weights_with_samples(x, m * k, generator)  # (m k, B), each (m k, B, D_l)
        z = zs[0] if len(zs) == 1 else torch.cat(zs, -1)
        z = z.reshape(m, k, b, -1)
        probs = torch.softmax(log_w.reshape(m, k, b), dim=1).permute(0, 2, 1).reshape(m * b, k)  # (m B, k)
        pick = torch.multinomial(probs, 1, generator=generator).reshape(m, 1, b, 1)
        out.append(z.gather(1, pick.expand(m, 1, b, z.shape[-1])).squeeze(1))  # (m, B, D)
    return torch.cat(out)


def _grid_points(grid: torch.Tensor) -> torch.Tensor:
    """The G*G cell centres of a square grid, shape ``(G, G, 2)``; ``[i, j] = (grid[i], grid[j])``."""
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(
            f"grid must be a 1-D tensor of at least 2 equally spaced cell centres, got shape {tuple(grid.shape)}"
        )
    return torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1)


@torch.no_grad()
def posterior_grid(model, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The true posterior p(z|x) of a 2-D latent model as cell masses on a square grid.

    log p(x|z) + log p(z) at each cell centre, normalised by logsumexp over the cells: a mass per
    cell (the density times the cell area), summing to 1. The grid should hold nearly all the mass.

    Args:
        model: a model with a 2-D latent, ``decode`` and ``prior``.
        x: inputs, shape ``(B, input_dim)``.
        grid: ``(G,)`` equally spaced cell centres, used for both latent dimensions.

    Returns:
        Shape ``(B, G, G)``; ``[b, i, j]`` is the cell at ``(grid[i], grid[j])``.
    """
    points = _grid_points(grid.to(x.dtype)).to(x.device).reshape(-1, 1, 2)  # (G G, 1, 2)
    if model.prior.event_shape != torch.Size([2]):
        raise ValueError(
            f"posterior_grid needs a 2-D latent, the prior's event shape is {tuple(model.prior.event_shape)}"
        )
    log_joint = torch.cat(
        [
            model.decode(points[i : i + _ROWS_PER_DECODE]).log_prob(x)
            + model.prior.log_prob(points[i : i + _ROWS_PER_DECODE])
            for i in range(0, points.shape[0], _ROWS_PER_DECODE)
        ]
    ).double()  # (G G, B)
    log_mass = log_joint - torch.logsumexp(log_joint, dim=0)
    g = grid.shape[0]
    return log_mass.exp().T.reshape(-1, g, g)


def histogram_on_grid(samples: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The fraction of 2-D ``samples`` ``(n, B, 2)`` in each cell of the grid, shape ``(B, G, G)``.

    Cells have width ``grid[1] - grid[0]`` centred on the grid points; samples outside are dropped,
    so the masses sum to the fraction of samples inside.
    """
    _grid_points(grid)
    g = grid.shape[0]
    h = (grid[1] - grid[0]).item()
    idx = torch.floor((samples.double() - (grid[0].item() - h / 2)) / h).long()  # (n, B, 2)
    inside = ((idx >= 0) & (idx < g)).all(-1)  # (n, B)
    n, b = samples.shape[:2]
    cell = idx[..., 0] * g + idx[..., 1] + torch.arange(b, device=samples.device) * g * g  # (n, B)
    counts = torch.bincount(cell[inside], minlength=b * g * g).double()
    return (counts / n).reshape(b, g, g)


def qew_density_on_grid(
    model, x: torch.Tensor, grid: torch.Tensor, k: int, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """q_EW(z|x) as cell masses on the grid, from ``n`` draws of :func:`sample_qew`; shape ``(B, G, G)``."""
    return histogram_on_grid(sample_qew(model, x, k, n, generator), grid)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = (1/2) sum |p - q| over the last two (grid) dims; shape ``p.shape[:-2]``."""
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} vs {tuple(q.shape)}")
    return 0.5 * (p - q).abs().sum((-2, -1))
