"""Retry, backoff and circuit rules (parent/policy.py) on a fake clock: no sleeping."""

from __future__ import annotations

import pytest

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerCrashed
from lilbee_workers.parent.policy import RestartPolicy, StartFailed, crashed_error, should_retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: FakeClock, **settings: float) -> RestartPolicy:
    config = RoleConfig(
        model="m.gguf",
        max_restarts=int(settings.get("max_restarts", 2)),
        restart_window_s=settings.get("restart_window_s", 60.0),
        restart_backoff_s=settings.get("restart_backoff_s", 0.5),
        restart_backoff_max_s=settings.get("restart_backoff_max_s", 4.0),
        failed_cooldown_s=settings.get("failed_cooldown_s", 30.0),
    )
    return RestartPolicy(config, clock=clock)


def test_a_call_is_retried_once_and_a_stream_only_before_its_first_chunk() -> None:
    assert should_retry(0, chunks_delivered=0)
    assert not should_retry(1, chunks_delivered=0)  # the retry failed too: poison request
    assert not should_retry(0, chunks_delivered=1)  # the caller saw part of a stream


def test_crashed_error_says_what_happened() -> None:
    twice = crashed_error("chat", 2, "killed by signal SIGKILL", 0, "/l/chat.log", "tail")
    assert isinstance(twice, WorkerCrashed) and "2 times (poison request?)" in twice.message
    mid = crashed_error("chat", 1, "exited with code 3", 4, "/l/chat.log", "")
    assert "after 4 chunk(s)" in mid.message and "not retried" in mid.message


def test_only_a_crash_on_every_attempt_is_not_retryable() -> None:
    """One crash mid-stream says nothing against the request; two say it is poison."""
    assert crashed_error("chat", 1, "killed", 4, "/l/chat.log", "").retryable
    assert not crashed_error("chat", 2, "killed", 0, "/l/chat.log", "").retryable
    assert not crashed_error("chat", 2, "killed", 4, "/l/chat.log", "").retryable  # the retry too


def test_first_restart_is_immediate_then_backoff_grows_and_caps() -> None:
    clock = FakeClock()
    rules = policy(clock, max_restarts=10)
    delays = []
    for _ in range(6):
        rules.record_crash()
        delays.append(rules.restart_delay())
    assert delays[0] == 0.0
    assert delays[1:4] == [0.5, 1.0, 2.0]
    assert delays[4:] == [4.0, 4.0]  # capped at restart_backoff_max_s


def test_crashes_leave_the_window_as_time_passes() -> None:
    clock = FakeClock()
    rules = policy(clock, max_restarts=2, restart_window_s=60.0)
    for _ in range(3):
        rules.record_crash()
    assert rules.circuit_open()
    clock.now += 61
    assert rules.recent_crashes() == 0 and not rules.circuit_open()


def test_open_circuit_cools_down_then_reset_forgets() -> None:
    clock = FakeClock()
    rules = policy(clock, failed_cooldown_s=30.0)
    rules.open_circuit()
    assert rules.cooling_down()
    clock.now += 29.9
    assert rules.cooling_down()
    clock.now += 0.2
    assert not rules.cooling_down()
    rules.record_crash()
    rules.reset()
    assert rules.recent_crashes() == 0 and not rules.cooling_down()


def test_bring_up_retries_crashes_with_backoff_and_stops_at_the_circuit() -> None:
    clock = FakeClock()
    rules = policy(clock, max_restarts=2)
    slept: list[float] = []
    attempts = []

    def start() -> str:
        attempts.append(clock.now)
        raise StartFailed("died while loading", crashed=True)

    with pytest.raises(StartFailed):
        rules.bring_up(start, sleep=slept.append)
    assert len(attempts) == 3  # 3 crashes > max_restarts=2: the circuit opens
    assert slept == [0.0, 0.5]


def test_bring_up_does_not_retry_a_model_that_cannot_load() -> None:
    clock = FakeClock()
    rules = policy(clock)
    attempts = []

    def start() -> str:
        attempts.append(1)
        raise StartFailed("model file not found", crashed=False)

    with pytest.raises(StartFailed, match="not found"):
        rules.bring_up(start, sleep=lambda seconds: None)
    assert attempts == [1] and rules.recent_crashes() == 0
