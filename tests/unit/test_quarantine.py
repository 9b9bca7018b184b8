"""The quarantine rule on its own: which failures quarantine a request, what matches
it again, how long, and what clears it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_worker import Script

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerCrashed, WorkerTimeout
from lilbee_workers.http.errors import retry_headers, worker_error_body
from lilbee_workers.http.metrics import render
from lilbee_workers.parent.batch import MergedCall
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.policy import crashed_error
from lilbee_workers.parent.quarantine import MAX_ENTRIES, Quarantine, fingerprint
from lilbee_workers.parent.replicas import ReplicaSet
from lilbee_workers.transport.frames import DebugRequest, EmbedRequest
from lilbee_workers.types import RoleStatus

POISON = crashed_error("embed", 2, "killed by signal SIGABRT", 0, "/l/embed.log", "")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def default(_request: object) -> str:
    return "small"


def refusal(quarantine: Quarantine, request: EmbedRequest, model: str = "small") -> str | None:
    try:
        quarantine.check(request, model)
    except WorkerCrashed as exc:
        assert exc.retryable is False and exc.role == "embed"
        return exc.message
    return None


def test_a_poison_request_is_refused_for_quarantine_s_whatever_its_id() -> None:
    clock = Clock()
    quarantine = Quarantine("embed", clock)
    quarantine.remember(Call("embed", EmbedRequest(id=7, texts=["x"]), None), default, POISON, 300)
    message = refusal(quarantine, EmbedRequest(id=99, texts=["x"]))
    assert message is not None and "quarantined for another 300s" in message
    assert "poison request" in message and "restart embed" in message
    assert refusal(quarantine, EmbedRequest(id=1, texts=["y"])) is None  # other content
    assert refusal(quarantine, EmbedRequest(id=1, texts=["x"]), model="big") is None
    assert quarantine.refused == 1
    clock.now += 299.5
    assert "another 0s" in (refusal(quarantine, EmbedRequest(id=2, texts=["x"])) or "")
    clock.now += 1.0
    assert refusal(quarantine, EmbedRequest(id=3, texts=["x"])) is None  # served again
    assert quarantine.held() == 0 and quarantine.refused == 2


def test_only_a_lone_call_that_crashed_every_attempt_is_quarantined() -> None:
    quarantine = Quarantine("embed")
    request = EmbedRequest(id=1, texts=["x"])
    once = crashed_error("embed", 1, "killed by signal SIGKILL", 3, "/l/embed.log", "")
    assert once.retryable  # mid-stream after one crash: nothing against the request
    quarantine.remember(Call("embed", request, None), default, once, 300)
    quarantine.remember(Call("embed", request, None), default, WorkerTimeout("t"), 300)
    merged = MergedCall([Call("embed", request, None), Call("embed", request, None)])
    quarantine.remember(merged, default, POISON, 300)  # whose fault is not known
    quarantine.remember(Call("embed", request, None), default, POISON, 0)  # off
    assert quarantine.held() == 0 and refusal(quarantine, request) is None


def test_clear_forgets_and_the_table_is_bounded() -> None:
    quarantine = Quarantine("embed")
    for index in range(MAX_ENTRIES + 10):
        request = EmbedRequest(id=1, texts=[str(index)])
        quarantine.remember(Call("embed", request, None), default, POISON, 300)
    assert quarantine.held() == MAX_ENTRIES
    assert refusal(quarantine, EmbedRequest(id=1, texts=["0"])) is None  # the oldest went
    assert refusal(quarantine, EmbedRequest(id=1, texts=[str(MAX_ENTRIES + 9)])) is not None
    quarantine.clear()
    assert quarantine.held() == 0


def test_the_fingerprint_ignores_id_and_route_but_not_role_model_or_content() -> None:
    a = fingerprint("chat", "m", DebugRequest(id=1, action="abort"))
    assert a == fingerprint("chat", "m", DebugRequest(id=5, action="abort", role="chat"))
    assert a != fingerprint("embed", "m", DebugRequest(id=1, action="abort"))
    assert a != fingerprint("chat", "n", DebugRequest(id=1, action="abort"))
    assert a != fingerprint("chat", "m", DebugRequest(id=1, action="exit"))


def test_over_http_a_refusal_is_the_poison_answer_a_client_does_not_retry() -> None:
    quarantine = Quarantine("embed")
    request = EmbedRequest(id=1, texts=["x"])
    quarantine.remember(Call("embed", request, None), default, POISON, 300)
    try:
        quarantine.check(request, "small")
    except WorkerCrashed as refused:
        status, _ = worker_error_body(refused)
        assert status == 502 and retry_headers(status, refused) == {"x-should-retry": "false"}
    else:
        raise AssertionError("not refused")


def test_status_and_metrics_count_the_refusals() -> None:
    text = render(lambda: [RoleStatus(role="chat", state="ready", quarantined=3)]).decode()
    assert 'lilbee_quarantined_total{role="chat"} 3.0' in text


def test_replicas_share_one_quarantine_and_a_restart_clears_it(tmp_path: Path) -> None:
    """A poison lost on one replica and again on the other is refused on both after;
    the role counts the refusal once, and ``restart`` lets the request run again."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    scripts = [Script(on_request={1: ["crash"]}) for _ in range(2)]  # each first worker
    config = RoleConfig(model=str(model), replicas=2, restart_backoff_s=0.01)
    role = ReplicaSet("embed", config, tmp_path, 1 << 20, new_worker=lambda i: scripts[i].factory)
    role.start()
    try:
        assert role.wait_started(10)
        poison = EmbedRequest(id=7, texts=["poison"])
        with pytest.raises(WorkerCrashed, match="2 times"):
            role.submit(poison).next_frame(10)
        sent = sum(len(w.requests) for script in scripts for w in script.workers)
        for _ in range(4):  # whichever replica it is routed to
            with pytest.raises(WorkerCrashed, match="quarantined"):
                role.submit(EmbedRequest(id=8, texts=["poison"])).next_frame(10)
        assert sum(len(w.requests) for script in scripts for w in script.workers) == sent
        assert role.status().quarantined == 4
        assert role.submit(EmbedRequest(id=9, texts=["fine"])).next_frame(10).id == 9
        role.restart().wait(10)
        assert role.submit(poison).next_frame(10).id == 7  # the fresh workers answer it
    finally:
        role.close()
        assert role.join(10)


