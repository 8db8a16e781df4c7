"""What the ``iwae`` commands share, so that each command in :mod:`iwae.cli` is parse, one call, print:

- bad input as one line and exit status 2, never a traceback (:func:`user_errors`), a ConfigError
  naming each setting by the flag it was given as (``train_subset`` -> ``--train-subset``);
- options generated from a config dataclass (:func:`setting_options`): one flag per field, its
  type, choices, default and help taken from the field (``train_subset: int | None = _setting(None,
  "Train on ...")`` gives ``--train-subset INTEGER``; see ``iwae.config.train._setting``), so that a new
  setting needs no edit in the CLI;
- the parsers of comma-separated values, and ``--threads``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from collections.abc import Callable

import click
from click.core import ParameterSource

from ..errors import CheckpointError, ConfigError, DataError

__all__ = [
    "UserError",
    "USER_ERRORS",
    "user_errors",
    "interrupted",
    "setting_options",
    "int_list",
    "names",
    "flag",
    "set_threads",
]

_INTERRUPTED = "iwae.interrupted"  # the context's meta key of what a Ctrl-C prints

# user errors: reported in one line with exit status 2, never as a traceback
USER_ERRORS = (ValueError, DataError, CheckpointError, FileExistsError, FileNotFoundError, FloatingPointError)


class UserError(click.ClickException):
    """Bad input that is not about the command's syntax: one line, exit status 2."""

    exit_code = 2


def given_flags(ctx: click.Context) -> dict[str, str]:
    """Setting name -> the flag it was given as, for the command's options: a ConfigError about
    ``train_subset`` then reads ``--train-subset``. Settings read from a config file (``--config``,
    ``--resume``) keep their names, which are that file's keys."""
    from_file = bool(ctx.params.get("config_file") or ctx.params.get("resume"))
    flags = {}
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        if from_file and ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        long = [o for o in param.opts if o.startswith("--")]
        flags[param.name] = long[0] if long else param.opts[0]
    return flags


def interrupted(message: str | Callable[[], str]) -> None:
    """Sets what a Ctrl-C of the running command prints (:func:`user_errors`): the command that goes on
    from where it stopped, e.g. ``iwae train --resume runs/x``; a callable is asked at that moment (the
    run folder may not exist yet)."""
    click.get_current_context().meta[_INTERRUPTED] = message


def user_errors(fn: Callable) -> Callable:
    """Runs a command, turning USER_ERRORS into one-line UserErrors (a ConfigError's settings named by
    their flags) and Ctrl-C into exit status 130 with the line :func:`interrupted` set."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as e:
            message = e.renamed(given_flags(click.get_current_context())) if isinstance(e, ConfigError) else str(e)
            raise UserError(message.splitlines()[0] if message else type(e).__name__) from None
        except KeyboardInterrupt:
            message = click.get_current_context().meta.get(_INTERRUPTED, "interrupted")
            click.echo(message() if callable(message) else message, err=True)
            sys.exit(130)

    return wrapper


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads, refused below 1; without it, torch's default capped at the
    free cores (:func:`iwae.runtime.choose_threads`)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}", ["threads"])
    # deferred: the command line imports PyTorch only to run a command, never for --help
    from ..runtime import choose_threads

    choose_threads(threads)


def int_list(value: str | None, name: str) -> list[int] | None:
    """``"100,50"`` as [100, 50]; a click usage error naming the flag ``name`` for anything but positive integers."""
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers like 100,50, got {value!r}", param_hint=name
        ) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=name)
    return out


def names(value: str) -> list[str]:
    """``"iwae, miwae"`` as ["iwae", "miwae"] (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


class _Dims(click.ParamType):
    """``100,50`` as [100, 50] (``list[int]`` settings); nested, ``200,200/100,100`` as [[200, 200], [100, 100]]."""

    name = "dims"

    def __init__(self, nested: bool) -> None:
        self.nested = nested

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        flag = param.opts[0] if param else "value"
        if self.nested:
            return [int_list(part, flag) for part in value.split("/")]
        return int_list(value, flag)


def flag(name: str) -> str:
    """The flag of a setting: ``train_subset`` -> ``--train-subset``."""
    return "--" + name.replace("_", "-")


def _setting_option(f: dataclasses.Field, hint: object):
    """The click option of a config dataclass field: its flag, type, choices, default and help all come
    from the field (see ``iwae.config.train._setting``)."""
    meta = f.metadata  # a field declared without _setting gets a plain flag (and fails tests/test_cli.py)
    default = meta.get("flag_default", f.default)
    text = meta.get("help", "") + (f"  [default: {meta['shown']}]" if meta.get("shown") else "")
    base = [h for h in typing.get_args(hint) if h is not type(None)] or [hint]  # X | None -> X
    if base[0] is bool:
        return click.option(flag(f.name), f.name, is_flag=True, default=default, help=text)
    if meta.get("choices"):
        kind = click.Choice(meta["choices"])
    elif meta.get("folder"):
        kind = click.Path(file_okay=False)
    elif typing.get_origin(base[0]) is list:
        kind = _Dims(nested=typing.get_origin(typing.get_args(base[0])[0]) is list)
    else:
        kind = base[0]
    return click.option(flag(f.name), f.name, type=kind, default=default, show_default=default is not None, help=text)


def setting_options(config_class: type) -> Callable:
    """Decorates a command with one option per field of the dataclass ``config_class``, in field order."""
    hints = typing.get_type_hints(config_class)

    def decorate(command):
        for f in reversed(dataclasses.fields(config_class)):
            command = _setting_option(f, hints[f.name])(command)
        return command

    return decorate
