"""q_EW against the true posterior on a grid: the numbers behind the q_EW figure (2-D latents).

    from iwae.qew import qew_report, qew_panels
    rows = qew_report(model, x[:3], ks=(1, 5, 50))       # TV / KL of q and q_EW to p(z|x)
    panels = qew_panels(model, x[:3], ks=(1, 5, 50))     # the masses, for iwae.figures.plot_qew

For each input x and each k, q_EW(z|x) [1] (sampling-importance-resampling from k draws of q(z|x),
:func:`iwae.analysis.sample_qew`) is histogrammed on a square grid and compared with the true
posterior p(z|x) normalised on the same grid (:func:`iwae.analysis.posterior_grid`):

* ``tv_qew`` = TV(p, q_EW histogram) = (1/2) sum_cells |p - q_EW|. It carries histogram noise of
  ``samples`` draws: ``tv_floor`` is the TV of a histogram of as many draws from p itself, the value
  a perfect q_EW would show (with G*G cells and n draws it is roughly sqrt(cells with mass / n)).
* ``tv_q`` = TV(p, q), q(z|x)'s density at the cell centres normalised over the grid (exact, no noise).
* ``kl_qew`` = KL(p || q_EW) with the histogram smoothed as (1 - eps) q_EW + eps / (G*G), eps =
  ``KL_SMOOTHING``, so that empty cells do not give infinity. It is a rough diagnostic, biased upward
  by the histogram noise (about (cells with mass) / (2 n)); use TV to compare k. ``kl_q`` = KL(p || q)
  on the grid, exact.

Grid: ``extent="auto"`` gives every image its own window, centred on its posterior mean and wide
enough for p (5 standard deviations, from a coarse pass over [-8, 8]^2) and for q (4 standard
deviations); a number ``e`` uses [-e, e]^2 around 0 for all images. ``edge_mass`` (p's mass in the
outermost ring of cells) and ``qew_inside`` (the fraction of q_EW draws inside the grid) tell whether
the window holds the mass.

References:
    [1] C. Cremer, Q. Morris, D. Duvenaud. Reinterpreting Importance-Weighted Autoencoders.
        ICLR 2017 Workshop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .analysis.posterior import _gaussian_posterior, histogram_on_grid, posterior_grid, sample_qew, total_variation

__all__ = ["qew_report", "qew_panels", "QEWPanel", "check_model", "KL_SMOOTHING"]

KL_SMOOTHING = 1e-3  # eps of the uniform mixed into a q_EW histogram before KL(p || q_EW)
_COARSE = torch.linspace(-8.0, 8.0, 81)  # the auto extent's first pass


def check_model(model) -> None:
    """Raise ValueError unless ``model`` has one stochastic layer with a 2-D latent."""
    layers = getattr(model, "num_layers", 1)
    if layers != 1:
        raise ValueError(
            f"the q_EW figure needs a model with one stochastic layer (it draws p(z|x) on a grid of a 2-D latent), "
            f"this one has {layers}; iwae.analysis.sample_qew draws the q_EW of any layers, the hvae's (z1, z2) too"
        )
    shape = tuple(model.prior.event_shape)
    if shape != (2,):
        raise ValueError(
            f"the q_EW figure needs a 2-D latent, this model's top latent is {'x'.join(map(str, shape)) or 'scalar'}-D"
        )


class _Shifted:
    """``model`` seen in coordinates u = z - c, one centre c per input row (B, 2): grids and histograms
    around 0 then cover a window around each image's own posterior."""

    def __init__(self, model, centre: torch.Tensor):
        self.model, self.centre = model, centre

    def encode(self, x):
        q = self.model.encode(x)
        base = q.base_dist
        return torch.distributions.Independent(torch.distributions.Normal(base.loc - self.centre, base.scale), 1)

    def decode(self, u):
        return self.model.decode(u + self.centre)

    def log_weights_with_samples(self, x, num_samples, generator=None):
        """The model's log w (unchanged by the shift: its Jacobian is 1) and its samples, shifted."""
        log_w, zs = self.model.log_weights_with_samples(x, num_samples, generator)
        return log_w, tuple(z - self.centre for z in zs)

    @property
    def prior(self):
        return _ShiftedPrior(self.model.prior, self.centre)


class _ShiftedPrior:
    def __init__(self, prior, centre):
        self.prior, self.centre, self.event_shape = prior, centre, prior.event_shape

    def log_prob(self, u):
        return self.prior.log_prob(u + self.centre)


@dataclass
class QEWPanel:
    """Everything the q_EW figure shows for one input: masses ``(G, G)`` on ``grid + centre`` (the cell
    centres are ``grid`` in both dimensions, shifted by ``centre``), q_EW's per k, and the report's rows."""

    grid: torch.Tensor
    centre: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    qew: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> float:
    """KL(p || q) = sum_{p > 0} p (log p - log q) over the cells."""
    mask = p > 0
    return (p[mask] * (p[mask].log() - log_q[mask])).sum().item()


