"""Faults for real: SIGKILL, SIGSTOP, poison requests, missing models, bad frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest

from conftest import pid_alive, wait_for_state, wait_until
from lilbee_workers import (
    Cancelled,
    InvalidRequest,
    Overloaded,
    Supervisor,
    SupervisorConfig,
    WorkerCrashed,
    WorkerTimeout,
    WorkerUnavailable,
    testing,
)
from lilbee_workers.transport import codec
from lilbee_workers.transport.frames import (
    ChatResult,
    DebugRequest,
    EmbedRequest,
    ErrorFrame,
    NoopResult,
    Ping,
)

TEXTS = [f"sentence number {i} about bees and honey and flowers" for i in range(16)]


def restarts(sup: Supervisor, role: str) -> int:
    return sup.role_status(role).restarts


def kill_when_busy(
    sup: Supervisor, role: str, sig: signal.Signals, delay: float
) -> threading.Thread:
    """Send ``sig`` to the role's worker ``delay`` seconds after a call is in flight."""
    pid = sup.worker_pid(role)
    assert pid is not None

    def run() -> None:
        wait_until(lambda: sup.role_status(role).in_flight == 1, what="call in flight")
        time.sleep(delay)
        os.kill(pid, sig)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigkill_mid_embed_is_retried_once_with_the_right_answer(sup: Supervisor) -> None:
    reference = sup.embed(TEXTS)
    before = restarts(sup, "embed")
    retried_before = sup.role_status("embed").retried_ok
    old_pid = sup.worker_pid("embed")
    killer = kill_when_busy(sup, "embed", signal.SIGKILL, delay=0.3)
    vectors = sup.embed(TEXTS)
    killer.join()
    assert np.allclose(vectors, reference, atol=1e-4)
    assert restarts(sup, "embed") == before + 1
    assert sup.worker_pid("embed") != old_pid
    assert not pid_alive(old_pid)  # type: ignore[arg-type]
    status = {s.role: s for s in sup.status()}["embed"]
    assert "SIGKILL" in status.last_exit and status.state == "ready"
    assert status.retried_ok == retried_before + 1


def test_sigstop_is_seen_within_heartbeat_timeout_and_the_call_retried(sup: Supervisor) -> None:
    reference = sup.embed(TEXTS[:4])
    before = restarts(sup, "embed")
    old_pid = sup.worker_pid("embed")
    assert old_pid is not None
    killer = kill_when_busy(sup, "embed", signal.SIGSTOP, delay=0.0)
    started = time.monotonic()
    vectors = sup.embed(TEXTS[:4])
    elapsed = time.monotonic() - started
    killer.join()
    assert np.allclose(vectors, reference, atol=1e-4)
    assert restarts(sup, "embed") == before + 1
    last_exit = {s.role: s for s in sup.status()}["embed"].last_exit
    assert "hung: no heartbeat reply within 1s" in last_exit
    # heartbeat timeout (1 s) + one interval + restart and the retried call
    assert elapsed < 15
    wait_until(lambda: not pid_alive(old_pid), what="stopped worker reaped")


def test_request_that_kills_the_worker_twice_is_a_poison_error(sup: Supervisor) -> None:
    before = restarts(sup, "chat")
    with pytest.raises(WorkerCrashed) as caught:
        testing.debug(sup, "chat", DebugRequest(id=0, action="abort"))
    error = caught.value
    assert "failed on this request 2 times" in error.message
    assert "SIGABRT" in error.message
    assert error.log_path.endswith("chat.log")
    assert "chat worker ready" in error.log_tail  # the fresh worker's own log lines
    assert restarts(sup, "chat") == before + 2
    wait_for_state(sup, "chat", "ready")
    assert sup.chat("hello", max_tokens=3).collect().completion_tokens > 0


@pytest.mark.parametrize(
    ("action", "exit_text"), [("exit", "exited with code 3"), ("exit0", "exited with code 0")]
)
def test_crash_on_first_attempt_only_is_retried_transparently(
    sup: Supervisor, action: Any, exit_text: str
) -> None:
    # exit0: a worker that exits "successfully" out of the blue is a crash all the same.
    generation = sup.role_status("chat").generation
    frame = testing.debug(
        sup, "chat", DebugRequest(id=0, action=action, below_generation=generation + 1)
    )
    assert isinstance(frame, NoopResult)
    assert exit_text in {s.role: s for s in sup.status()}["chat"].last_exit


