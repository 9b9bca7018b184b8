"""Which queued calls a batching worker's slots take (``RoleQueue.take_for_slots``):
pure logic of the role's line, no worker."""

from __future__ import annotations

import os

from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.queue import GROUP_PATIENCE_S, Restart, RoleQueue, WorkerExited
from lilbee_workers.transport.frames import CompleteRequest


def call(prompt: str, model: str | None = None) -> Call:
    return Call("chat", CompleteRequest(id=0, prompt=prompt, model=model))


def line(*calls: Call) -> RoleQueue:
    queue = RoleQueue("chat", 16)
    queue.release()  # no worker start holds it in these tests
    for each in calls:
        queue.enqueue(each, 0.0, lambda: None)
    return queue


def prompts(calls: list[Call]) -> list[str]:
    return [c.request.prompt for c in calls]  # type: ignore[attr-defined]


def test_slots_take_calls_in_order_up_to_the_free_ones_and_count_them_running() -> None:
    queue = line(call("a"), call("b"), call("c"))
    assert prompts(queue.take_for_slots(2, running=1)) == ["a", "b"]
    assert queue.counts() == (1, 3)  # one waits; three run (one before, two taken)
    assert prompts(queue.take_for_slots(0, running=2)) == []
    assert queue.counts() == (1, 2)  # a finished call frees its count


def test_a_call_for_another_model_keeps_its_place_and_later_calls_go_in() -> None:
    queue = line(call("other", model="big"), call("a"), call("b"))
    queue.prefer = lambda c: c.request.model is None  # type: ignore[attr-defined]
    assert prompts(queue.take_for_slots(4, running=1)) == ["a", "b"]
    assert queue.counts()[0] == 1


def test_a_retried_call_stops_the_taking_so_it_runs_alone_after_the_slots_drain() -> None:
    retried = call("retry")
    retried.retried = True
    queue = line(call("a"), retried, call("b"))
    assert prompts(queue.take_for_slots(4, running=1)) == ["a"]
    assert prompts(queue.take_for_slots(4, running=2)) == []  # "b" waits behind it


def test_no_call_is_taken_while_a_control_waits_so_a_restart_drains_the_slots() -> None:
    queue = line(call("a"))
    queue.post(Restart(None))
    assert queue.take_for_slots(4, running=1) == []
    queue.close()
    assert queue.take_for_slots(4, running=1) == []


def test_a_listening_slot_run_is_woken_by_a_new_call_and_a_control() -> None:
    queue = line()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        queue.listen(fd)
        queue.enqueue(call("a"), 0.0, lambda: None)
        assert os.eventfd_read(fd) == 1
        queue.post(Restart(None))
        assert os.eventfd_read(fd) == 1
        queue.listen(-1)
        queue.enqueue(call("b"), 0.0, lambda: None)
        try:
            os.eventfd_read(fd)
            raise AssertionError("woken after it stopped listening")
        except BlockingIOError:
            pass
    finally:
        os.close(fd)


def test_a_call_for_another_model_that_waited_its_patience_lets_the_slots_drain() -> None:
    other = call("other", model="big")
    queue = line(other, call("a"), call("b"))
    queue.prefer = lambda c: c.request.model is None  # type: ignore[attr-defined]
    other.enqueued_at -= GROUP_PATIENCE_S  # it has waited long enough
    assert queue.take_for_slots(4, running=1) == []  # its switch comes next


def test_a_workers_exit_note_does_not_hold_the_slots_shut() -> None:
    """After a model switch, the old worker's exit is posted while the new one serves:
    it needs no drain, so calls still go into the new worker's slots."""
    queue = line(call("a"))
    queue.post(WorkerExited(worker=None))  # type: ignore[arg-type]
    assert prompts(queue.take_for_slots(4, running=1)) == ["a"]
