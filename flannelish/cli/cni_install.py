"""`flannelish install-cni`: install the plugin launcher and the conflist.

The work is in flannelish.cni.install; this module only maps options and
turns bad input into ConfigError (exit 3) before anything is written.
"""

from __future__ import annotations

import re

import click

from flannelish.cli.node import DEFAULT_SUBNET_FILE
from flannelish.errors import ConfigError, FlannelishError

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # fullmatch: no trailing "\n"


@click.command("install-cni")
@click.option(
    "--bin-dir",
    default="/opt/cni/bin",
    show_default=True,
    help="Where the runtime looks for CNI plugins (gets the flannelish-cni launcher).",
)
@click.option(
    "--conf-dir",
    default="/etc/cni/net.d",
    show_default=True,
    help="Where the runtime reads network configs (gets 10-flannelish.conflist).",
)
@click.option(
    "--network-name",
    default="flannelish",
    show_default=True,
    help="The conflist's network name (also names the IPAM store directory).",
)
@click.option(
    "--subnet-file",
    default=DEFAULT_SUBNET_FILE,
    show_default=True,
    help="The daemon's subnet.env; the plugin derives its settings from it and "
    "finds the daemon's socket next to it.",
)
@click.option(
    "--cni-version",
    default="1.0.0",
    show_default=True,
    type=click.Choice(["0.4.0", "1.0.0", "1.1.0"]),
    help="cniVersion of the conflist (podman 4 and containerd 1.6 speak up to 1.0.0).",
)
@click.option(
    "--launcher",
    type=click.Choice(["auto", "native", "python"]),
    default="auto",
    show_default=True,
    help="native: a small compiled launcher that reaches the daemon without starting "
    "Python (needs cc); auto: native if it builds, else python.",
)
def install_cni(
    bin_dir: str,
    conf_dir: str,
    network_name: str,
    subnet_file: str,
    cni_version: str,
    launcher: str,
) -> None:
    """Install the flannelish-cni launcher and 10-flannelish.conflist (with portmap)."""
    if not _NAME_RE.fullmatch(network_name):
        raise ConfigError(f"invalid --network-name {network_name!r}: use letters, digits, _ . -")
    from flannelish.cni.install import install

    native = {"auto": None, "native": True, "python": False}[launcher]
    try:
        path, conf, how = install(bin_dir, conf_dir, network_name, subnet_file, cni_version, native)
    except OSError as exc:
        raise FlannelishError(f"cannot install the CNI plugin: {exc}") from None
    click.echo(f"installed {path} ({how})")
    click.echo(f"installed {conf}")


COMMANDS = [install_cni]
