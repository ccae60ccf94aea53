"""Installing the plugin for a runtime: a fast launcher and a conflist.

The launcher written to ``<bin-dir>/flannelish-cni`` is a Python script run
with ``-IS`` (isolated, no site): no site processing, no .pth files, just the paths it needs
spelled out.  That saves the interpreter several milliseconds per call
against the pip console script, which matters because a runtime starts the
plugin once per container operation.  The site-packages directory is
*appended* so the in-process fallback can still import pyroute2.

The conflist chains ``portmap`` after flannelish-cni (it needs the result's
host-side IPs), with the capabilities a runtime should pass.  Files are
written atomically (temp file + rename), so a runtime never reads half of one.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import tempfile

import flannelish.cni

import flannelish

LAUNCHER = "flannelish-cni"
CONFLIST = "10-flannelish.conflist"


def launcher_source(python: str = sys.executable) -> str:
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(flannelish.__file__)))
    cni_dir = os.path.dirname(os.path.abspath(flannelish.cni.__file__))
    extra = ""
    if os.path.dirname(cni_dir) != os.path.dirname(os.path.abspath(flannelish.__file__)):
        # editable install: flannelish.cni lives in <repo>/cni, outside the flannelish dir
        extra = f"flannelish.__path__.append({os.path.dirname(cni_dir)!r})\n"
    site = sysconfig.get_paths()["purelib"]
    return (
        f"#!{python} -IS\n"
        '"""flannelish-cni launcher, written by `flannelish install-cni`."""\n'
        "import sys\n"
        f"sys.path.insert(0, {pkg_parent!r})\n"
        f"sys.path.append({site!r})\n"
        "import flannelish\n"
        f"{extra}"
        "from flannelish.cni.main import main\n"
        "main()\n"
    )


def conflist(name: str, subnet_file: str, cni_version: str = "1.0.0") -> dict:
    return {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {
                "type": "flannelish-cni",
                "subnetFile": subnet_file,
                "hairpinMode": True,
                "isDefaultGateway": True,
                "capabilities": {"ips": True, "mac": True},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def write_atomic(path: str, content: str, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".flannelish-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def install(
    bin_dir: str, conf_dir: str, name: str, subnet_file: str, cni_version: str = "1.0.0"
) -> tuple[str, str]:
    launcher = os.path.join(bin_dir, LAUNCHER)
    write_atomic(launcher, launcher_source(), 0o755)
    conf = os.path.join(conf_dir, CONFLIST)
    write_atomic(conf, json.dumps(conflist(name, subnet_file, cni_version), indent=2) + "\n", 0o644)
    return launcher, conf
