"""Progress-stall detection for real: a decode wedged inside llama.cpp, with the worker's
Python still answering every ping, is killed after ``stall_after_s`` and the call
retried; a long call that keeps computing is left alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import pid_alive, wait_until
from lilbee_workers import Supervisor, SupervisorConfig, testing
from lilbee_workers.transport.frames import DebugRequest, NoopResult

PROMPT = "Honey is made by"
SAMPLING: dict[str, Any] = {"temperature": 0.0, "seed": 1}


@pytest.fixture(scope="module")
def direct(model_path: str) -> Iterator[Any]:
    """gemma 3 270M in this process, opened as the chat worker opens it."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=1024, n_batch=2048, n_ubatch=512, verbose=False)
    yield llm
    llm.close()


def direct_text(llm: Any, prompt: str, max_tokens: int) -> str:
    llm.reset()
    out = llm.create_completion(prompt, max_tokens=max_tokens, top_p=0.95, **SAMPLING)
    return str(out["choices"][0]["text"])


def test_a_decode_wedged_in_c_is_killed_after_stall_after_s_and_retried(
    make_config: Callable[..., SupervisorConfig], direct: Any
) -> None:
    # kill_after_s is large: only stall detection can end the wedge in time.
    config = make_config({"chat": {"stall_after_s": 2.0, "kill_after_s": 300.0}})
    with Supervisor(config) as sup:
        wedged = sup.worker_pid("chat")
        assert wedged is not None
        before = sup.role_status("chat").restarts
        # The worker's next request blocks inside llama.cpp's abort callback, on an
        # event its heartbeat thread never needs: pings go on being answered.
        armed = testing.debug(sup, "chat", DebugRequest(id=0, action="wedge"))
        assert isinstance(armed, NoopResult)
        started = time.monotonic()
        result = sup.complete(PROMPT, max_tokens=12, **SAMPLING).collect()
        elapsed = time.monotonic() - started
        assert result.text == direct_text(direct, PROMPT, 12)  # the undisturbed answer
        assert "bees" in result.text
        status = sup.role_status("chat")
        assert "stalled: busy with no progress for 2s (stall_after_s)" in status.last_exit
        assert "no heartbeat reply" not in status.last_exit  # its pings were answered
        assert status.restarts == before + 1 and status.retried_ok >= 1
        assert sup.worker_pid("chat") != wedged
        wait_until(lambda: not pid_alive(wedged), what="the wedged worker to be gone")
        # stall_after_s (2 s) + a heartbeat interval + a restart and the retried call;
        # far below kill_after_s (300 s) even on a loaded machine.
        assert 2.0 <= elapsed < 60


def test_a_long_call_that_keeps_computing_is_not_taken_for_a_stall(
    make_config: Callable[..., SupervisorConfig], direct: Any
) -> None:
    stall_after_s = 0.5
    config = make_config({"chat": {"stall_after_s": stall_after_s}})
    prompt = "Once upon a time, in a land far away, there lived"
    with Supervisor(config) as sup:
        pid = sup.worker_pid("chat")
        before = sup.role_status("chat").restarts
        started = time.monotonic()
        result = sup.complete(prompt, max_tokens=160, **SAMPLING).collect()
        elapsed = time.monotonic() - started
        assert elapsed > 3 * stall_after_s, "the call must outlast stall_after_s to test it"
        assert result.text == direct_text(direct, prompt, 160)
        status = sup.role_status("chat")
        assert status.restarts == before and sup.worker_pid("chat") == pid
        assert status.last_exit == ""
