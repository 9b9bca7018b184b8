"""The HTTP face's calls over their lifetime, against a real daemon with real workers:
a poison request is not retried by the openai client."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import openai
import pytest

from conftest import FAST
from http_helpers import HttpDaemon, start_http_daemon, wait_until


@pytest.fixture(scope="module")
def busy(
    tmp_path_factory: pytest.TempPathFactory, model_path: str, tiny_reranker: str
) -> Iterator[HttpDaemon]:
    """embed, chat and rerank with fault injection on."""
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


def test_a_poison_request_is_sent_once_by_the_openai_client(busy: HttpDaemon) -> None:
    """The chat worker is SIGKILLed twice under one request: 502, and ``x-should-retry:
    false`` stops the openai client (3 tries by default here) from sending it again."""
    before = busy.status("chat")
    outcome: list[object] = []

    def call() -> None:
        client = busy.openai(max_retries=2, timeout=120)
        try:
            outcome.append(
                client.chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": "Write a long story about bees."}],
                    max_tokens=400,
                    temperature=0.0,
                )
            )
        except openai.APIError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    killed: set[int] = set()
    for _ in range(2):

        def running() -> bool:
            status = busy.status("chat")
            return status.state == "busy" and status.pid is not None and status.pid not in killed

        wait_until(running, 60, "the chat call to run on a fresh worker")
        pid = busy.status("chat").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    thread.join(120)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, openai.InternalServerError), error
    assert error.status_code == 502 and "poison request" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    wait_until(lambda: busy.status("chat").state == "ready", 60, "chat to be ready again")
    after = busy.status("chat")
    assert after.restarts == before.restarts + 2
    assert after.served == before.served  # no retry from the client ran it again
