"""A real browser for the report and diagram tests: Debian's chromium, headless, via
selenium and Debian's chromium-driver (no driver download: Selenium Manager is kept
offline and both paths are given)."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def unavailable() -> str:
    """Why the browser cannot run here ('' when it can)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (Debian chromium and chromium-driver; "
            "make setup installs them)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if shutil.which("dot") is None:
        return "Graphviz's dot is not installed (Debian graphviz)"
    return ""


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach out for a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--disable-background-networking",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def full_page_png(driver: Any, path: Path, clip_height: int | None = None) -> Path:
    """A screenshot of the whole page (or its first `clip_height` CSS pixels)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width, height = int(size["width"]), int(size["height"])
    if clip_height:
        height = min(height, clip_height)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
