"""The HTTP face's calls over their lifetime, against a real daemon with real workers:
a client that leaves cancels its call (queued or waiting for its first chunk), a poison
request is not retried by the openai client (and is quarantined when sent again), and
SIGHUP takes a rotated API key."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import FAST
from daemon_helpers import write_config
from http_helpers import JSON, HttpDaemon, free_port, start_http_daemon, wait_until
from lilbee_workers import Client, testing
from lilbee_workers.errors import WorkerError
from lilbee_workers.transport.frames import DebugRequest


@pytest.fixture(scope="module")
def busy(
    tmp_path_factory: pytest.TempPathFactory, model_path: str, tiny_reranker: str
) -> Iterator[HttpDaemon]:
    """embed, chat and rerank that a socket client can keep busy with debug sleeps."""
    daemon = start_http_daemon(
        tmp_path_factory.mktemp("busy"),
        {
            "embed": {"model": model_path, "n_ctx": 256, **FAST},
            "chat": {"model": model_path, "n_ctx": 512, **FAST},
            "rerank": {"model": tiny_reranker, "n_ctx": 128, **FAST},
        },
    )
    yield daemon
    assert daemon.process.stop() == 0


def hold(daemon: HttpDaemon, role: str, seconds: float) -> threading.Thread:
    """A call that keeps ``role``'s worker busy for ``seconds``; returns once it runs."""

    def run() -> None:
        with Client(daemon.process.socket) as client:
            try:
                sleep = DebugRequest(id=0, action="sleep", seconds=seconds)
                testing.debug(client, role, sleep, 60)
            except WorkerError:
                pass

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: daemon.status(role).in_flight == 1, 30, f"the {role} blocker to run")
    return thread


CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("embed", "/v1/embeddings", {"input": "bees make honey"}),
    ("rerank", "/v1/rerank", {"query": "bees", "documents": ["hives", "stocks"]}),
    ("chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 4}),
    ("chat", "/v1/completions", {"prompt": "Honey is", "max_tokens": 4}),
    ("chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 4, "stream": True}),
]  # fmt: skip


@pytest.mark.parametrize(("role", "path", "body"), CALLS)
def test_a_queued_call_whose_client_left_never_runs(
    busy: HttpDaemon, role: str, path: str, body: dict[str, Any]
) -> None:
    """The client times out while its call waits behind a 4 s one: the call leaves the
    queue at once (streaming too: no chunk had come), and the worker never runs it."""
    blocker = hold(busy, role, 4.0)
    served = busy.status(role).served
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("POST", busy.url + path, json=body, timeout=1.0) as response,
    ):
        response.read()
    wait_until(lambda: busy.status(role).queued == 0, 1.0, "the dropped call to leave the queue")
    assert blocker.is_alive(), "the blocker ended before the check"
    blocker.join(30)
    wait_until(lambda: busy.status(role).in_flight == 0, 10, f"{role} to be idle")
    assert busy.status(role).served == served + 1  # the blocker only


def test_a_poison_request_is_sent_once_by_the_openai_client(busy: HttpDaemon) -> None:
    """One HTTP request loses two workers: the first is stopped (SIGSTOP) before the
    request reaches it, so it is killed as hung before any chunk and the call retried;
    the fresh worker aborts (SIGABRT, as a GGML_ASSERT would) under the retry. 502 with
    ``x-should-retry: false``, and the openai client (3 tries by default here) sends the
    request once."""
    before = busy.status("chat")
    stopped = before.pid
    assert stopped is not None and before.state == "ready"
    outcome: list[object] = []
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Write a long story about bees."}],
        "max_tokens": 400,
        "temperature": 0.0,
    }

    def call() -> None:
        client = busy.openai(max_retries=2, timeout=120)
        try:
            outcome.append(client.chat.completions.create(**body))
        except openai.APIError as exc:
            outcome.append(exc)

    os.kill(stopped, signal.SIGSTOP)
    thread = threading.Thread(target=call)
    thread.start()

    def retried() -> bool:
        status = busy.status("chat")
        return status.state == "busy" and status.pid not in (None, stopped)

    wait_until(retried, 60, "the call to be retried on a fresh worker")
    fresh = busy.status("chat").pid
    assert fresh is not None
    os.kill(fresh, signal.SIGABRT)  # a crash of its own: a SIGKILL would not quarantine
    thread.join(120)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, openai.InternalServerError), error
    assert error.status_code == 502
    assert error.response.headers["x-should-retry"] == "false"
    wait_until(lambda: busy.status("chat").state == "ready", 60, "chat to be ready again")
    after = busy.status("chat")
    assert after.restarts == before.restarts + 2
    # One call reached the role, and failed: the client did not send the request again.
    assert (after.served, after.errors) == (before.served, before.errors + 1)
    # Sent again (as curl in a loop would), it is quarantined: refused at once, the same
    # 502, and no worker is lost to it.
    with pytest.raises(openai.InternalServerError) as again:
        busy.openai(max_retries=2, timeout=30).chat.completions.create(**body)
    assert again.value.response.headers["x-should-retry"] == "false"
    assert "quarantined" in str(again.value)
    refused = busy.status("chat")
    assert (refused.pid, refused.restarts, refused.quarantined) == (after.pid, after.restarts, 1)
    metrics = httpx.get(busy.url + "/metrics", timeout=30).text
    assert 'lilbee_quarantined_total{role="chat"} 1.0' in metrics


def test_sighup_takes_a_rotated_key_and_a_new_body_cap(tmp_path: Path, model_path: str) -> None:
    key_file = tmp_path / "key"
    old_key, new_key = "old-" + "a" * 28, "new-" + "b" * 28
    key_file.write_text(old_key + "\n")
    roles = {"embed": {"model": model_path, "n_ctx": 256, **FAST}}
    top = {"http_api_key_file": str(key_file), "http_max_body_bytes": 64 * 1024}
    daemon = start_http_daemon(tmp_path, roles, **top)
    padded = b'{"input": "bees", "pad": "' + b"x" * 4000 + b'"}'

    def post(key: str, content: bytes = b'{"input": "bees"}') -> int:
        headers = {**JSON, "Authorization": f"Bearer {key}"}
        return httpx.post(
            daemon.url + "/v1/embeddings", content=content, headers=headers
        ).status_code

    try:
        assert post(old_key) == 200 and post(new_key) == 401
        assert post(old_key, padded) == 200
        key_file.write_text(new_key + "\n")
        other_port = free_port()
        write_config(
            tmp_path / "w.toml",
            roles,
            log_dir=str(tmp_path / "logs"),
            http_listen=f"127.0.0.1:{other_port}",
            http_api_key_file=str(key_file),
            http_max_body_bytes=2048,
        )
        daemon.process.signal(signal.SIGHUP)
        wait_until(lambda: post(old_key) == 401, 30, "the old key to be refused")
        assert post(new_key) == 200
        assert post(new_key, padded) == 413
        # http_listen cannot move without a restart: it says so, and serves on.
        wait_until(lambda: "need a daemon restart" in daemon.process.output(), 10, "the note")
        assert f"127.0.0.1:{other_port}" in daemon.process.output()
    finally:
        assert daemon.process.stop() == 0
