"""Installing the plugin for a runtime: fast launchers and a conflist.

A runtime starts the plugin once per container operation, so start-up cost
is the plugin's cost.  Two launchers:

* the Python launcher: a script run with ``-IS`` (isolated, no site) that
  spells out the paths it needs, so no site processing and no .pth files run
  (the pip console script spends ~15 ms on those);
* the native launcher (launcher.c, compiled here when a C compiler exists):
  forwards to this node's daemon without starting Python at all and execs the
  Python launcher for everything else (see launcher.c).

With a compiler, ``<bin-dir>/flannelish-cni`` is the native launcher and
``flannelish-cni.py`` next to it the Python one; without, the Python launcher
is ``flannelish-cni`` itself.

The conflist chains ``portmap`` after flannelish-cni (it needs the result's
host-side IPs), with the capabilities a runtime should pass.  Files are
written atomically (temp file + rename), so a runtime never reads half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import flannelish.cni

import flannelish

from .client import SOCKET_NAME

LAUNCHER = "flannelish-cni"
PY_LAUNCHER = "flannelish-cni.py"  # the native launcher's fallback
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


def build_native(output: str, socket: str, python: str, script: str) -> str | None:
    """Compile launcher.c into `output`; None (and nothing written) when that is not possible."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.c")
    if compiler is None or not os.path.exists(source):
        return "no C compiler or launcher.c found"
    for value in (socket, python, script):
        if any(c in value for c in '"\\\n') or not value.startswith("/"):
            return f"path {value!r} cannot be baked into the native launcher"
    tmp = output + ".build"
    proc = subprocess.run(
        [
            compiler,
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            tmp,
            f'-DFL_SOCKET="{socket}"',
            f'-DFL_PYTHON="{python}"',
            f'-DFL_SCRIPT="{script}"',
            source,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        return f"compiling the native launcher failed: {proc.stderr.strip()[:300]}"
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)
    return None


def install(
    bin_dir: str,
    conf_dir: str,
    name: str,
    subnet_file: str,
    cni_version: str = "1.0.0",
    native: bool | None = None,
) -> tuple[str, str, str]:
    """Install launcher(s) and conflist; returns (launcher, conflist, how).

    native None: the native fast-path launcher if it can be built, else Python;
    True: native or fail; False: the Python launcher only.
    """
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    launcher = os.path.join(bin_dir, LAUNCHER)
    how = "python launcher"
    if native is False:
        write_atomic(launcher, launcher_source(), 0o755)
    else:
        script = os.path.join(bin_dir, PY_LAUNCHER)
        write_atomic(script, launcher_source(), 0o755)
        socket = os.path.join(os.path.dirname(os.path.abspath(subnet_file)), SOCKET_NAME)
        problem = build_native(launcher, socket, sys.executable, script)
        if problem is None:
            how = f"native launcher for {socket}, Python fallback {script}"
        elif native:
            raise OSError(problem)
        else:
            write_atomic(launcher, launcher_source(), 0o755)
            how = f"python launcher ({problem})"
    conf = os.path.join(conf_dir, CONFLIST)
    write_atomic(conf, json.dumps(conflist(name, subnet_file, cni_version), indent=2) + "\n", 0o644)
    return launcher, conf, how
