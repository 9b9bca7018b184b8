"""The worker's cancel bookkeeping: a cancel only ever stops the request it names."""

from __future__ import annotations

import threading

from lilbee_workers.child.state import RequestState


def test_cancel_of_the_running_request_sets_its_flag() -> None:
    state = RequestState()
    state.begin(7)
    assert not state.cancel.is_set()
    state.cancel_request(7)
    assert state.cancel.is_set()
    state.end()
    assert not state.cancel.is_set() and state.served == 1


def test_cancel_that_arrives_before_its_request_is_kept_for_it() -> None:
    state = RequestState()
    state.cancel_request(5)  # the health pipe outran the data pipe
    state.begin(5)
    assert state.cancel.is_set()


def test_early_cancel_does_not_leak_to_another_request() -> None:
    state = RequestState()
    state.cancel_request(6)
    state.begin(5)
    assert not state.cancel.is_set()
    state.end()
    state.begin(6)
    assert state.cancel.is_set()


def test_begin_does_not_clear_a_cancel_meant_for_the_new_request() -> None:
    state = RequestState()
    state.begin(1)
    state.end()
    state.cancel_request(2)
    state.begin(2)
    assert state.cancel.is_set()


def test_late_cancel_of_a_finished_request_does_not_hit_the_next() -> None:
    state = RequestState()
    state.begin(3)
    state.end()
    state.begin(4)
    state.cancel_request(3)  # arrives after request 3 finished
    assert not state.cancel.is_set()
    state.end()
    state.cancel_request(3)
    state.begin(9)
    assert not state.cancel.is_set()


def test_cancel_current_stops_only_a_running_request() -> None:
    state = RequestState()
    state.cancel_current()
    state.begin(1)
    assert not state.cancel.is_set()
    state.cancel_current()
    assert state.cancel.is_set()


def test_concurrent_late_cancels_never_cancel_a_newer_request() -> None:
    """Hammer the race of issue 9 item 10: cancels of finished ids from another thread."""
    state = RequestState()
    wrongly_cancelled = []
    done = threading.Event()

    def canceller() -> None:
        request_id = 0
        while not done.is_set():
            current = state.in_flight
            if current > 1:
                state.cancel_request(current - 1)  # always an older, finished request
            request_id += 1

    thread = threading.Thread(target=canceller)
    thread.start()
    try:
        for request_id in range(1, 20_000):
            state.begin(request_id)
            if state.cancel.is_set():
                wrongly_cancelled.append(request_id)
            state.end()
    finally:
        done.set()
        thread.join()
    assert wrongly_cancelled == []
