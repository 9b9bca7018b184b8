"""Poison quarantine for real: a request that killed its worker twice is refused at
once when sent again (no worker started, none killed), others are served, and a
restart of the role clears it."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conftest import wait_for_state
from lilbee_workers import Supervisor, SupervisorConfig, WorkerCrashed, testing
from lilbee_workers.transport.frames import DebugRequest, NoopResult


def test_a_poison_request_is_refused_at_once_until_a_restart(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    config = make_config({"chat": {"max_restarts": 100, "quarantine_s": 300.0}})
    poison = DebugRequest(id=0, action="abort")  # SIGABRT in the worker, every time
    with Supervisor(config) as sup:
        with pytest.raises(WorkerCrashed) as first:
            testing.debug(sup, "chat", poison)
        assert "failed on this request 2 times" in first.value.message
        assert first.value.retryable is False
        wait_for_state(sup, "chat", "ready")
        before = sup.role_status("chat")
        assert before.quarantined == 0 and before.pid is not None

        started = time.monotonic()
        with pytest.raises(WorkerCrashed) as again:
            testing.debug(sup, "chat", poison)
        assert time.monotonic() - started < 2.0  # at once: no worker was involved
        assert again.value.retryable is False and again.value.kind == "crashed"
        assert "quarantined for another" in again.value.message
        assert "SIGABRT" in again.value.message  # what it did the first time
        after = sup.role_status("chat")
        assert after.pid == before.pid and after.restarts == before.restarts
        assert after.generation == before.generation and after.state == "ready"
        assert after.quarantined == 1

        # Everyone else is served: another request, and the same action with other content.
        assert sup.complete("Honey is made by", max_tokens=3, temperature=0.0).text()
        frame = testing.debug(sup, "chat", DebugRequest(id=0, action="sleep", seconds=0.01))
        assert isinstance(frame, NoopResult)
        assert sup.role_status("chat").pid == before.pid

        # An operator restart clears it: the request runs (and kills workers) again.
        sup.restart("chat")
        restarted = sup.role_status("chat")
        with pytest.raises(WorkerCrashed) as third:
            testing.debug(sup, "chat", poison)
        assert "failed on this request 2 times" in third.value.message
        assert sup.role_status("chat").restarts == restarted.restarts + 2
