"""Namespaces are always removed, and the underlay is isolated but carries traffic."""

import os
import textwrap
from pathlib import Path

from flannelish.testing.netns import NetnsFactory, list_netns, remove_stale_netns
from flannelish.testing.proc import run

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).parent.parent / "conftest.py"


def test_namespaces_are_removed_even_when_the_test_fails(pytester):
    record = pytester.path / "created.txt"
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            def test_that_fails(netns_factory):
                name = netns_factory.create("doomed")
                open({str(record)!r}, "w").write(name)
                assert False, "deliberate failure"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    name = record.read_text()
    assert name.startswith("flt")
    assert name not in list_netns()


def test_leftovers_of_a_crashed_run_are_removed_but_live_runs_are_kept():
    dead_pid = 4_000_000  # above pid_max, so never alive
    stale = f"flt{dead_pid}-1-stale"
    run(["ip", "netns", "add", stale])
    live = NetnsFactory("flt", owner_pid=os.getpid())
    live_name = live.create("live")
    try:
        removed = remove_stale_netns("flt")
        assert stale in removed
        assert stale not in list_netns()
        assert live_name in list_netns()
    finally:
        live.cleanup()
        run(["ip", "netns", "del", stale], check=False)


def _root_links() -> set[str]:
    return {line.split(":")[1].strip() for line in run(["ip", "-o", "link"]).stdout.splitlines()}


def test_underlay_carries_traffic_between_hosts_without_touching_the_root_namespace(
    netns_factory,
):
    from flannelish.testing.underlay import Underlay

    before = _root_links()
    underlay = Underlay(netns_factory).create()
    a = underlay.add_host("a")
    b = underlay.add_host("b")
    assert str(a.ip) == "198.18.0.1" and str(b.ip) == "198.18.0.2"
    assert _root_links() == before
    ping = a.run("ping", "-c", "2", "-i", "0.2", "-W", "1", str(b.ip))
    assert " 0% packet loss" in ping.stdout
    route = a.run("ip", "route", "show", "default").stdout
    assert f"via {underlay.gateway} dev eth0" in route
