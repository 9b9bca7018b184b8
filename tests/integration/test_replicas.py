"""Replicas with real workers (issue 11): a replica SIGKILLed mid-call has its call
answered by another replica without waiting for the restart, and a rolling restart
under 8 concurrent callers fails no call. Answers are checked against llama-cpp-python
called directly."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from conftest import direct_embeddings, wait_until
from lilbee_workers import Supervisor, SupervisorConfig

TEXTS = [f"honey bees number {i} fan the hive to dry the nectar" for i in range(8)]


@pytest.fixture(scope="module")
def reference(model_path: str) -> np.ndarray[Any, Any]:
    """TEXTS embedded by llama-cpp-python in this process, as the worker configures it."""
    return direct_embeddings(model_path, TEXTS)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def two_replicas(make_config: Callable[..., SupervisorConfig]) -> Iterator[Supervisor]:
    config = make_config({"embed": {"replicas": 2, "max_restarts": 100, "coalesce": False}})
    with Supervisor(config) as sup:
        yield sup


def ready_replicas(sup: Supervisor) -> int:
    return sum(r.state == "ready" for r in sup.role_status("embed").replicas)


def test_a_replica_killed_mid_call_has_its_call_answered_by_the_other_at_once(
    two_replicas: Supervisor, reference: np.ndarray[Any, Any]
) -> None:
    sup = two_replicas
    wait_until(lambda: ready_replicas(sup) == 2, timeout=60, what="both replicas ready")
    began = time.monotonic()
    sup.embed(TEXTS)
    call_s = time.monotonic() - began  # the call's own time, measured here
    before = sup.role_status("embed").replicas

    result: dict[str, Any] = {}

    def call() -> None:
        result["got"] = sup.embed(TEXTS)
        result["status"] = sup.role_status("embed")  # as the answer arrives

    thread = threading.Thread(target=call)
    began = time.monotonic()
    thread.start()
    wait_until(lambda: any(r.in_flight for r in sup.role_status("embed").replicas), what="the call")
    [busy] = [r for r in sup.role_status("embed").replicas if r.in_flight]
    assert busy.replica is not None and busy.pid is not None
    os.kill(busy.pid, signal.SIGKILL)
    thread.join(60)
    answered_s = time.monotonic() - began
    killed, other = busy.replica, 1 - busy.replica

    assert np.abs(result["got"] - reference).max() < 1e-5
    at_answer = result["status"]
    assert at_answer.replicas[killed].restarts == before[killed].restarts + 1
    assert "SIGKILL" in at_answer.replicas[killed].last_exit
    assert at_answer.replicas[killed].retried == before[killed].retried + 1
    assert at_answer.replicas[other].retried_ok == before[other].retried_ok + 1
    # Answered by the other replica while the killed one was still coming back (an
    # interpreter start and a model load), at about the cost of the call itself.
    assert at_answer.replicas[killed].state != "ready"
    assert at_answer.state == "degraded"
    assert answered_s < 3 * call_s + 1.0, f"{answered_s:.2f}s vs a {call_s:.2f}s call"
    wait_until(lambda: ready_replicas(sup) == 2, timeout=60, what="the replica back")
    assert sup.role_status("embed").state == "ready"


def test_a_rolling_restart_under_8_callers_fails_no_call(
    two_replicas: Supervisor, reference: np.ndarray[Any, Any]
) -> None:
    sup = two_replicas
    wait_until(lambda: ready_replicas(sup) == 2, timeout=60, what="both replicas ready")
    pids_before = {r.pid for r in sup.role_status("embed").replicas}
    stop = threading.Event()
    failures: list[BaseException] = []
    wrong: list[int] = []
    answered = [0] * 8

    def caller(index: int) -> None:
        text = index % len(TEXTS)
        while not stop.is_set():
            try:
                vector = sup.embed([TEXTS[text]])[0]
            except BaseException as exc:  # any failure is what this test is about
                failures.append(exc)
                return
            if float(vector @ reference[text]) < 0.999:
                wrong.append(index)
            answered[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(answered), timeout=60, what="every caller answered once")
        before = sum(answered)
        during = sup.restart("embed")  # waits for both replicas, one after the other
        served_during = sum(answered) - before
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures
    assert not wrong
    # Calls kept being answered while the replicas rolled (one at a time, a model load
    # each: on a busy 2-core machine a load slows the serving replica a lot).
    assert served_during >= 2
    [status] = during
    assert status.state in ("ready", "busy")  # the callers were still calling
    assert not pids_before & {r.pid for r in status.replicas}  # both really restarted


def test_the_status_table_shows_each_replica_under_its_role(two_replicas: Supervisor) -> None:
    from rich.console import Console

    from lilbee_workers.cli.output import status_table

    wait_until(lambda: ready_replicas(two_replicas) == 2, timeout=60, what="both replicas ready")
    console = Console(record=True, width=160)
    console.print(status_table(two_replicas.status()))
    lines = console.export_text().splitlines()
    replicas = two_replicas.role_status("embed").replicas
    for replica in replicas:
        [row] = [line for line in lines if line.strip().startswith(f"#{replica.replica} ")]
        assert str(replica.pid) in row and "ready" in row
    [role_row] = [line for line in lines if line.startswith("embed ")]
    assert "ready" in role_row