def _auto_window(model, x1: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Centre ``(2,)`` and half-width for one input: p's mean, 5 of p's sd, 4 of q's, at least 0.5."""
    coarse = _COARSE.to(device=x1.device, dtype=x1.dtype)  # on the model's device, like p below
    p = posterior_grid(model, x1, coarse)[0]  # (g, g)
    pts = torch.stack(torch.meshgrid(coarse, coarse, indexing="ij"), -1).double()  # (g, g, 2)
    mean = (p[..., None] * pts).sum((0, 1))
    sd = ((p[..., None] * (pts - mean).square()).sum((0, 1))).sqrt()
    cell = (coarse[1] - coarse[0]).item()
    half = max(5 * max(sd.max().item(), cell / 2), ((loc - mean).abs() + 4 * scale).max().item(), 0.5)
    return mean.to(x1.dtype), half


@torch.no_grad()
def qew_panels(
    model,
    x: torch.Tensor,
    ks=(1, 5, 50),
    grid: torch.Tensor | None = None,
    samples: int = 20_000,
    generator: torch.Generator | None = None,
    grid_size: int = 121,
    extent="auto",
) -> list[QEWPanel]:
    """Everything the q_EW figure draws, one :class:`QEWPanel` per row of ``x``; arguments as :func:`qew_report`."""
    check_model(model)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if grid is None and grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    if grid is None and extent != "auto" and not float(extent) > 0:
        raise ValueError(f"extent must be 'auto' or a positive number, got {extent!r}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    # every grid, centre and mass lives on x's device, the model's: posterior masses computed there
    # are mixed with them (the figure moves what it draws to the CPU itself)
    on = {"device": x.device, "dtype": x.dtype}
    panels = []
    for b in range(x.shape[0]):
        x1 = x[b : b + 1]
        loc, scale = _gaussian_posterior(model, x1)
        if grid is not None:
            centre, g = torch.zeros(2, **on), grid.to(**on)
        elif extent == "auto":
            centre, half = _auto_window(model, x1, loc[0], scale[0])
            g = torch.linspace(-half, half, grid_size, **on)
        else:
            centre, g = torch.zeros(2, **on), torch.linspace(-float(extent), float(extent), grid_size, **on)
        shifted = _Shifted(model, centre)
        p = posterior_grid(shifted, x1, g)  # (1, G, G)
        pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).double() + centre.double()
        log_q = torch.distributions.Normal(loc[0].double(), scale[0].double()).log_prob(pts).sum(-1)
        q_inside = (log_q.exp() * (g[1] - g[0]).item() ** 2).sum().item()  # q's mass in the window
        log_q = log_q - torch.logsumexp(log_q.flatten(), 0)
        q = log_q.exp()[None]
        edge = (p[0, [0, -1], :].sum() + p[0, 1:-1, [0, -1]].sum()).item()
        cells = g.shape[0] ** 2
        # the noise floor: a histogram of `samples` draws from p itself
        idx = torch.multinomial(p[0].flatten().float(), samples, replacement=True, generator=generator)
        floor_hist = torch.bincount(idx, minlength=cells).double().reshape(1, *p.shape[1:]) / samples
        tv_floor = total_variation(p, floor_hist).item()
        panel = QEWPanel(g, centre, p[0], q[0])
        tv_q, kl_q = total_variation(p, q).item(), _kl(p[0], log_q)
        for k in ks:
            z = sample_qew(shifted, x1, k, samples, generator)  # (n, 1, 2), shifted coordinates
            h = histogram_on_grid(z, g)  # (1, G, G)
            inside = h.sum().item()
            smoothed = (1 - KL_SMOOTHING) * h[0] + KL_SMOOTHING / cells
            panel.qew[k] = h[0]
            panel.rows.append(
                {
                    "image": b,
                    "k": k,
                    "tv_qew": total_variation(p, h).item(),
                    "kl_qew": _kl(p[0], smoothed.log()),
                    "tv_q": tv_q,
                    "kl_q": kl_q,
                    "tv_floor": tv_floor,
                    "edge_mass": edge,
                    "qew_inside": inside,
                    "q_inside": q_inside,
                    "centre": [float(c) for c in centre],
                    "half_width": float(g[-1]),
                    "grid_size": int(g.shape[0]),
                    "samples": samples,
                }
            )
        panels.append(panel)
    if hasattr(model, "train"):
        model.train(was_training)
    return panels


def qew_report(
    model,
    x: torch.Tensor,
    ks=(1, 5, 50),
    grid: torch.Tensor | None = None,
    samples: int = 20_000,
    generator: torch.Generator | None = None,
    grid_size: int = 121,
    extent="auto",
) -> list[dict]:
    """Distances of q_EW and q to the true posterior on a grid, one dict per input and k.

    Args:
        model: a 1-stochastic-layer model with a 2-D latent (``encode``, ``decode``, ``prior``).
        x: inputs, shape ``(B, input_dim)``, on the model's device (grids and masses are built there).
        ks: the k of q_EW (1 is q itself, sampled).
        grid: ``(G,)`` cell centres used for every image and both dims; None: ``grid_size`` and ``extent``.
        samples: q_EW draws per image and k.
        generator: random numbers for the draws, on the model's device.
        grid_size: G when ``grid`` is None.
        extent: "auto" (a window per image, see the module docstring) or a half-width e: [-e, e]^2.

    Returns:
        Dicts with ``image``, ``k``, ``tv_qew``, ``kl_qew``, ``tv_q``, ``kl_q``, ``tv_floor``,
        ``edge_mass``, ``qew_inside``, ``q_inside``, ``centre``, ``half_width``, ``grid_size``, ``samples``.

    Raises:
        ValueError: for a model with more than one stochastic layer or a latent that is not 2-D.
    """
    return [r for p in qew_panels(model, x, ks, grid, samples, generator, grid_size, extent) for r in p.rows]
