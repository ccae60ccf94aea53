"""`flannelish install-daemon`: the systemd unit (checked by systemd-analyze verify) and the
FLANNELD_* environment file, written below --root (never to the real /etc)."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest
from click.testing import CliRunner

from flannelish.cli import cli

pytestmark = pytest.mark.unit


def install(root, *args):
    result = CliRunner().invoke(
        cli, ["install-daemon", "--root", str(root), "--executable", shutil.which("sh"), *args]
    )
    return result


def test_unit_and_env_file_are_written_below_root(tmp_path):
    result = install(tmp_path, "--set", "etcd-endpoints=http://198.18.0.254:2379",
                     "--set", "FLANNELD_OPTIONS=-iface=eth0 -ip-masq",
                     "--set", "ip-masq=true")  # fmt: skip
    assert result.exit_code == 0, result.output
    unit = (tmp_path / "etc/systemd/system/flannelish.service").read_text()
    assert f"ExecStart={shutil.which('sh')} daemon $FLANNELD_OPTIONS" in unit
    assert "EnvironmentFile=-/etc/default/flannelish" in unit
    assert "Restart=on-failure" in unit and "KillSignal=SIGTERM" in unit
    assert "Conflicts=flanneld.service" in unit and "After=flanneld.service" in unit
    env_path = tmp_path / "etc/default/flannelish"
    env = env_path.read_text().splitlines()
    assert "FLANNELD_ETCD_ENDPOINTS=http://198.18.0.254:2379" in env
    assert 'FLANNELD_OPTIONS="-iface=eth0 -ip-masq"' in env
    assert "FLANNELD_IP_MASQ=true" in env
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600  # may hold the etcd password


def test_an_existing_env_file_is_kept_unless_forced(tmp_path):
    assert install(tmp_path, "--set", "iface=eth0").exit_code == 0
    result = install(tmp_path, "--set", "iface=eth1")
    assert result.exit_code == 0 and "kept" in result.output
    assert "FLANNELD_IFACE=eth0" in (tmp_path / "etc/default/flannelish").read_text()
    assert install(tmp_path, "--set", "iface=eth1", "--force").exit_code == 0
    assert "FLANNELD_IFACE=eth1" in (tmp_path / "etc/default/flannelish").read_text()


def test_sysconfig_where_only_sysconfig_exists(tmp_path):
    (tmp_path / "etc/sysconfig").mkdir(parents=True)
    assert install(tmp_path).exit_code == 0
    assert (tmp_path / "etc/sysconfig/flannelish").exists()
    unit = (tmp_path / "etc/systemd/system/flannelish.service").read_text()
    assert "EnvironmentFile=-/etc/sysconfig/flannelish" in unit


@pytest.mark.parametrize("bad", ["noequals", "bad name=1", "FLANNELD_X-Y$=1"])
def test_bad_settings_are_refused_before_writing(tmp_path, bad):
    result = install(tmp_path, "--set", bad)
    assert result.exit_code == 3 and "invalid --set" in result.output
    assert not (tmp_path / "etc").exists()


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    assert install(tmp_path, "--set", "etcd-endpoints=http://198.18.0.254:2379").exit_code == 0
    unit = tmp_path / "etc/systemd/system/flannelish.service"
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "flannelish.service" not in out.stderr, out.stderr  # no warning about our unit
