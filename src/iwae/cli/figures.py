"""``iwae plot``, ``sample`` and ``qew``: figures of trained runs."""

from __future__ import annotations

from pathlib import Path

import click

from .. import strict_json
from ..choices import PLOT_KINDS
from .support import int_list as _int_list
from .support import user_errors as _user_errors

# Each command imports the library code it calls when it runs, not here: that code loads PyTorch, which
# ``iwae --help`` and ``iwae COMMAND --help`` must not (the group imports this module to show the help;
# tests/test_cli_startup.py checks it).


PLOT_EXAMPLES = """
\b
Examples:
  iwae plot runs/iwae-k5 --out figures/                     # all figures of one run
  iwae plot runs/vae-2d runs/iwae-2d --what latent --out figures/   # side by side
  iwae plot runs/vae runs/iwae --what curves --format pdf --out figures/
  iwae plot toy --out toy.png                               # bias of log-mean against k
"""


@click.command(epilog=PLOT_EXAMPLES)
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--what", type=click.Choice(PLOT_KINDS + ("all",)), default="all", show_default=True, help="Which figure to draw."
)
@click.option(
    "--out", type=click.Path(), required=True, help="Folder of the figures (for `plot toy`: the figure file)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "svg", "pdf"]),
    default="png",
    show_default=True,
    help="File format of the figures.",
)
@click.option(
    "--points",
    type=int,
    default=2000,
    show_default=True,
    help="Test images in the latent figure (and first N test images reconstructed: 10).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Use the data files as they are now although their SHA-256 changed since the run was trained.",
)
@_user_errors
def plot(runs, what, out, fmt, points, seed, data_dir, accept_changed_data) -> None:
    """Figures of one run, or of two side by side (e.g. VAE vs IWAE): samples, reconstructions of
    test images, latent spread of test points coloured by label, per-unit activity A_u, and
    training curves; written to OUT/<what>.<format>. `iwae plot toy --out FILE` draws the bias of
    E[log mean of k samples] against k for a two-valued variable instead.

    The latent figure draws the top stochastic layer: a 2-D latent directly, else its two units of
    largest A_u on the first 500 training images (as `iwae evaluate`). Activity uses the same images.
    """
    from ..figures import plot_toy
    from ..run_figures import plot_runs

    if runs[0] == "toy":
        if len(runs) > 1:
            raise click.UsageError("`iwae plot toy` takes no run directories")
        click.echo(f"wrote {plot_toy(out)}")
        return
    if len(runs) > 2:
        raise click.UsageError(f"give one or two run directories, got {len(runs)}")
    written = plot_runs(
        runs,
        out,
        what=what,
        fmt=fmt,
        points=points,
        seed=seed,
        data_dir=data_dir,
        accept_changed_data=accept_changed_data,
    )
    click.echo("wrote " + ", ".join(str(p) for p in written))


SAMPLE_EXAMPLES = """
\b
Examples:
  iwae sample runs/iwae-k5                         # RUN_DIR/samples.png, the means of 64 draws of p(x | z)
  iwae sample runs/iwae-k5 --binary --n 100 --out samples.pdf
  iwae sample runs/vamp --pseudo-inputs            # RUN_DIR/pseudo_inputs.png
"""


@click.command(epilog=SAMPLE_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--n", "n", type=int, default=64, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Figure file; .png, .svg or .pdf.  [default: RUN_DIR/samples.png or RUN_DIR/pseudo_inputs.png]",
)
@click.option(
    "--probabilities/--binary",
    default=True,
    show_default=True,
    help="Show the means of p(x | z), or samples x ~ p(x | z).",
)
@click.option("--pseudo-inputs", is_flag=True, help="Draw the VampPrior's pseudo-inputs instead of samples.")
@_user_errors
def sample(run_dir, n, seed, out, probabilities, pseudo_inputs) -> None:
    """Samples of a trained run: z ~ p(z) (top-down through the layers), then p(x | z), as an image grid."""
    from ..run_figures import sample_run

    figure = sample_run(run_dir, out, n=n, seed=seed, probabilities=probabilities, pseudo_inputs=pseudo_inputs)
    click.echo(f"wrote {figure}")


QEW_EXAMPLES = """
\b
Examples:
  iwae qew runs/iwae-2d                                  # first 3 test images, k = 1,5,50 -> runs/iwae-2d/qew.png
  iwae qew runs/iwae-2d --images 5 --k 1,10,100 --out results/qew.pdf --json
"""


@click.command(epilog=QEW_EXAMPLES)
@click.argument("run_dir", type=click.Path())
@click.option("--images", type=int, default=3, show_default=True, help="The first N test images, one row each.")
@click.option("--k", "ks", default="1,5,50", show_default=True, help="Comma-separated k of q_EW.")
@click.option("--samples", type=int, default=20000, show_default=True, help="q_EW draws per image and k.")
@click.option("--grid-size", type=int, default=121, show_default=True, help="Cells per latent dimension.")
@click.option(
    "--extent",
    default="auto",
    show_default=True,
    help="auto (a window per image around its posterior) or a half-width E: the grid [-E, E]^2.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Figure file (.png, .svg, .pdf); the JSON goes beside it.  [default: RUN_DIR/qew.png]",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files.")
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Use the data files as they are now although their SHA-256 changed since the run was trained.",
)
@_user_errors
def qew(
    run_dir, images, ks, samples, grid_size, extent, seed, out, as_json, data_dir, threads, accept_changed_data
) -> None:
    """The IWAE's implicit posterior q_EW (Cremer et al. 2017) of a 2-D-latent, 1-layer run: for each
    of the first test images, the true posterior p(z|x) normalised on a grid, q(z|x) and q_EW for
    each k, with the total variation distance of each to p. Writes the figure and a JSON beside it."""
    from ..run_figures import qew_run

    k_values = _int_list(ks, "--k")
    if threads:
        import torch  # deferred: the command line imports PyTorch only to run a command, never for --help

        torch.set_num_threads(threads)
    result = qew_run(
        run_dir,
        out,
        images=images,
        ks=k_values,
        samples=samples,
        grid_size=grid_size,
        extent=extent,
        seed=seed,
        data_dir=data_dir,
        accept_changed_data=accept_changed_data,
    )
    if as_json:
        click.echo(strict_json.dumps(result, indent=1))
        return
    rows, figure = result["rows"], Path(result["figure"])
    header = ("image", "k", "TV(q_EW,p)", "KL(p||q_EW)", "TV(q,p)", "KL(p||q)", "TV floor", "p edge mass")
    table = [
        (
            r["image"],
            r["k"],
            f"{r['tv_qew']:.3f}",
            f"{r['kl_qew']:.3f}",
            f"{r['tv_q']:.3f}",
            f"{r['kl_q']:.3f}",
            f"{r['tv_floor']:.3f}",
            f"{r['edge_mass']:.1e}",
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in (header, *table):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    click.echo(
        f"TV floor: TV of a histogram of {samples} draws from p itself; KL(p||q_EW) smooths the histogram "
        f"and is biased upward by its noise"
    )
    click.echo(f"wrote {figure} and {figure.with_suffix('.json')}")
