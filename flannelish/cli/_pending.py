"""Placeholder commands for parts that have not landed yet.

They exist so that `flannelish --help` lists the whole product and so that
`make lab` fails with one clear sentence instead of a traceback.
"""

from __future__ import annotations

import click

from flannelish.errors import NotAvailableError


def pending_command(name: str, what: str, issue: int, help_text: str) -> click.Command:
    @click.command(
        name,
        help=f"{help_text} (not available yet)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def _command() -> None:
        raise NotAvailableError(
            f"`flannelish {name}` needs {what}, which is not built yet (issue #{issue})"
        )

    return _command
