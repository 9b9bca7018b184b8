"""The HTTP face's edges, against a real daemon with gemma 270M (issue 18 items 8-11):
bad input is a 400 naming its ``param``; one empty-text rule for HTTP, Python and the
CLI; the config's own word ``"default"`` names the model; a SIGHUP does not call the
``--http`` flag a pending change; SIGTERM drains HTTP streams under ``drain_timeout_s``
and a stream cut past it ends with a well-formed error event."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FAST
from daemon_helpers import DaemonProcess, write_config
from http_helpers import JSON, HttpDaemon, free_port, start_http_daemon, wait_until
from lilbee_workers import Client
from lilbee_workers.errors import InvalidRequest

TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}
USER = [{"role": "user", "content": "Name a flower."}]
COUNTING = "1, 2, 3, 4, 5, 6, 7,"
"""gemma 270M continues it with numbers for hundreds of tokens (no early stop)."""


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpDaemon]:
    """Both roles on the config's own word for the bundled model, ``model = "default"``."""
    daemon = start_http_daemon(
        tmp_path_factory.mktemp("edges"),
        {
            "embed": {"model": "default", "n_ctx": 128, **TIMING},
            "chat": {"model": "default", "n_ctx": 512, **TIMING},
        },
    )
    yield daemon
    assert daemon.process.stop() == 0