def test_handler_errors_are_not_crashes(sup: Supervisor) -> None:
    before = restarts(sup, "embed")
    pid = sup.worker_pid("embed")
    with pytest.raises(InvalidRequest):
        sup.embed(["bee " * 3000])
    assert restarts(sup, "embed") == before
    assert sup.worker_pid("embed") == pid


def test_kill_between_calls_costs_the_next_call_nothing(sup: Supervisor) -> None:
    old_pid = sup.worker_pid("embed")
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    vectors = sup.embed(["after an idle crash"])  # must not raise
    assert vectors.shape == (1, 640)
    assert sup.worker_pid("embed") != old_pid


def test_streaming_retry_only_before_the_first_chunk(sup: Supervisor) -> None:
    # Killed mid-stream after chunks reached the caller: not retried, and says so.
    stream = sup.chat("Tell a long story about a bee.", max_tokens=400, temperature=0.0)
    first = next(stream)
    assert first
    pid = sup.worker_pid("chat")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match=r"mid-stream after \d+ chunk\(s\)"):
        for _ in stream:
            pass
    # Killed before any chunk: the request is lost with the worker, retried, answered.
    wait_for_state(sup, "chat", "ready")
    pid = sup.worker_pid("chat")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    stream = sup.chat("Say yes.", max_tokens=4, temperature=0.0)
    wait_until(lambda: sup.role_status("chat").in_flight == 1, what="chat in flight")
    os.kill(pid, signal.SIGKILL)
    result = stream.collect()
    assert result.completion_tokens > 0


def test_abandoned_stream_stops_generation_and_worker_stays_warm(sup: Supervisor) -> None:
    pid = sup.worker_pid("chat")
    stream = sup.chat("Write a very long essay about bees.", max_tokens=600, temperature=0.7)
    call: Any = stream._call
    assert next(stream) and next(stream)
    stream.close()
    wait_until(lambda: call.finished, timeout=5, what="worker to stop after cancel")
    frames = []
    while True:
        frame = call._replies.get(timeout=1)
        frames.append(frame)
        if isinstance(frame, (ChatResult, ErrorFrame)):
            break
    final = frames[-1]
    assert isinstance(final, ChatResult) and final.finish_reason == "cancelled"
    assert final.completion_tokens < 40  # stopped within a few tokens of the cancel
    started = time.monotonic()
    assert sup.chat("hi", max_tokens=2).collect().completion_tokens > 0
    assert time.monotonic() - started < 5
    assert sup.worker_pid("chat") == pid


def test_caller_timeout_cancels_and_raises_worker_timeout(sup: Supervisor) -> None:
    pid = sup.worker_pid("chat")
    with pytest.raises(WorkerTimeout):
        sup.chat("Write a long poem.", max_tokens=600, timeout=0.5).collect()
    assert sup.chat("hi", max_tokens=2).collect().completion_tokens > 0
    assert sup.worker_pid("chat") == pid


