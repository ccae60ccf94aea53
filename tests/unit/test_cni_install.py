"""`flannelish install-cni`: the launcher works stand-alone and the conflist chains portmap."""

from __future__ import annotations

import json
import os
import subprocess

from click.testing import CliRunner

from flannelish.cli import cli


def test_install_writes_an_executable_launcher_and_the_conflist(tmp_path):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    result = CliRunner().invoke(
        cli,
        [
            "install-cni",
            "--bin-dir",
            str(bin_dir),
            "--conf-dir",
            str(conf_dir),
            "--subnet-file",
            "/run/x/subnet.env",
        ],
    )
    assert result.exit_code == 0, result.output
    launcher = bin_dir / "flannelish-cni"
    assert os.access(launcher, os.X_OK)
    assert launcher.read_text().splitlines()[0].endswith(" -IS")
    out = subprocess.run(
        [str(launcher)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=True
    )
    assert "1.1.0" in json.loads(out.stdout)["supportedVersions"]
    conf = json.loads((conf_dir / "10-flannelish.conflist").read_text())
    assert conf["name"] == "flannelish" and conf["cniVersion"] == "1.0.0"
    first, second = conf["plugins"]
    assert first["type"] == "flannelish-cni" and first["subnetFile"] == "/run/x/subnet.env"
    assert second == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert oct((conf_dir / "10-flannelish.conflist").stat().st_mode & 0o777) == "0o644"


def test_launcher_falls_back_in_process_with_a_cni_error_when_no_daemon(tmp_path):
    CliRunner().invoke(
        cli, ["install-cni", "--bin-dir", str(tmp_path), "--conf-dir", str(tmp_path)]
    )
    conf = {"cniVersion": "1.1.0", "name": "n", "subnetFile": str(tmp_path / "absent.env")}
    out = subprocess.run(
        [str(tmp_path / "flannelish-cni")],
        input=json.dumps(conf).encode(),
        env={"CNI_COMMAND": "STATUS"},
        capture_output=True,
        check=False,
    )
    assert out.returncode == 1
    assert json.loads(out.stdout)["code"] == 50  # handled in-process: subnet.env missing


def test_bad_network_name_is_a_config_error_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "install-cni",
            "--bin-dir",
            str(tmp_path / "b"),
            "--conf-dir",
            str(tmp_path / "c"),
            "--network-name",
            "a b",
        ],
    )
    assert result.exit_code == 3
    assert "--network-name" in result.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