CHAT = "/v1/chat/completions"
COMPLETE = "/v1/completions"
EMBED = "/v1/embeddings"
BAD: list[tuple[str, dict[str, Any], str]] = [
    (CHAT, {"messages": USER, "max_completion_tokens": 0}, "max_completion_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 2**64 + 5}, "max_tokens"),
    (COMPLETE, {"prompt": "Honey", "max_tokens": 2**64 + 5}, "max_tokens"),
    (CHAT, {"messages": USER, "seed": 2**64 + 5}, "seed"),
    (COMPLETE, {"prompt": "Honey", "seed": 2**64 + 5}, "seed"),
    (EMBED, {"input": ""}, "input"),
    (EMBED, {"input": [""]}, "input"),
    (EMBED, {"input": ["bees", ""]}, "input"),
    (EMBED, {"input": []}, "input"),
    (COMPLETE, {"prompt": "Honey", "stop": [""]}, "stop"),
    (CHAT, {"messages": USER, "stop": [""]}, "stop"),
    (COMPLETE, {"prompt": ""}, "prompt"),
    (CHAT, {"messages": [{"role": "user", "content": ""}]}, "messages"),
    (CHAT, {"messages": USER, "temperature": -1}, "temperature"),  # the worker's 400
    (EMBED, {"input": "bees " * 300}, "input"),  # over the context (the worker's 400)
]


@pytest.mark.parametrize(("path", "body", "param"), BAD)
def test_bad_input_is_400_invalid_request_naming_its_param(
    edges: HttpDaemon, path: str, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(edges.url + path, json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["param"] == param, error
    # Nothing the HTTP client cannot act on: no Python/CLI option, no encoder's words.
    assert "truncate=True" not in error["message"] and "--truncate" not in error["message"]
    assert "cannot encode" not in error["message"]


def test_empty_text_is_refused_alike_through_python_and_the_cli(edges: HttpDaemon) -> None:
    """One rule for every face (and the param crosses the socket in the error frame)."""
    with Client(edges.process.socket) as client:
        for call, param in [
            (lambda: client.embed([""]), "texts"),
            (lambda: client.embed(["bees", ""]), "texts"),
            (lambda: client.chat("").text(), "messages"),
            (lambda: client.complete("").text(), "prompt"),
        ]:
            with pytest.raises(InvalidRequest) as caught:
                call()
            assert caught.value.param == param
        assert client.embed(["bees"]).shape == (1, 640)  # the reference: text is served
    for command in (["embed", ""], ["chat", ""], ["complete", ""]):
        done = subprocess.run(
            [sys.executable, "-m", "lilbee_workers.cli.main", *command,
             "--socket", str(edges.process.socket)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "must not be empty" in done.stderr or "is empty" in done.stderr, done.stderr


def test_the_configs_word_default_names_the_roles_model(edges: HttpDaemon) -> None:
    """``model = "default"`` in the config: ``"default"`` over HTTP is the role's model,
    and answers as the role's name does (greedy, so the same text)."""
    body = {"prompt": "Honey is made by", "max_tokens": 8, "temperature": 0}
    by_role = httpx.post(edges.url + COMPLETE, json={**body, "model": "chat"}, timeout=60)
    by_word = httpx.post(edges.url + COMPLETE, json={**body, "model": "default"}, timeout=60)
    assert by_role.status_code == 200 and by_word.status_code == 200, by_word.text
    name = Path(edges.status("chat").model).stem
    by_name = httpx.post(edges.url + COMPLETE, json={**body, "model": name}, timeout=60)
    texts = {r.json()["choices"][0]["text"] for r in (by_role, by_word, by_name)}
    assert len(texts) == 1 and texts.pop().startswith(" bees")
    assert by_word.json()["model"] == name
    vectors = httpx.post(edges.url + EMBED, json={"input": "bees", "model": "default"})
    assert vectors.status_code == 200 and len(vectors.json()["data"][0]["embedding"]) == 640


# ---------------------------------------------------------------- reload (item 10)


def test_sighup_does_not_call_the_http_flag_a_pending_change(tmp_path: Path) -> None:
    """``serve --http`` with a file that has no ``http_listen``: a reload of the
    unchanged file needs no restart (the flag still serves), and HTTP keeps answering."""
    port = free_port()
    roles = {"embed": {"model": "default", "n_ctx": 128, **TIMING}}
    config = write_config(tmp_path / "w.toml", roles, log_dir=str(tmp_path / "logs"))
    daemon = DaemonProcess(config, args=("--http", f"127.0.0.1:{port}"))
    try:
        daemon.wait_ready()
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded" in daemon.output(), 60, "the reload")
        assert "need a daemon restart" not in daemon.output(), daemon.output()
        assert "needs_restart=[]" in daemon.output(), daemon.output()
        answer = httpx.post(f"http://127.0.0.1:{port}{EMBED}", json={"input": "bees"})
        assert answer.status_code == 200
    finally:
        assert daemon.stop() == 0


# ---------------------------------------------------------------- drain (item 8)


def _stream(url: str, body: dict[str, Any], events: list[str], started: threading.Event) -> None:
    """Read a streamed completion's SSE data lines into ``events``; set ``started`` at
    the third chunk."""
    with httpx.stream("POST", url + COMPLETE, json=body, headers=JSON, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                if len(events) >= 3:
                    started.set()
    started.set()


def _drain_daemon(tmp_path: Path, drain_timeout_s: float) -> HttpDaemon:
    # One thread: slower tokens, so a stream outlives uvicorn's old 5 s cut; kinder to
    # the machine too.
    roles = {"chat": {"model": "default", "n_ctx": 1024, "n_threads": 1, **TIMING}}
    return start_http_daemon(tmp_path, roles, drain_timeout_s=drain_timeout_s)


def _texts(events: list[str]) -> tuple[str, list[Any]]:
    """The streamed text, and every event parsed (each must be whole JSON)."""
    parsed = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(e["choices"][0]["text"] for e in parsed if e.get("choices"))
    return text, parsed


def test_sigterm_lets_a_long_stream_finish_within_drain_timeout(tmp_path: Path) -> None:
    """The stream in flight at SIGTERM runs to its end (its text equals the same request
    served undisturbed), though that takes longer than uvicorn's own 5 s."""
    daemon = _drain_daemon(tmp_path, 120.0)
    body = {"prompt": COUNTING, "max_tokens": 400, "temperature": 0, "seed": 1}
    try:
        undisturbed = httpx.post(daemon.url + COMPLETE, json=body, timeout=300).json()
        assert undisturbed["choices"][0]["finish_reason"] == "length"
        events: list[str] = []
        started = threading.Event()
        reader = threading.Thread(
            target=_stream, args=(daemon.url, {**body, "stream": True}, events, started)
        )
        reader.start()
        assert started.wait(120)
        signalled = time.monotonic()
        daemon.process.signal(signal.SIGTERM)
        reader.join(300)
        drained_for = time.monotonic() - signalled
        assert daemon.process.proc.wait(120) == 0
    finally:
        daemon.process.stop()
    text, parsed = _texts(events)
    assert events[-1] == "[DONE]" and not any("error" in e for e in parsed), events[-3:]
    assert text == undisturbed["choices"][0]["text"]
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert drained_for > 5, f"the stream ended {drained_for:.1f} s after SIGTERM: too soon to test"


def test_a_stream_past_a_short_drain_timeout_ends_with_an_error_event(tmp_path: Path) -> None:
    """drain_timeout_s = 2: the stream is cut between events with OpenAI's error event;
    a call still queued behind it gets a 503 JSON answer."""
    daemon = _drain_daemon(tmp_path, 2.0)
    body = {"prompt": COUNTING, "max_tokens": 900, "temperature": 0, "stream": True}
    queued: list[httpx.Response] = []
    try:
        events: list[str] = []
        started = threading.Event()
        reader = threading.Thread(target=_stream, args=(daemon.url, body, events, started))
        reader.start()
        assert started.wait(120)
        second = {"prompt": "Honey", "max_tokens": 4}
        waiter = threading.Thread(
            target=lambda: queued.append(
                httpx.post(daemon.url + COMPLETE, json=second, timeout=120)
            )
        )
        waiter.start()
        wait_until(lambda: daemon.status("chat").queued == 1, 60, "the second call to queue")
        daemon.process.signal(signal.SIGTERM)
        reader.join(120)
        waiter.join(120)
        assert daemon.process.proc.wait(120) == 0
    finally:
        daemon.process.stop()
    text, parsed = _texts(events)
    assert text.startswith(" 8, 9, 10,")  # chunks came before the cut
    last = parsed[-1]
    assert set(last) == {"error"} and events[-1] != "[DONE]", events[-3:]
    assert last["error"]["code"] == "unavailable" and "drain_timeout_s" in last["error"]["message"]
    assert len(queued) == 1 and queued[0].status_code == 503
    assert queued[0].json()["error"]["code"] == "unavailable"
