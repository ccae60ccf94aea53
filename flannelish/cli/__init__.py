"""The `flannelish` command: one click group, subcommands from small modules.

Each subcommand module exposes ``COMMANDS`` (a list of click commands) and
imports its heavy dependencies (the etcd client and gRPC, scapy, rich) inside
the command bodies, so ``flannelish --help`` stays fast.  Errors derived from
FlannelishError become one line on stderr and a documented exit status.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from flannelish import __version__
from flannelish.errors import ExitCode, FlannelishError, exit_code_for
from flannelish.logs import LOG_FORMATS, setup_logging


class _Group(click.Group):
    """A group whose subcommands report FlannelishError without a traceback."""

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


def _register() -> None:
    from flannelish.cli import cni_install, daemon, daemon_install, lab, leases, node, policy

    for module in (leases, daemon, daemon_install, cni_install, lab, node, policy):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    try:
        cli.main(prog_name="flannelish")
    except FlannelishError as exc:  # raised outside a subcommand (e.g. setup)
        click.echo(f"flannelish: error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    sys.exit(ExitCode.OK)
