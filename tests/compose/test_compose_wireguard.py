"""The docker-compose lab over the wireguard backend: tests/compose/run.sh with
FLANNELISH_COMPOSE_BACKEND=wireguard (a private dockerd, three node containers with
only NET_ADMIN, SYS_ADMIN and NET_RAW plus /dev/net/tun, wireguard-go inside each)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]


def _docker_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (tests/compose/run.sh starts a private dockerd)"
    for tool in ("dockerd", "docker", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"docker unavailable: no {tool} (make test-compose installs it)"
    if shutil.which("docker-compose") is None:
        return "docker unavailable: no docker-compose"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun for wireguard-go"
    return None


def test_compose_lab_over_wireguard():
    reason = _docker_missing()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "FLANNELISH_COMPOSE_BACKEND": "wireguard"}
    r = subprocess.run(
        ["bash", str(REPO / "tests/compose/run.sh")],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    assert r.returncode == 0, tail
    assert "WireGuard on node2's eth0" in r.stderr, tail