@pytest.mark.parametrize(
    ("first", "second", "quarantined"),
    [
        ("crash", "crash", True),
        ("outside_kill", "outside_kill", False),
        ("crash", "outside_kill", False),
        ("outside_kill", "crash", False),
    ],
)
def test_a_request_lost_to_outside_sigkills_is_poison_but_not_quarantined(
    tmp_path: Path, first: str, second: str, quarantined: bool
) -> None:
    """A loss to a SIGKILL from outside (an operator, a chaos test) proves nothing about
    the request: after two losses the caller still gets the poison error, but the next
    send runs (the chaos soak's reference call after the chaos was refused for 5
    minutes). Only a request that made every worker die by itself is quarantined."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    script = Script(on_request={1: [first], 2: [second]})  # type: ignore[list-item]
    config = RoleConfig(model=str(model), restart_backoff_s=0.01, coalesce=False)
    role = ReplicaSet("embed", config, tmp_path, 1 << 20, new_worker=lambda i: script.factory)
    role.start()
    try:
        assert role.wait_started(10)
        with pytest.raises(WorkerCrashed, match="2 times"):
            role.submit(EmbedRequest(id=7, texts=["x"])).next_frame(10)
        if quarantined:
            with pytest.raises(WorkerCrashed, match="quarantined"):
                role.submit(EmbedRequest(id=8, texts=["x"])).next_frame(10)
        else:
            assert role.submit(EmbedRequest(id=8, texts=["x"])).next_frame(10).id == 8
        assert role.status().quarantined == int(quarantined)
    finally:
        role.close()
        assert role.join(10)
