"""`flannelish install-daemon`: the systemd unit and its environment file.

The files are rendered by flannelish.node.systemd_unit; this module maps
options, refuses bad ones before anything is written, and prints what it did.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from flannelish.errors import ConfigError, FlannelishError


def _default_executable() -> str:
    argv0 = Path(sys.argv[0])
    if argv0.name == "flannelish" and argv0.is_file():
        return str(argv0.resolve())
    return shutil.which("flannelish") or "/usr/local/bin/flannelish"


@click.command("install-daemon")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Install below this directory (a package build or an image; tests).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="FLAG=VALUE",
    help="A daemon setting for the environment file, e.g. --set etcd-endpoints=http://… "
    "or --set FLANNELD_IFACE=eth0 or --set 'FLANNELD_OPTIONS=-iface=eth0 -ip-masq'; repeatable.",
)
@click.option(
    "--env-file",
    default=None,
    help="Absolute path of the environment file  [default: /etc/default/flannelish, or "
    "/etc/sysconfig/flannelish where only /etc/sysconfig exists]",
)
@click.option(
    "--executable",
    default=None,
    help="The flannelish command the unit runs  [default: this one]",
)
@click.option("--force", is_flag=True, help="Overwrite an existing environment file.")
def install_daemon(
    root: Path, settings: tuple[str, ...], env_file: str | None, executable: str | None,
    force: bool,
) -> None:  # fmt: skip
    """Install flannelish.service (systemd) and its FLANNELD_* environment file.

    Then: systemctl daemon-reload && systemctl enable --now flannelish.
    The unit conflicts with flanneld.service, so starting it stops flanneld
    first (README, "Migrating from flanneld").
    """
    from flannelish.node.systemd_unit import DaemonUnit, env_file_path, install, setting

    try:
        values = dict(setting(item) for item in settings)
    except ValueError as exc:
        raise ConfigError(f"invalid --set {exc}") from None
    if env_file is not None and not env_file.startswith("/"):
        raise ConfigError(f"--env-file must be an absolute path, got {env_file!r}")
    exe = executable or _default_executable()
    if not exe.startswith("/"):
        raise ConfigError(f"--executable must be an absolute path, got {exe!r}")
    env_path = root / env_file.lstrip("/") if env_file else env_file_path(root)
    unit = DaemonUnit(exe, "/" + str(env_path.relative_to(root)), values)
    try:
        done = install(root, unit, env_path, force)
    except OSError as exc:
        raise FlannelishError(f"cannot install the daemon unit: {exc}") from None
    for path, what in done:
        click.echo(f"{what}: {path}")


COMMANDS = [install_daemon]
