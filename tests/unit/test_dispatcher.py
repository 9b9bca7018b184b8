"""The dispatcher's recovery rules against a fake worker (tests/unit/fake_worker.py):
retry once on a fresh worker, a typed error on the second loss, kill a hung worker at
its deadline, never retry a stream the caller already saw, fail the role when workers
keep dying, replace a worker that dies between calls. No model, no subprocess."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_worker import Script

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import InvalidRequest, WorkerCrashed, WorkerUnavailable
from lilbee_workers.parent.dispatcher import RoleDispatcher
from lilbee_workers.transport.frames import ChatChunk, ChatRequest, EmbedRequest
from lilbee_workers.types import ChatMessage, RoleState

EMBED = EmbedRequest(id=7, texts=["x"])
CHAT = ChatRequest(id=7, messages=[ChatMessage(role="user", content="hi")])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def start_role(tmp_path: Path) -> Iterator[Callable[..., RoleDispatcher]]:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    started: list[RoleDispatcher] = []

    def start(script: Script, **settings: float) -> RoleDispatcher:
        config = RoleConfig(
            model=str(model),
            restart_backoff_s=0.01,
            restart_backoff_max_s=0.02,
            **settings,  # type: ignore[arg-type]
        )
        dispatcher = RoleDispatcher(
            script.role, config, tmp_path, 1 << 20, new_worker=script.factory
        )
        dispatcher.start()
        assert dispatcher.started.wait(10)
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        dispatcher.close()
        assert dispatcher.join(10)


def test_a_call_is_answered_by_the_first_worker_under_the_callers_id(start_role) -> None:
    script = Script()
    role = start_role(script)
    reply = role.submit(EMBED).next_frame(5)
    assert reply.id == 7  # the attempt's own id on the pipe, the caller's id back
    assert script.workers[0].requests[0].id != 7
    assert role.status().restarts == 0 and role.status().generation == 1


def test_a_crash_under_a_call_is_retried_once_on_a_fresh_worker(start_role) -> None:
    script = Script(on_request={1: ["crash"]})
    role = start_role(script)
    reply = role.submit(EMBED).next_frame(5)
    assert reply.id == 7
    assert [len(w.requests) for w in script.workers] == [1, 1]  # same request, new worker
    assert script.workers[1].requests[0].texts == ["x"]
    status = role.status()
    assert status.restarts == 1 and status.generation == 2 and status.state == "ready"


def test_a_second_loss_is_a_typed_error_naming_the_log(start_role) -> None:
    script = Script(on_request={1: ["crash"], 2: ["crash"]})
    role = start_role(script, quarantine_s=0)  # EMBED is sent again below
    with pytest.raises(WorkerCrashed) as caught:
        role.submit(EMBED).next_frame(5)
    assert "2 times" in caught.value.message and caught.value.log_path.endswith("embed.log")
    assert "fake log of generation 2" in str(caught.value)  # the log's tail, for the reader
    wait_for(lambda: role.state == RoleState.READY)  # and the role serves again
    assert role.submit(EMBED).next_frame(5).id == 7
    assert role.status().generation == 3


def test_a_hung_worker_is_killed_at_its_deadline_and_the_call_retried(start_role) -> None:
    script = Script(on_request={1: ["hang"]})
    role = start_role(script, kill_after_s=0.3)
    reply = role.submit(EMBED).next_frame(10)
    assert reply.id == 7
    hung = script.workers[0]
    assert hung.kill_reason is not None and "kill_after_s" in hung.kill_reason
    assert role.status().restarts == 1


def test_a_stream_the_caller_saw_part_of_is_not_retried(start_role) -> None:
    script = Script(role="chat", on_request={1: ["chunk_then_crash"]})
    role = start_role(script)
    call = role.submit(CHAT)
    first = call.next_frame(5)
    assert isinstance(first, ChatChunk) and first.text == "par"
    with pytest.raises(WorkerCrashed) as caught:
        call.next_frame(5)
    assert "after 1 chunk(s) had been delivered" in caught.value.message
    assert len(script.workers[0].requests) == 1
    wait_for(lambda: len(script.workers) == 2 and role.state == RoleState.READY)
    assert script.workers[1].requests == []  # nothing was replayed


def test_an_error_answer_is_passed_on_not_retried(start_role) -> None:
    script = Script(on_request={1: ["error"]})
    role = start_role(script)
    with pytest.raises(InvalidRequest, match="bad input"):
        role.submit(EMBED).next_frame(5)
    assert len(script.workers) == 1 and role.status().restarts == 0


def test_workers_that_keep_dying_fail_the_role_and_calls_are_refused(start_role) -> None:
    script = Script(on_request={g: ["crash"] for g in range(1, 10)})
    role = start_role(script, max_restarts=2, failed_cooldown_s=60, quarantine_s=0)
    with pytest.raises(WorkerCrashed):
        role.submit(EMBED).next_frame(5)  # two workers lost under it
    with pytest.raises(WorkerUnavailable, match="crashed 3 times within 60s"):
        role.submit(EMBED).next_frame(5)  # the third loss opens the circuit
    assert role.state == RoleState.FAILED
    spawned = len(script.workers)
    with pytest.raises(WorkerUnavailable, match="crashed .* times"):
        role.submit(EMBED).next_frame(5)
    assert len(script.workers) == spawned  # refused without another try


def test_a_role_whose_model_never_loads_fails_with_the_reason(start_role) -> None:
    script = Script(fail_every_start=True)
    role = start_role(script, max_restarts=1)
    assert role.state == RoleState.FAILED
    with pytest.raises(WorkerUnavailable, match="failed to load"):
        role.submit(EMBED).next_frame(5)


def test_a_worker_dying_between_calls_is_replaced_before_the_next_call(start_role) -> None:
    script = Script()
    role = start_role(script)
    role.submit(EMBED).next_frame(5)
    script.workers[0].crash_now()
    wait_for(lambda: role.status().generation == 2 and role.state == RoleState.READY)
    assert role.submit(EMBED).next_frame(5).id == 7
    assert script.workers[0].requests and len(script.workers[1].requests) == 1


def test_close_answers_queued_calls_and_stops_the_worker(start_role) -> None:
    script = Script(role="chat", on_request={1: ["hang"]})
    role = start_role(script, kill_after_s=30, cancel_grace_s=0.2)
    running = role.submit(CHAT)
    wait_for(lambda: len(script.workers[0].requests) == 1)
    queued = role.submit(CHAT)
    role.close()
    with pytest.raises(WorkerUnavailable, match="shutting down"):
        queued.next_frame(5)
    running.cancel()
    assert role.join(10)
    assert not script.workers[0].alive()


def test_a_queued_call_whose_deadline_passes_never_reaches_a_worker(start_role) -> None:
    from lilbee_workers.errors import WorkerTimeout

    script = Script(role="chat", on_request={1: ["hang"]})
    role = start_role(script, kill_after_s=30, cancel_grace_s=0.2)
    running = role.submit(CHAT)
    wait_for(lambda: len(script.workers[0].requests) == 1)
    queued = role.submit(CHAT, timeout=0.2)
    time.sleep(0.4)
    running.cancel()  # the worker ignores it; after the grace it is replaced
    with pytest.raises(WorkerTimeout, match="within its timeout"):
        queued.next_frame(10)
    wait_for(lambda: role.state == RoleState.READY)
    assert sum(len(w.requests) for w in script.workers) == 1  # never sent to a worker


def test_controls_after_close_are_answered_at_once(start_role) -> None:
    role = start_role(Script())
    role.close()
    assert role.join(10)
    assert role.restart().wait(2)
    assert role.unload().wait(2)
    load = role.load("other")
    assert load.done.wait(2) and isinstance(load.error, WorkerUnavailable)


def test_a_failed_role_loads_the_model_a_call_names_once_cooled_down(tmp_path: Path) -> None:
    from lilbee_workers.config import ModelEntry

    for name in ("a", "b"):
        (tmp_path / f"{name}.gguf").write_bytes(b"GGUF")
    models = {n: ModelEntry(path=str(tmp_path / f"{n}.gguf")) for n in ("a", "b")}
    config = RoleConfig(
        model="a", models=models, max_restarts=0, failed_cooldown_s=0.3, restart_backoff_s=0.01
    )
    script = Script(fail_start={1})  # model a never comes up the first time
    role = RoleDispatcher("embed", config, tmp_path, 1 << 20, new_worker=script.factory)
    role.start()
    try:
        assert role.started.wait(10) and role.state == RoleState.FAILED
        time.sleep(0.4)  # the cool-down is over
        reply = role.submit(EmbedRequest(id=7, texts=["x"], model="b")).next_frame(5)
        assert reply.id == 7
        served = [w for w in script.workers if w.requests]
        assert [w.model_path for w in served] == [str(tmp_path / "b.gguf")]  # not model a
    finally:
        role.close()
        assert role.join(10)


def test_keep_alive_never_turns_a_failed_role_into_an_unloaded_one(start_role) -> None:
    script = Script(on_request={1: ["crash"]})
    role = start_role(script, max_restarts=0, failed_cooldown_s=60, keep_alive_s=0.2)
    with pytest.raises((WorkerCrashed, WorkerUnavailable)):
        role.submit(EMBED).next_frame(5)
    wait_for(lambda: role.state == RoleState.FAILED)
    time.sleep(0.5)  # past keep_alive_s
    assert role.state == RoleState.FAILED
    with pytest.raises(WorkerUnavailable):
        role.submit(EMBED).next_frame(5)  # still cooling down: refused, no new worker
    assert len(script.workers) == 1


def test_a_new_load_shows_0_percent_from_its_first_status_never_the_last_loads_100(
    start_role,
) -> None:
    script = Script()
    make_worker, gate, asked = script.factory, threading.Event(), threading.Event()

    def slow_to_spawn(*args: Any) -> Any:  # the gap between "starting" and the new worker
        if args[2] == 2:
            asked.set()
            assert gate.wait(10)
        return make_worker(*args)

    script.factory = slow_to_spawn  # type: ignore[method-assign]
    role = start_role(script)
    script.workers[0].on_progress(1.0)
    assert role.status().load_progress == 1.0 and role.status().loading is None
    done = role.restart()
    try:
        assert asked.wait(10)
        status = role.status()
        assert status.state == "starting" and status.loading == 0.0, status
    finally:
        gate.set()
    assert done.wait(10) and role.status().state == "ready"
