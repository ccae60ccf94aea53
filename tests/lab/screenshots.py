"""Screenshots of a report and a lab diagram, as in the README (docs/report.png, ...).

    flannelish lab up
    flannelish verify --report /tmp/report
    flannelish lab diagram --out /tmp/lab.svg
    python tests/lab/screenshots.py /tmp/report /tmp/lab.svg docs/

    flannelish lab up --backend wireguard    # (after lab down) the encrypted wire
    flannelish verify --report /tmp/wg
    python tests/lab/screenshots.py /tmp/wg - docs/ wireguard  # docs/report-journey-wireguard.png

Headless Debian chromium through selenium (tests/lab/browser.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import browser


def main(report: Path, svg: Path, out: Path, journey_only: str = "") -> None:
    from selenium.webdriver.common.by import By

    if journey_only:  # one journey of another lab: report-journey-<name>.png
        with browser.chromium(width=1400, height=1000) as driver:
            driver.get((report / "index.html").resolve().as_uri())
            shot = out / f"report-journey-{journey_only}.png"
            driver.find_element(By.ID, "journey-icmp-cross").screenshot(str(shot))
            print(f"wrote {shot}; console errors: {browser.console_errors(driver)}")
        return
    with browser.chromium(width=1400, height=1000) as driver:
        driver.get((report / "index.html").resolve().as_uri())
        driver.find_element(By.ID, "journey-icmp-cross").screenshot(str(out / "report-journey.png"))
        browser.full_page_png(driver, out / "report.png", clip_height=1900)
        driver.get(svg.resolve().as_uri())
        driver.find_element(By.TAG_NAME, "svg").screenshot(str(out / "diagram.png"))
        errors = browser.console_errors(driver)
    print(f"wrote {out}/report.png, report-journey.png, diagram.png; console errors: {errors}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:5])
