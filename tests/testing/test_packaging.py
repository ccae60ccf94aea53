"""The distribution ships cni/ and backends/ as flannelish.cni and flannelish.backends."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.unit
@pytest.mark.slow
def test_installed_wheel_imports_cni_and_backends_from_the_installed_copy(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("flannelish-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "flannelish/cni/main.py" in names
    assert "flannelish/backends/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True,
    )  # fmt: skip
    probe = subprocess.run(
        [sys.executable, "-c",
         "import flannelish.cni, flannelish.backends; print(flannelish.cni.__file__)"],
        env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip().startswith(str(target))


@pytest.mark.unit
def test_flannelish_console_script_prints_help():
    result = subprocess.run([BIN / "flannelish", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "Usage: flannelish" in result.stdout


@pytest.mark.unit
def test_flannelish_cni_answers_version_like_a_cni_plugin():
    result = subprocess.run(
        [BIN / "flannelish-cni"],
        env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")},
        input="",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(doc["supportedVersions"])
