"""The systemd unit and environment file `flannelish install-daemon` writes.

Like flanneld's packages: the unit runs ``flannelish daemon $FLANNELD_OPTIONS``
and reads ``FLANNELD_*`` settings from an environment file
(``/etc/default/flannelish`` on Debian, ``/etc/sysconfig/flannelish`` where
``/etc/sysconfig`` exists instead).  Every daemon flag can be set there as
``FLANNELD_<FLAG>=value``, or written in flanneld's syntax into
``FLANNELD_OPTIONS`` (``-iface=eth0 -ip-masq``), so a flanneld unit's
options carry over unchanged.

Stopping: systemd sends SIGTERM (``KillSignal``), on which the daemon stops its
threads and leaves the data path (device, neighbour/FDB entries, routes, its
nftables table) in place, so pods keep talking across a restart or an upgrade.
``Conflicts=flanneld.service`` with ``After=`` stops a running flanneld
completely before flannelish starts, and the other way round: the zero-loss
takeover of README, "Migrating from flanneld".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

UNIT_NAME = "flannelish.service"
UNIT_DIR = "etc/systemd/system"
ENV_DEFAULT = "etc/default/flannelish"
ENV_SYSCONFIG = "etc/sysconfig/flannelish"

_NAME = re.compile(r"^[A-Z0-9_]+$")


@dataclass
class DaemonUnit:
    executable: str  # absolute path of the flannelish command
    env_file: str = "/" + ENV_DEFAULT
    settings: dict[str, str] = field(default_factory=dict)  # FLANNELD_* -> value

    def unit(self) -> str:
        return f"""\
# Written by `flannelish install-daemon`.  Settings: {self.env_file}
[Unit]
Description=flannelish overlay network daemon (a drop-in for flanneld)
Wants=network-online.target
After=network-online.target
# Never both: starting one stops the other first (the data path stays up).
Conflicts=flanneld.service
After=flanneld.service
Before=containerd.service crio.service docker.service kubelet.service

[Service]
# READY=1 once subnet.env is written and the CNI socket listens (flannelish.node.sdnotify),
# so runtimes ordered after us find both, as with flanneld's packaged unit.
Type=notify
NotifyAccess=main
EnvironmentFile=-{self.env_file}
ExecStart={self.executable} daemon $FLANNELD_OPTIONS
# SIGTERM: the daemon stops and leaves the device, peers' entries and routes in place.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=20
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

    def env(self) -> str:
        lines = [
            "# flannelish daemon settings, read by flannelish.service.",
            "# Any daemon flag as FLANNELD_<FLAG> (upper case, - becomes _), as for flanneld:",
            "#   FLANNELD_ETCD_ENDPOINTS=http://10.0.0.1:2379",
            "#   FLANNELD_IFACE=eth0",
            "#   FLANNELD_IP_MASQ=true",
            "# or flags in flanneld's own syntax (a flanneld unit's options work unchanged):",
            "#   FLANNELD_OPTIONS=-iface=eth0 -ip-masq",
        ]
        for name, value in sorted(self.settings.items()):
            lines.append(f"{name}={_quote(value)}")
        return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """systemd's EnvironmentFile quoting: plain when safe, else double quotes."""
    if value and re.fullmatch(r"[A-Za-z0-9_./:,=@%+-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def setting(item: str) -> tuple[str, str]:
    """'etcd-endpoints=http://…' or 'FLANNELD_ETCD_ENDPOINTS=http://…' -> (FLANNELD_…, value)."""
    name, eq, value = item.partition("=")
    if not eq:
        raise ValueError(f"{item!r}: expected FLAG=VALUE")
    name = name.strip().lstrip("-").upper().replace("-", "_")
    if name != "FLANNELD_OPTIONS" and not name.startswith("FLANNELD_"):
        name = "FLANNELD_" + name
    if not _NAME.match(name):
        raise ValueError(f"{item!r}: not a flag name")
    return name, value


def env_file_path(root: Path) -> Path:
    """/etc/sysconfig/flannelish where only /etc/sysconfig exists, else /etc/default/flannelish."""
    if (root / "etc/sysconfig").is_dir() and not (root / "etc/default").is_dir():
        return root / ENV_SYSCONFIG
    return root / ENV_DEFAULT


def install(
    root: Path, unit: DaemonUnit, env_path: Path, force: bool = False
) -> list[tuple[Path, str]]:
    """Write the unit (always) and the env file (unless it exists and not `force`).

    Returns (path, "written" | "kept") per file.  Paths are under `root`.
    """
    out = []
    unit_path = root / UNIT_DIR / UNIT_NAME
    _write(unit_path, unit.unit(), 0o644)
    out.append((unit_path, "written"))
    if env_path.exists() and not force:
        out.append((env_path, "kept (exists; --force overwrites)"))
    else:
        _write(env_path, unit.env(), 0o600)  # it may hold FLANNELD_ETCD_PASSWORD
        out.append((env_path, "written"))
    return out


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