def test_malformed_frames_into_the_data_pipe(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    with Supervisor(make_config({"embed": {}}, max_frame_bytes=64 * 1024)) as sup:
        worker = sup._dispatcher("embed").worker
        assert worker is not None
        pid = worker.pid
        garbage = b"\xc1\xff\x00 not msgpack"
        unknown = msgspec.msgpack.encode({"k": "rm_rf", "id": 5})
        wrong = msgspec.msgpack.encode({"k": "embed", "id": 6, "texts": 42})
        oversized = codec.encode(EmbedRequest(id=7, texts=["y" * 100_000]))
        not_a_request = codec.encode(Ping(seq=1))
        for raw, expected_id in (
            (garbage, 0),
            (unknown, 5),
            (wrong, 6),
            (oversized, 7),
            (not_a_request, 0),
        ):
            worker.data.send_raw(raw)
            assert worker.data.poll(10)
            reply = worker.data.recv()
            assert isinstance(reply, ErrorFrame), reply
            assert reply.kind == "protocol" and reply.id == expected_id
        assert worker.alive() and worker.pid == pid
        assert sup.embed(["still serving"]).shape == (1, 640)


def test_missing_model_fails_that_role_only(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    config = make_config({"embed": {}, "chat": {"model": "/nonexistent/model.gguf"}})
    with Supervisor(config) as sup:
        status = {s.role: s for s in sup.status()}
        assert status["chat"].state == "failed"
        assert "model file not found: /nonexistent/model.gguf" in status["chat"].last_exit
        with pytest.raises(WorkerUnavailable, match="model file not found"):
            sup.chat("hi").collect()
        assert status["embed"].state == "ready"
        assert sup.embed(["embed keeps serving"]).shape == (1, 640)


def test_crash_loop_opens_the_circuit_and_restart_closes_it(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    config = make_config({"embed": {}, "chat": {"max_restarts": 1}})
    with Supervisor(config) as sup:
        with pytest.raises(WorkerCrashed):
            testing.debug(sup, "chat", DebugRequest(id=0, action="abort"))
        wait_for_state(sup, "chat", "failed")
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="crashed 2 times"):
            sup.chat("hi").collect()
        assert time.monotonic() - started < 0.5  # at once, no waiting on a worker
        assert sup.embed(["other roles never notice"]).shape == (1, 640)
        [status] = sup.restart("chat")
        assert status.state == "ready"
        assert sup.chat("hi", max_tokens=2).collect().completion_tokens > 0


def test_runaway_call_hits_its_deadline_and_is_retried(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    config = make_config({"chat": {"kill_after_s": 1.0}})
    with Supervisor(config) as sup:
        generation = sup.role_status("chat").generation
        started = time.monotonic()
        frame = testing.debug(
            sup,
            "chat",
            DebugRequest(id=0, action="sleep", seconds=30, below_generation=generation + 1),
        )
        assert isinstance(frame, NoopResult)
        assert time.monotonic() - started < 15
        last_exit = sup.status()[0].last_exit
        assert "overran the 1s kill_after_s deadline" in last_exit


def test_full_queue_answers_overloaded(make_config: Callable[..., SupervisorConfig]) -> None:
    with Supervisor(make_config({"chat": {"queue_size": 1}})) as sup:
        busy = sup._open("chat", DebugRequest(id=0, action="sleep", seconds=3), None)
        wait_until(lambda: sup.role_status("chat").in_flight == 1, what="in flight")
        abandoned = sup._open("chat", DebugRequest(id=0, action="sleep", seconds=0), None)
        with pytest.raises(Overloaded, match="queue is full"):
            sup._open("chat", DebugRequest(id=0, action="sleep", seconds=0), None)
        # A queued caller that gives up frees its place at once, not when its turn comes.
        abandoned.cancel()
        admitted = sup._open("chat", DebugRequest(id=0, action="sleep", seconds=0), None)
        with pytest.raises(Cancelled):
            abandoned.next_frame(1)
        busy.cancel()
        assert isinstance(admitted.next_frame(10), NoopResult)


def test_close_leaves_no_worker_behind(make_config: Callable[..., SupervisorConfig]) -> None:
    sup = Supervisor(make_config()).start()
    pids = [sup.worker_pid(role) for role in ("embed", "chat")]
    assert all(pids)
    sup.close()
    for pid in pids:
        assert not pid_alive(pid)  # type: ignore[arg-type]
    with pytest.raises(WorkerUnavailable):
        sup.embed(["closed"])


SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import msgspec
    from lilbee_workers import Supervisor, SupervisorConfig

    def main():
        config = msgspec.json.decode(sys.argv[1].encode(), type=SupervisorConfig)
        sup = Supervisor(config).start()
        print(" ".join(str(sup.worker_pid(r)) for r in config.roles), flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        main()
    """
)


def test_workers_die_with_a_sigkilled_supervisor(
    make_config: Callable[..., SupervisorConfig], tmp_path: Any
) -> None:
    script = tmp_path / "run_supervisor.py"
    script.write_text(SUPERVISOR_SCRIPT)
    config = msgspec.json.encode(make_config()).decode()
    proc = subprocess.Popen(
        [sys.executable, str(script), config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 2.0
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        survivors = [p for p in pids if pid_alive(p)]
        for p in survivors:
            os.kill(p, signal.SIGKILL)
        assert not survivors, f"workers outlived the supervisor: {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
