"""The stall rule on its own: a busy worker whose work count stands still too long."""

from __future__ import annotations

from lilbee_workers.child.state import RequestState
from lilbee_workers.parent.monitor import StallWatch
from lilbee_workers.transport.frames import Pong


def pong(in_flight: int, progress: int | None) -> Pong:
    return Pong(seq=1, in_flight=in_flight, progress=progress)


def test_same_request_at_the_same_count_for_after_s_is_a_stall() -> None:
    watch = StallWatch(2.0)
    assert watch.observe(pong(5, 100), now=10.0) is None
    assert watch.observe(pong(5, 100), now=11.9) is None
    reason = watch.observe(pong(5, 100), now=12.0)
    assert reason == "stalled: busy with no progress for 2s (stall_after_s)"


def test_progress_or_a_new_request_restarts_the_clock() -> None:
    watch = StallWatch(2.0)
    watch.observe(pong(5, 100), now=10.0)
    assert watch.observe(pong(5, 101), now=11.5) is None  # it moved
    assert watch.observe(pong(5, 101), now=13.0) is None  # 1.5 s since it moved
    assert watch.observe(pong(6, 101), now=14.0) is None  # another request began
    assert watch.observe(pong(6, 101), now=15.9) is None
    assert watch.observe(pong(6, 101), now=16.0) is not None


def test_idle_unmetered_or_disabled_is_never_a_stall() -> None:
    for after_s in (None, 0.0):
        watch = StallWatch(after_s)
        assert all(watch.observe(pong(5, 1), now=t) is None for t in (0.0, 100.0, 1e6))
    watch = StallWatch(1.0)
    assert all(watch.observe(pong(0, 7), now=t) is None for t in (0.0, 50.0))  # idle
    assert all(watch.observe(pong(5, None), now=t) is None for t in (0.0, 50.0))  # vision
    # idle in between: the clock starts again when work resumes
    watch.observe(pong(5, 3), now=100.0)
    watch.observe(pong(0, 3), now=100.5)
    assert watch.observe(pong(5, 3), now=101.5) is None


def test_the_worker_counts_steps_and_reports_none_when_unmetered() -> None:
    state = RequestState()
    for _ in range(3):
        state.step()
    assert state.progress() == 3
    state.metered = False
    assert state.progress() is None
