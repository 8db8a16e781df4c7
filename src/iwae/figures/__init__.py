"""All of iwae's figures (the only package that imports matplotlib): each ``plot_*`` function reads
arrays, models or rows (lists of dicts), writes one figure and returns its path; none trains,
evaluates or reads a run folder (:mod:`iwae.run_figures` draws the figures of run folders).

    from iwae import figures
    figures.plot_samples({"IWAE(k=5)": model}, "samples.png")   # images.py: samples, pseudo-inputs, reconstructions
    figures.plot_latent(model, x, "latent.png", labels=y)       # latent.py: posterior means, unit activity
    figures.plot_curves({"run": rows}, "curves.png")            # curves.py: training curves, SNR, the (M, K) grid, BDMC
    figures.qew_figure(model, x[:3], (1, 5, 50), "qew.png")     # posterior.py: q_EW against p(z|x)
    figures.plot_toy("toy.png")                                 # toy.py: bias of log (k-sample mean)

The numbers drawn are computed elsewhere: :mod:`iwae.analysis` (samples, reconstructions, posterior
means, the toy bias), :mod:`iwae.qew` (q_EW on a grid), :mod:`iwae.analysis` (active units),
:mod:`iwae.snr` (gradient SNR). The format follows the file's extension (``.png``, ``.svg``,
``.pdf``; none: ``.png``). Sizes are fixed in inches at ``dpi`` (100 by default) without tight
cropping, so a PNG's pixel size is known in advance; each function's docstring gives it.
"""

from ._base import DPI, FORMATS, image_shape_of
from .curves import plot_bdmc, plot_curves, plot_grid, plot_snr
from .images import plot_pseudo_inputs, plot_reconstructions, plot_samples
from .latent import plot_activity, plot_latent
from .posterior import plot_qew, qew_figure
from .toy import TOY_KS, TOY_SETTINGS, plot_toy

__all__ = [
    "plot_samples",
    "plot_pseudo_inputs",
    "plot_reconstructions",
    "plot_latent",
    "plot_activity",
    "plot_curves",
    "plot_snr",
    "plot_grid",
    "plot_bdmc",
    "plot_qew",
    "qew_figure",
    "plot_toy",
    "image_shape_of",
    "FORMATS",
    "DPI",
    "TOY_SETTINGS",
    "TOY_KS",
]
