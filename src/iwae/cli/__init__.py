"""The ``iwae`` command line: the only reader of argv and config files.

    iwae train --objective iwae --k 5 --epochs 10 --out runs/iwae-k5
    iwae evaluate runs/iwae-k5 --k 5000

Each command parses its arguments, makes one library call (the call a Python user makes, which
writes the same result files) and prints what it returns; bad input exits with status 2 and one
line (:mod:`iwae.cli.support`). ``iwae train``'s options are generated from TrainConfig's fields.
The commands live by what they work on: :mod:`~iwae.cli.runs` (train), :mod:`~iwae.cli.measure`
(evaluate, compare, bdmc, analyze, snr), :mod:`~iwae.cli.experiments` (reproduce, report, grid),
:mod:`~iwae.cli.figures` (plot, sample, qew).

The group loads a command's module only when the command runs or its help is shown
(:class:`LazyGroup`), and those modules import the library, which loads PyTorch, only inside the
commands: ``iwae --help`` and ``iwae COMMAND --help`` start without PyTorch.
"""

from __future__ import annotations

import importlib
import logging

import click

__all__ = ["main", "LazyGroup", "COMMANDS"]

# command name -> "module:attribute" of its click command
COMMANDS = {
    "train": "iwae.cli.runs:train",
    "evaluate": "iwae.cli.measure:evaluate",
    "analyze": "iwae.cli.measure:analyze",
    "snr": "iwae.cli.measure:snr",
    "compare": "iwae.cli.measure:compare",
    "bdmc": "iwae.cli.measure:bdmc",
    "reproduce": "iwae.cli.experiments:reproduce",
    "report": "iwae.cli.experiments:report",
    "grid": "iwae.cli.experiments:grid",
    "plot": "iwae.cli.figures:plot",
    "sample": "iwae.cli.figures:sample",
    "qew": "iwae.cli.figures:qew",
}


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use: ``lazy_commands`` maps a command's name
    to the ``"module:attribute"`` of its click command, which :meth:`get_command` imports when the
    command is invoked or its help (or the group's, which lists every command) is shown."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands and name not in self.commands:
            module, _, attribute = self.lazy_commands[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_commands[name]} is not a click command")
            self.add_command(command, name)
        return super().get_command(ctx, name)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="iwae")
def main() -> None:
    """Importance weighted autoencoders: train VAE / IWAE / MIWAE / CIWAE / PIWAE models and
    measure their test log-likelihood."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


if __name__ == "__main__":
    main()
