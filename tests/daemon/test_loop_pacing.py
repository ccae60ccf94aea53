"""ReconcileLoop's periodic pass: every ``interval``, or sparser when a pass is costly."""

from __future__ import annotations

import time

import pytest

from flannelish.daemon.loop import SAFETY_NET_SHARE, ReconcileLoop
from flannelish.daemon.reconciler import PassResult

pytestmark = pytest.mark.unit


class TimedReconciler:
    """A reconciler whose full pass reports a fixed duration (and records when it ran)."""

    def __init__(self, seconds: float, errors: int = 0) -> None:
        self.seconds = seconds
        self.errors = errors
        self.runs: list[float] = []

    def reconcile(self, peers, check_base, between=None) -> PassResult:
        self.runs.append(time.monotonic())
        return PassResult(seconds=self.seconds, errors=self.errors)


def passes_within(reconciler: TimedReconciler, interval: float, window: float) -> int:
    loop = ReconcileLoop(reconciler, list, interval)  # type: ignore[arg-type]
    loop.start()
    try:
        loop.trigger()
        time.sleep(window)
    finally:
        loop.stop()
    return len(reconciler.runs)


def test_cheap_passes_run_every_interval():
    # 0.1 s interval, 1 ms passes: about 8 passes in 0.75 s.
    assert passes_within(TimedReconciler(0.001), 0.1, 0.75) >= 5


def test_a_costly_pass_spaces_the_next_one_to_its_share_of_the_time():
    # A pass reporting 0.05 s waits SAFETY_NET_SHARE * 0.05 = 1 s, not the 0.1 s interval.
    assert SAFETY_NET_SHARE * 0.05 >= 0.75
    assert passes_within(TimedReconciler(0.05), 0.1, 0.75) == 1


def test_a_failed_costly_pass_is_still_retried_within_the_interval():
    # Errors are retried after min(RETRY_SECONDS, interval), whatever the pass cost.
    assert passes_within(TimedReconciler(0.05, errors=1), 0.1, 0.75) >= 5


def test_a_trigger_runs_a_pass_at_once_even_when_the_periodic_one_is_spaced():
    reconciler = TimedReconciler(0.05)
    loop = ReconcileLoop(reconciler, list, 0.1)  # type: ignore[arg-type]
    loop.start()
    try:
        loop.trigger()
        time.sleep(0.2)
        asked = time.monotonic()
        loop.trigger()  # e.g. the kernel monitor saw one of our routes deleted
        time.sleep(0.2)
    finally:
        loop.stop()
    assert len(reconciler.runs) == 2
    assert reconciler.runs[1] - asked < 0.15
