"""Go's flag syntax on top of click, so unit files written for flanneld work unchanged.

flanneld parses its command line with Go's ``flag`` package.  A flag may be
written with one dash or two, its value after ``=`` or as the next argument,
and a boolean is set by its bare name or by ``=true``/``=false`` (Go's
``strconv.ParseBool``: ``1 t T TRUE true True`` and ``0 f F FALSE false
False``).  A boolean never takes the next argument as its value.  Parsing
stops at ``--`` or at the first argument that is not a flag.

:func:`normalise` rewrites such an argument list into the form click parses:
``--name=value`` for flags with a value, ``--name`` / ``--no-name`` for
booleans.  :class:`GoFlagsCommand` applies it to a click command's own
options, so every option of that command (flanneld's and ours) accepts both
syntaxes.  Arguments it does not know are passed through untouched for click
to report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

BOOL, FLAG, VALUE = "bool", "flag", "value"  # FLAG: no false form (--version)


class GoFlagError(click.UsageError):
    """A flag written in a way Go's flag package would refuse too."""


def parse_go_bool(name: str, value: str) -> bool:
    if value in GO_TRUE:
        return True
    if value in GO_FALSE:
        return False
    raise GoFlagError(f'invalid boolean value "{value}" for -{name}: use true or false')


def normalise(args: Sequence[str], flags: Mapping[str, str]) -> list[str]:
    """Rewrite Go-style flags in ``args``; ``flags`` maps a flag name to its kind.

    A BOOL flag ``x`` exists in click as ``--x/--no-x``, so ``=false`` becomes
    ``--no-x``; a FLAG (no false form, e.g. ``--version``) set to false is dropped.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out.append(arg)
            out.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            out.append(arg)  # Go stops here; click sees the rest as it is
            out.extend(args[i:])
            break
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, eq, value = body.partition("=")
        if name in ("h", "help"):
            out.append("--help")
            continue
        kind = flags.get(name)
        if kind is None or body.startswith("-"):
            out.append(arg)  # click's own (e.g. --no-ip-masq) or unknown: click reports it
            continue
        if kind in (BOOL, FLAG):
            on = parse_go_bool(name, value) if eq else True
            if on:
                out.append(f"--{name}")
            elif kind == BOOL:
                out.append(f"--no-{name}")
        elif eq:
            out.append(f"--{name}={value}")
        elif i < len(args):
            out.append(f"--{name}={args[i]}")  # Go takes the next argument, whatever it is
            i += 1
        else:
            raise GoFlagError(f"flag needs an argument: -{name}")
    return out


def flag_kinds(params: Sequence[click.Parameter]) -> dict[str, str]:
    """BOOL, FLAG or VALUE for every long option name of a click command."""
    kinds: dict[str, str] = {}
    for param in params:
        if not isinstance(param, click.Option):
            continue
        kind = VALUE if not param.is_flag else BOOL if param.secondary_opts else FLAG
        for opt in param.opts:
            if opt.startswith("--"):
                kinds[opt[2:]] = kind
    return kinds


class GoFlagsCommand(click.Command):
    """A click command whose options also accept Go's flag syntax (see module docstring)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalise(args, flag_kinds(self.get_params(ctx))))
