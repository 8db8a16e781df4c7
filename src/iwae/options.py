"""Command-line options generated from a config dataclass: one flag per field, its type, choices,
default and help taken from the field (``train_subset: int | None = _setting(None, "Train on ...")``
gives ``--train-subset INTEGER``; see :func:`iwae.train._setting`), so that a new setting needs no
edit here. Also the parsers of comma-separated values the commands share.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import click

__all__ = ["setting_options", "int_list", "names", "flag"]


def int_list(value: str | None, name: str) -> list[int] | None:
    """``"100,50"`` as [100, 50]; a click usage error naming the flag ``name`` for anything but positive integers."""
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 100,50, got {value!r}", param_hint=name)
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
    from the field (see ``iwae.train._setting``)."""
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
    return click.option(flag(f.name), f.name, type=kind, default=default, show_default=default is not None,
                        help=text)


def setting_options(config_class: type) -> Callable:
    """Decorates a command with one option per field of the dataclass ``config_class``, in field order."""
    hints = typing.get_type_hints(config_class)

    def decorate(command):
        for f in reversed(dataclasses.fields(config_class)):
            command = _setting_option(f, hints[f.name])(command)
        return command

    return decorate
