"""The `flannelish` command: one click group, subcommands from small modules.

Each subcommand module exposes ``COMMANDS`` (a list of click commands) and
imports its heavy dependencies (the etcd client and gRPC, scapy, rich) inside
the command bodies, so ``flannelish --help`` stays fast.  Errors derived from
FlannelishError become one line on stderr and a documented exit status.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from flannelish import __version__
from flannelish.errors import ExitCode, FlannelishError, exit_code_for
from flannelish.logs import LOG_FORMATS, setup_logging

# Which module defines each subcommand.  Modules are imported when their
# command runs (or for --help), so `flannelish daemon` does not carry the lab,
# policy and doctor code in its memory for its whole life.
_COMMAND_MODULES = {
    "config": "leases",
    "leases": "leases",
    "reserve": "leases",
    "unreserve": "leases",
    "daemon": "daemon",
    "install-daemon": "daemon_install",
    "install-cni": "cni_install",
    "lab": "lab",
    "verify": "lab",
    "doctor": "node",
    "status": "node",
    "uninstall": "node",
    "endpoints": "policy",
    "namespace": "policy",
    "policy": "policy",
}


class _Group(click.Group):
    """Lazily loaded subcommands that report FlannelishError without a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands = importlib.import_module(f"flannelish.cli.{module}").COMMANDS
        return next((c for c in commands if c.name == cmd_name), None)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlannelishError as exc:
            click.echo(f"flannelish: error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("flannelish: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flannelish")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="FLANNELD_LOG_FORMAT",
    help="Log line format on stderr.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="FLANNELD_LOG_LEVEL",
)
def cli(log_format: str, log_level: str) -> None:
    """Flannel-style overlay networking for containers.

    \b
    Exit statuses:
      0 ok, 1 unexpected error, 2 bad usage, 3 invalid config,
      4 etcd unreachable or refused, 5 out of subnets, 6 lease lost,
      7 kernel operation failed, 8 component or prerequisite missing.
    """
    setup_logging(log_format, log_level)


def main() -> None:
    try:
        cli.main(prog_name="flannelish")
    except FlannelishError as exc:  # raised outside a subcommand (e.g. setup)
        click.echo(f"flannelish: error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    sys.exit(ExitCode.OK)
