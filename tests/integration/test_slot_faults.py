"""The failure rules with streams side by side on one worker, for real (SIGKILL, SIGSTOP,
a request that aborts its worker): every stream on a lost worker is lost at once; one
that had sent no chunk is retried once, alone; one that had sent chunks fails with its
chunk count; a request waiting for a slot is not touched; a poison request is the only
one called poison. Retried answers are checked against llama-cpp-python directly (a
stream alone gives the solo answer exactly)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_llama import write_tiny_llama

from conftest import direct_llama, pid_alive, solo_completion, wait_until
from lilbee_workers import (
    InvalidRequest,
    ModelError,
    Supervisor,
    SupervisorConfig,
    WorkerCrashed,
    testing,
)
from lilbee_workers.transport.frames import DebugRequest

PROMPTS = ["Honey is made by", "The capital of France is", "Once upon a time"]
N_CTX = 512


@pytest.fixture(scope="module")
def llm(model_path: str) -> Iterator[Any]:
    with direct_llama(model_path, n_ctx=N_CTX) as model:
        yield model


def solo(llm: Any, prompt: str, max_tokens: int) -> str:
    return str(solo_completion(llm, prompt, max_tokens=max_tokens)["text"])


def batched(
    make_config: Callable[..., SupervisorConfig], parallel: int, **settings: Any
) -> Supervisor:
    chat = {"parallel": parallel, "n_threads": 2, "n_ctx": N_CTX, "max_restarts": 50}
    return Supervisor(make_config({"chat": {**chat, **settings}}))


class Caller(threading.Thread):
    """A caller streaming one completion (or running one debug request)."""

    def __init__(self, run: Callable[[Caller], Any]) -> None:
        super().__init__(daemon=True)
        self._run = run
        self.chunks = 0
        self.answer: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.answer = self._run(self)
        except BaseException as exc:  # the test reads it
            self.error = exc


def complete(sup: Supervisor, prompt: str, max_tokens: int) -> Caller:
    def run(caller: Caller) -> str:
        stream = sup.complete(prompt, max_tokens=max_tokens, temperature=0)
        for _ in stream:
            caller.chunks += 1
        return stream.collect().text

    return Caller(run)


def in_flight(sup: Supervisor, count: int) -> Callable[[], bool]:
    return lambda: sup.role_status("chat").in_flight == count


def test_streams_lost_before_their_first_chunk_are_each_retried_alone_after_sigkill(
    make_config: Callable[..., SupervisorConfig], llm: Any
) -> None:
    # A stopped worker takes the requests (they wait in its pipe) but sends nothing;
    # the long heartbeat timeout leaves the SIGKILL to this test.
    with batched(make_config, 4, heartbeat_timeout_s=60.0) as sup:
        pid = sup.worker_pid("chat")
        os.kill(pid, signal.SIGSTOP)
        callers = [complete(sup, prompt, 16) for prompt in PROMPTS]
        wait_until(in_flight(sup, 3), 30, "three streams sent to the stopped worker")
        os.kill(pid, signal.SIGKILL)
        for caller, prompt in zip(callers, PROMPTS, strict=True):
            caller.join(120)
            assert caller.error is None, caller.error
            assert caller.answer == solo(llm, prompt, 16)  # alone: the solo answer, exactly
        status = sup.role_status("chat")
        assert status.retried == 3 and status.retried_ok == 3
        assert status.restarts == 1 and status.pid != pid
        assert status.quarantined == 0


def test_streams_that_sent_chunks_fail_with_their_count_and_a_waiting_call_is_served(
    make_config: Callable[..., SupervisorConfig], llm: Any
) -> None:
    with batched(make_config, 2) as sup:
        pid = sup.worker_pid("chat")
        running = [complete(sup, prompt, 400) for prompt in PROMPTS[:2]]
        wait_until(lambda: all(c.chunks >= 2 for c in running), 60, "both streams streaming")
        waiting = complete(sup, PROMPTS[2], 16)  # no free slot: it waits in line
        wait_until(lambda: sup.role_status("chat").queued == 1, 30, "a call waiting")
        os.kill(pid, signal.SIGKILL)
        for caller in running:
            caller.join(120)
            assert isinstance(caller.error, WorkerCrashed), caller.error
            assert f"after {caller.chunks} chunk(s)" in caller.error.message
            assert "SIGKILL" in caller.error.message
        waiting.join(120)
        assert waiting.error is None and waiting.answer == solo(llm, PROMPTS[2], 16)
        status = sup.role_status("chat")
        assert status.restarts == 1 and status.retried == 0 and status.pid != pid


def test_a_stopped_batching_worker_is_killed_as_hung_and_its_streams_fail_with_counts(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    with batched(make_config, 2) as sup:
        pid = sup.worker_pid("chat")
        running = [complete(sup, prompt, 400) for prompt in PROMPTS[:2]]
        wait_until(lambda: all(c.chunks >= 1 for c in running), 60, "both streams streaming")
        os.kill(pid, signal.SIGSTOP)
        for caller in running:
            caller.join(120)
            assert isinstance(caller.error, WorkerCrashed), caller.error
            assert "chunk(s)" in caller.error.message and "hung" in caller.error.message
        wait_until(lambda: not pid_alive(pid), 30, "the stopped worker reaped")
        assert sup.complete(PROMPTS[0], max_tokens=4, temperature=0).collect().text
        assert sup.role_status("chat").restarts == 1


def test_a_poison_request_beside_streams_is_the_only_one_called_poison(
    make_config: Callable[..., SupervisorConfig], llm: Any
) -> None:
    with batched(make_config, 4, heartbeat_timeout_s=60.0) as sup:
        pid = sup.worker_pid("chat")
        os.kill(pid, signal.SIGSTOP)  # so all three reach the worker before it runs any
        streams = [complete(sup, prompt, 12) for prompt in PROMPTS[:2]]
        wait_until(in_flight(sup, 2), 30, "two streams sent")
        poison = Caller(lambda _: testing.debug(sup, "chat", DebugRequest(id=0, action="abort")))
        wait_until(in_flight(sup, 3), 30, "the poison sent beside them")
        os.kill(pid, signal.SIGCONT)  # it reads all three, then aborts
        poison.join(120)
        assert isinstance(poison.error, WorkerCrashed), poison.error
        assert "failed on this request 2 times" in poison.error.message
        for caller, prompt in zip(streams, PROMPTS[:2], strict=True):
            caller.join(120)
            assert caller.error is None, caller.error
            assert caller.answer == solo(llm, prompt, 12)
        status = sup.role_status("chat")
        assert status.restarts == 2  # the batch's loss, and the poison's own retry
        assert status.retried == 3 and status.retried_ok == 2
        with pytest.raises(WorkerCrashed, match="quarantined"):
            testing.debug(sup, "chat", DebugRequest(id=0, action="abort"))


ALTERNATING = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "[INST] {{ m['content'] }} [/INST]{% endfor %}"
)


def test_a_request_its_chat_template_refuses_fails_alone_beside_a_stream(
    make_config: Callable[..., SupervisorConfig], tmp_path: Path
) -> None:
    """A template that raises (Mistral-style ``raise_exception``) is the request's own
    error, answered as on a one-call worker (``ModelError``): the stream beside it runs
    on, the worker lives, nothing is called poison."""
    model = write_tiny_llama(tmp_path / "alternating.gguf", chat_template=ALTERNATING)
    chat = {"model": str(model), "parallel": 2, "n_ctx": 512, "n_threads": 1}
    with Supervisor(make_config({"chat": chat})) as sup:
        pid = sup.worker_pid("chat")
        stream = complete(sup, "the bee", 300)
        wait_until(lambda: stream.chunks >= 1, 60, "the stream streaming")
        twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        with pytest.raises(ModelError, match="Conversation roles must alternate"):
            sup.chat(twice, max_tokens=5).collect()
        stream.join(120)
        assert stream.error is None and stream.answer
        status = sup.role_status("chat")
        assert status.pid == pid and status.restarts == 0 and status.quarantined == 0


def test_a_reply_over_the_frame_cap_fails_alone_beside_a_stream(
    make_config: Callable[..., SupervisorConfig], llm: Any
) -> None:
    """A stream whose whole text outgrows ``max_frame_bytes`` ends with an error naming
    it; the worker lives and the short stream beside it gets llama-cpp-python's answer."""
    chat = {"parallel": 2, "n_threads": 2, "n_ctx": N_CTX}
    with Supervisor(make_config({"chat": chat}, max_frame_bytes=1024)) as sup:
        pid = sup.worker_pid("chat")
        big = complete(sup, PROMPTS[0], 400)  # its result carries ~1.5 KiB of text
        short = complete(sup, PROMPTS[1], 12)
        big.join(120)
        short.join(120)
        assert isinstance(big.error, InvalidRequest), big.error
        assert "reply too large" in big.error.message and big.chunks > 0
        assert short.error is None and short.answer == solo(llm, PROMPTS[1], 12)
        assert sup.role_status("chat").pid == pid
