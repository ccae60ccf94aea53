"""The launchers `flannelish install-cni` writes: native (compiled) and Python (-IS).

The native launcher only forwards to this node's daemon; everything else
(VERSION, no daemon, a netconf for another daemon) must end up in the Python
entry point with stdin intact, so the answers are the same as the pip script's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FLANNELISH = str(Path(sys.executable).parent / "flannelish")


@pytest.fixture
def launchers(request, tmp_path) -> dict[str, str]:
    # Installed against whichever plugin fixture the test itself uses.
    name = "cni_daemon" if "cni_daemon" in request.fixturenames else "cni_latest"
    cni = request.getfixturevalue(name)
    out = subprocess.run(
        [
            FLANNELISH,
            "install-cni",
            "--bin-dir",
            str(tmp_path / "bin"),
            "--conf-dir",
            str(tmp_path / "conf"),
            "--subnet-file",
            str(cni.run_dir / "subnet.env"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    if (tmp_path / "bin" / "flannelish-cni.py").exists():
        found["native"] = str(tmp_path / "bin" / "flannelish-cni")
        found["python"] = str(tmp_path / "bin" / "flannelish-cni.py")
        assert "native launcher" in out.stdout
    else:
        found["python"] = str(tmp_path / "bin" / "flannelish-cni")
    return found


@pytest.mark.parametrize("kind", ["native", "python"])
def test_installed_launchers_do_add_check_del(cni_latest, launchers, kind):
    cni = cni_latest
    if kind not in launchers:
        pytest.skip("no C compiler: only the Python launcher was installed")
    binary = launchers[kind]
    served = cni.server.served if cni.server else 0
    pod = cni.pod()
    res = cni.call("ADD", cni.conf(), netns=pod, binary=binary).ok().json
    assert res["ips"][0]["address"].startswith("10.244.7.")
    assert cni.call("CHECK", cni.conf(prevResult=res), netns=pod, binary=binary).ok().stdout == ""
    assert cni.call("DEL", cni.conf(), netns=pod, binary=binary).ok().stdout == ""
    assert cni.reserved_ips() == [] and cni.links(pod) == ["lo"]
    if cni.server:
        assert cni.server.served == served + 3  # all three went through the daemon


def test_native_launcher_answers_version_and_errors_like_the_python_entry_point(
    cni_latest, launchers
):
    cni = cni_latest
    if "native" not in launchers:
        pytest.skip("no C compiler")
    native, pip = launchers["native"], None
    for command, conf in (
        ("VERSION", None),
        ("ADD", '{"cniVersion": '),
        ("FOO", cni.conf()),
        ("ADD", cni.conf(cniVersion="9.9.9")),
    ):
        a = cni.call(command, conf, netns=cni.pod(), binary=native)
        b = cni.call(
            command,
            conf,
            netns=cni.pod(),
            binary=pip or str(Path(sys.executable).parent / "flannelish-cni"),
        )
        assert (a.rc, a.stdout) == (b.rc, b.stdout), command


def test_native_launcher_hands_a_netconf_for_another_daemon_to_python(cni_daemon, launchers):
    """The local daemon declines (wrong socket); the Python launcher works in-process."""
    cni = cni_daemon
    if "native" not in launchers:
        pytest.skip("no C compiler: the native launcher is not built")
    pod = cni.pod()
    conf = cni.conf(daemonSocket=str(cni.tmp / "elsewhere.sock"))
    reply = cni.call("ADD", conf, netns=pod, binary=launchers["native"]).ok()
    assert json.loads(reply.stdout)["ips"]
    cni.call("DEL", conf, netns=pod, binary=launchers["native"]).ok()
    assert cni.reserved_ips() == []
    assert cni.server.served == 0  # declined both times: done in-process by the fallback
    cni.forwarded = 0


def test_no_compiler_means_python_launcher(tmp_path, monkeypatch):
    from flannelish.cni import install

    monkeypatch.setattr(shutil, "which", lambda name: None)
    path, _conf, how = install.install(
        str(tmp_path / "b"), str(tmp_path / "c"), "n", "/run/flannel/subnet.env"
    )
    assert how.startswith("python launcher") and "no C compiler" in how
    assert Path(path).read_text().startswith("#!")
    with pytest.raises(OSError):
        install.install(str(tmp_path / "b"), str(tmp_path / "c"), "n", "/x/subnet.env", native=True)
