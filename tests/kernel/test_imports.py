"""The CNI plugin's in-process path imports only the standard library.

A container runtime starts the plugin once per call, so every import is paid
on every ADD.  The kernel modules it loads must also stay cheap: no
dataclasses (it pulls in inspect and ast), threading or logging.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _modules_after(imports: str) -> set[str]:
    # Like the installed launcher: isolated, no site, the paths spelled out.
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import flannelish; "
        f"flannelish.__path__.append({str(REPO)!r}); {imports}; "
        "import json; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_cni_in_process_path_imports_only_the_standard_library():
    loaded = _modules_after(
        "import flannelish.cni.main, flannelish.cni.handler, flannelish.cni.bridge, "
        "flannelish.cni.bridge_ops"
    )
    foreign = {
        m
        for m in loaded
        if m.split(".")[0] not in sys.stdlib_module_names | {"flannelish", "__main__"}
    }
    assert foreign == set()


def test_the_kernel_modules_the_plugin_uses_stay_light():
    loaded = _modules_after(
        "import flannelish.kernel.rawnetlink, flannelish.kernel.netns, flannelish.kernel.netlink"
    )
    assert {"dataclasses", "threading", "logging", "pyroute2", "inspect"} & loaded == set()
