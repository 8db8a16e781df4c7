"""The ``iwae`` command line: the only reader of argv and config files.

    iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5
    iwae evaluate runs/iwae-k5 --k 5000

Each command parses its arguments, makes one library call (the call a Python user makes, which
writes the same result files) and prints what it returns; bad input exits with status 2 and one
line (:mod:`iwae.cli.support`). ``iwae train``'s options are generated from TrainConfig's fields.
The commands live by what they work on: :mod:`~iwae.cli.runs` (train, evaluate, compare, bdmc,
analyze, snr), :mod:`~iwae.cli.experiments` (reproduce, report, grid), :mod:`~iwae.cli.figures`
(plot, sample, qew).
"""

from __future__ import annotations

import logging

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="iwae")
def main() -> None:
    """Importance weighted autoencoders: train VAE / IWAE / MIWAE / CIWAE / PIWAE models and
    measure their test log-likelihood."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


# the commands register themselves on ``main`` (they import it from here)
from .experiments import grid, report, reproduce  # noqa: E402
from .figures import plot, qew, sample  # noqa: E402
from .runs import analyze, bdmc, compare, evaluate, snr, train  # noqa: E402

__all__ = ["main", "train", "evaluate", "analyze", "snr", "compare", "bdmc", "reproduce", "report", "grid", "plot", "sample", "qew"]

if __name__ == "__main__":
    main()
