"""The flanneld-compatible ``--etcd-*`` flags, shared by every command that talks to etcd.

Names and defaults are flanneld's (docs/flannel-compat.md §10); each flag can also come
from ``FLANNELD_<NAME>`` in the environment, and the command line wins, as in
flanneld.  The decorated command receives one validated EtcdOptions as its
``etcd`` keyword argument instead of eight loose strings.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from flannelish.subnet.etcdoptions import DEFAULT_ENDPOINTS, DEFAULT_PREFIX, EtcdOptions

log = logging.getLogger("flannelish.cli")

_FLAGS: list[tuple[str, str, str | None]] = [
    ("endpoints", "Comma-separated etcd URLs; requests fail over between them.", DEFAULT_ENDPOINTS),
    ("prefix", "etcd key prefix of the network config and subnet leases.", DEFAULT_PREFIX),
    ("cafile", "CA certificate that signs the etcd server certificates (TLS).", None),
    ("certfile", "Client certificate for etcd (TLS, with --etcd-keyfile).", None),
    ("keyfile", "Client private key for etcd (TLS, with --etcd-certfile).", None),
    ("username", "etcd user name (etcd auth, with --etcd-password).", None),
    (
        "password",
        "etcd password; visible to every local user in the process list: prefer "
        "--etcd-password-file or FLANNELD_ETCD_PASSWORD.",
        None,
    ),
    (
        "password-file",
        "File holding the etcd password (one line; a trailing newline is dropped).",
        None,
    ),
]


def etcd_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the --etcd-* flags to a click command and pass ``etcd=EtcdOptions``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {_py(name): kwargs.pop(f"etcd_{_py(name)}") for name, _, _ in _FLAGS}
        ctx = click.get_current_context(silent=True)
        if (
            values["password"]
            and ctx is not None
            and ctx.get_parameter_source("etcd_password") == ParameterSource.COMMANDLINE
        ):
            log.warning(
                "--etcd-password on the command line is visible to every local user "
                "(/proc/<pid>/cmdline, ps); use --etcd-password-file or FLANNELD_ETCD_PASSWORD"
            )
        kwargs["etcd"] = EtcdOptions.from_flags(**values)
        return command(*args, **kwargs)

    # click applies decorators bottom-up; reversed keeps the help in _FLAGS order.
    for name, help_text, default in reversed(_FLAGS):
        wrapper = click.option(
            f"--etcd-{name}",
            f"etcd_{_py(name)}",
            default=default,
            show_default=default is not None,
            envvar=f"FLANNELD_ETCD_{_py(name).upper()}",
            show_envvar=True,
            help=help_text,
        )(wrapper)
    return wrapper


def _py(name: str) -> str:
    return name.replace("-", "_")
