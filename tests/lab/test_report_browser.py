"""One live 3-node lab: its nodes answer like real nodes (status, doctor, /metrics inside a
node), `verify --report` costs little on top of `verify`, and a real browser (Debian's
chromium, headless, through selenium and chromium-driver) opens the report and the
`lab diagram` SVG, finds the diagram and every journey lane, and sees no console error.

Screenshots land in the test's tmp dir, or in $FLANNELISH_SCREENSHOTS when set (that is
how docs/report.png and docs/diagram.png are made)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from flannelish.lab import procs
from flannelish.lab.state import load_state

from . import browser

pytestmark = pytest.mark.slow

REPORT_BUDGET = 15.0  # seconds `--report` may add to `verify` for 3 nodes


def _ok(result, *needles):
    assert result.returncode == 0, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stdout, result.stdout


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def _every_lane_shows(driver, flows: list[dict]) -> None:
    """Each journey section has one visible lane per hop, seen where the packet must be."""
    from selenium.webdriver.common.by import By

    for flow in flows:
        section = driver.find_element(By.CSS_SELECTOR, f'section.journey[data-flow="{flow["id"]}"]')
        assert section.get_attribute("data-family") == str(flow["family"])
        lanes = section.find_elements(By.CSS_SELECTOR, "div.lane")
        assert [lane.get_attribute("data-hop") for lane in lanes] == [
            h["key"] for h in flow["hops"]
        ]
        for lane, hop in zip(lanes, flow["hops"], strict=True):
            assert lane.is_displayed() and lane.size["height"] > 20
            assert lane.get_attribute("data-seen") == ("true" if hop["expect_seen"] else "false")
        assert "journey ok" in section.get_attribute("class")


def _browser_screenshot_dir(tmp_path: Path) -> Path:
    """Skip the browser half when no browser runs here; else where screenshots go."""
    reason = browser.unavailable()
    if reason:
        pytest.skip(f"no browser check: {reason}")
    shots = Path(os.environ.get("FLANNELISH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _report_cost(stdout: str) -> float:
    return float(re.search(r"\(([\d.]+)s on top of verify", stdout).group(1))


def test_live_lab_nodes_report_and_diagram_in_a_browser(lab_cli, tmp_path):
    _ok(lab_cli.lab("up"), "is up in")

    # -- lab nodes answer like real nodes ----------------------------------------------------
    _ok(lab_cli.lab("exec", "node1", "--", "flannelish", "status"), "ready", "2 programmed")
    _ok(lab_cli.lab("exec", "node2", "--", "flannelish", "doctor"), "subnet-env", "mtu")
    metrics = lab_cli.lab(
        "exec", "node3", "--", "sh", "-c", "curl -sf localhost:$FLANNELD_HEALTHZ_PORT/metrics"
    )
    _ok(metrics, 'flannelish_peers{backend="vxlan",state="programmed"} 2.0')

    # -- the report, and what it costs on top of verify -------------------------------------
    plain, plain_s = _timed(lambda: lab_cli.verify())
    _ok(plain, "verify passed")
    report_dir = tmp_path / "report"
    with_report, report_s = _timed(lambda: lab_cli.verify("--report", str(report_dir)))
    _ok(with_report, "verify passed", "report: ")
    for flow in ("icmp-cross", "tcp-cross", "udp-cross", "icmp-same"):
        assert f"✓ journey {flow}" in with_report.stdout, with_report.stdout
    # The report's own cost, measured inside the command: starting and stopping the per-hop
    # capture, then journeys, diagram and page. (The wall-clock difference between the two
    # runs is printed too, but on a shared 2-core machine it is mostly noise.)
    cost = _report_cost(with_report.stdout)
    print(f"verify {plain_s:.1f}s, verify --report {report_s:.1f}s; report cost {cost:.1f}s")
    assert cost < REPORT_BUDGET, with_report.stdout
    index = report_dir / "index.html"
    flows = json.loads((report_dir / "pcaps" / "flows.json").read_text())
    for flow in flows:
        for hop in flow["hops"]:
            assert (report_dir / hop["pcap"]).exists(), hop["pcap"]

    svg_path = tmp_path / "diagram.svg"
    _ok(lab_cli.lab("diagram", "--out", str(svg_path)), "3 nodes, 6 pods, 3 peer links, 0 problems")
    # A daemon that does not answer (stopped for a moment) is drawn as down, its links unhealthy.
    daemon = load_state(lab_cli.dir).node("node3").daemon
    assert procs.is_ours(daemon)
    down_path = tmp_path / "diagram-down.svg"
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        down = lab_cli.lab("diagram", "--out", str(down_path))
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    _ok(down, "3 problems")
    assert "node3 daemon down" in down.stderr and "node1-node3 unhealthy" in down.stderr

    # -- a real browser -----------------------------------------------------------------------
    shots = _browser_screenshot_dir(tmp_path)
    from selenium.webdriver.common.by import By

    with browser.chromium() as driver:
        driver.get(index.as_uri())
        assert "flannelish verify" in driver.title
        diagram = driver.find_element(By.CSS_SELECTOR, "section#diagram svg")
        assert diagram.size["width"] > 300 and diagram.size["height"] > 150
        assert len(diagram.find_elements(By.CSS_SELECTOR, "g.peer")) == 3
        rows = driver.find_elements(By.CSS_SELECTOR, "table.assertions tbody tr")
        assert len(rows) == 10
        _every_lane_shows(driver, flows)
        assert browser.console_errors(driver) == []
        browser.full_page_png(driver, shots / "report-full.png")
        driver.find_element(By.ID, "journey-icmp-cross").screenshot(
            str(shots / "report-journey.png")
        )
        browser.full_page_png(driver, shots / "report.png", clip_height=2300)

        driver.get(svg_path.as_uri())
        for ident in (
            "topology",
            "underlay",
            "node-node1",
            "node-node3",
            "pod-node2-pod2",
            "peer-node1-node2",
            "peer-node1-node3",
            "peer-node2-node3",
        ):
            assert driver.find_element(By.ID, ident).is_displayed(), ident
        assert len(driver.find_elements(By.CSS_SELECTOR, "g.pod")) == 6
        assert browser.console_errors(driver) == []
        driver.get(down_path.as_uri())
        assert "health-down" in driver.find_element(By.ID, "node-node3").get_attribute("class")
        assert len(driver.find_elements(By.CSS_SELECTOR, "g.peer-unhealthy")) == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, "g.peer-ok")) == 1
        assert browser.console_errors(driver) == []
        driver.find_element(By.TAG_NAME, "svg").screenshot(str(shots / "diagram.png"))
    for name in ("report.png", "report-journey.png", "diagram.png"):
        assert (shots / name).stat().st_size > 10_000
    if shots != tmp_path:
        shutil.copyfile(svg_path, shots / "diagram.svg")


def test_dual_stack_lab_nodes_and_report_per_family_in_a_browser(lab_cli, tmp_path):
    """A dual-stack lab: its nodes answer for both families, and the report follows four
    flows per family (IPv6 over flannel-v6.1 inside IPv6 VXLAN), seen in a real browser."""
    _ok(lab_cli.lab("up", "--ip-family", "dual"), "is up in")
    _ok(lab_cli.lab("exec", "node1", "--", "flannelish", "status"), "ipv4", "ipv6", "flannel-v6.1")
    doctor = lab_cli.lab("exec", "node2", "--", "flannelish", "doctor")
    _ok(doctor, "subnet-env", "mtu")
    assert "error" not in doctor.stdout, doctor.stdout
    metrics = lab_cli.lab(
        "exec", "node3", "--", "sh", "-c", "curl -sf localhost:$FLANNELD_HEALTHZ_PORT/metrics"
    )
    _ok(metrics, 'flannelish_peers_programmed_family{family="ipv6"} 2.0')

    report_dir = tmp_path / "report"
    result = lab_cli.verify("--report", str(report_dir))
    _ok(result, "verify passed", "report: ")
    for flow in ("icmp", "tcp", "udp"):
        for tag in ("", "6"):
            assert f"✓ journey {flow}{tag}-cross" in result.stdout, result.stdout
    assert "✓ journey icmp6-same" in result.stdout
    cost = _report_cost(result.stdout)
    print(f"dual-stack report cost {cost:.1f}s")
    assert cost < REPORT_BUDGET, result.stdout
    flows = json.loads((report_dir / "pcaps" / "flows.json").read_text())
    assert sorted(f["family"] for f in flows) == [4] * 4 + [6] * 4

    shots = _browser_screenshot_dir(tmp_path)
    from selenium.webdriver.common.by import By

    with browser.chromium() as driver:
        driver.get((report_dir / "index.html").as_uri())
        _every_lane_shows(driver, flows)
        diagram = driver.find_element(By.CSS_SELECTOR, "section#diagram svg")
        assert "fd18::1" in diagram.text and "flannel-v6.1 VTEP" in diagram.text
        wire = driver.find_element(By.ID, "lane-icmp6-cross-underlay-br0")
        assert "IPv6 (outer)" in wire.text and "IPv6 (pod)" in wire.text and "VXLAN" in wire.text
        assert browser.console_errors(driver) == []
        driver.find_element(By.ID, "journey-icmp6-cross").screenshot(
            str(shots / "report-journey-ipv6.png")
        )
    assert (shots / "report-journey-ipv6.png").stat().st_size > 10_000
