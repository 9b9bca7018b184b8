"""Continuous batching through the supervisor: one chat worker with ``parallel`` slots
runs streams side by side, each checked against llama-cpp-python called directly.

What batching does to answers is measured and documented in docs/performance.md ("Many
streams on one model"): the prompt is the solo call's exactly, and so is the first
token; a stream decoded beside others may leave the solo greedy path later, so full
texts are held to the agreement measured there, not to exactness."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import GREEDY_PROMPTS, direct_llama, solo_completion, wait_until
from lilbee_workers import Supervisor, SupervisorConfig, memory, testing
from lilbee_workers.errors import Cancelled
from lilbee_workers.transport.frames import DebugRequest

PROMPTS = GREEDY_PROMPTS
N_CTX = 256


@pytest.fixture(scope="module")
def llm(model_path: str) -> Iterator[Any]:
    with direct_llama(model_path, n_ctx=N_CTX) as model:
        yield model


def solo(llm: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    return solo_completion(llm, prompt, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def batched_sup(make_config: Callable[..., SupervisorConfig]) -> Iterator[Supervisor]:
    config = make_config({"chat": {"parallel": 4, "n_threads": 2, "n_ctx": N_CTX}})
    with Supervisor(config) as sup:
        yield sup


class Stream(threading.Thread):
    """One caller streaming a completion: when its chunks came, and how it ended."""

    def __init__(self, sup: Supervisor, prompt: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.sup, self.prompt, self.max_tokens = sup, prompt, max_tokens
        self.chunk_times: list[float] = []
        self.ended_at = 0.0
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = self.sup.complete(self.prompt, max_tokens=self.max_tokens, temperature=0)
            for _ in stream:
                self.chunk_times.append(time.monotonic())
            self.result = stream.result
        except BaseException as exc:  # the test reads it
            self.error = exc
        self.ended_at = time.monotonic()


def run_streams(sup: Supervisor, prompts: list[str], max_tokens: int) -> list[Stream]:
    streams = [Stream(sup, prompt, max_tokens) for prompt in prompts]
    for stream in streams:
        stream.start()
    for stream in streams:
        stream.join(120)
    return streams


def test_streams_run_side_by_side_on_one_worker_and_agree_with_llama_cpp_python(
    batched_sup: Supervisor, llm: Any
) -> None:
    before = batched_sup.role_status("chat")
    assert before.slots == 4
    streams = run_streams(batched_sup, PROMPTS, max_tokens=32)
    assert [s.error for s in streams] == [None] * len(streams)

    # Side by side: the first four had all started before any of the six finished.
    first_finish = min(s.ended_at for s in streams)
    assert all(s.chunk_times and s.chunk_times[0] < first_finish for s in streams[:4])

    same = 0
    for stream in streams:
        reference = solo(llm, stream.prompt, 32)
        result = stream.result
        assert result.prompt_tokens == reference["prompt_tokens"], stream.prompt
        assert result.completion_tokens == reference["completion_tokens"] == 32
        assert result.finish_reason == "length"
        # The first token is the solo one (the prompt's logits do not depend on others).
        assert result.text[:3] == reference["text"][:3], (stream.prompt, result.text)
        same += result.text == reference["text"]
    # Which streams share a step depends on when each arrived, so how many answers stay
    # on the solo path varies from run to run (2 to 6 of 6 seen here); none would if
    # batching mixed up streams or their prompts.
    assert same >= 1, "no stream gave the solo answer"

    after = batched_sup.role_status("chat")
    assert after.pid == before.pid and after.generation == before.generation  # one worker
    assert after.served - before.served == len(streams)


def test_one_stream_alone_gives_the_solo_answer_exactly(batched_sup: Supervisor, llm: Any) -> None:
    for prompt in PROMPTS[:3]:
        result = batched_sup.complete(prompt, max_tokens=24, temperature=0).collect()
        assert result.text == solo(llm, prompt, 24)["text"]


def test_cancelling_one_stream_leaves_the_others_whole(batched_sup: Supervisor) -> None:
    before = batched_sup.role_status("chat")
    keep = [Stream(batched_sup, prompt, 40) for prompt in PROMPTS[:2]]
    for stream in keep:
        stream.start()
    cut = batched_sup.complete(PROMPTS[2], max_tokens=200, temperature=0)
    assert next(cut)  # it runs beside the others
    cut.close()  # the caller leaves: its stream alone stops
    for stream in keep:
        stream.join(120)
        assert stream.error is None
        assert stream.result.finish_reason == "length"
        assert stream.result.completion_tokens == 40
    wait_until(lambda: batched_sup.role_status("chat").in_flight == 0, 30, "the slots free")
    after = batched_sup.role_status("chat")
    assert after.pid == before.pid and after.restarts == before.restarts
    assert after.cancelled == before.cancelled + 1


def test_status_shows_slots_in_use_and_each_streams_rate(batched_sup: Supervisor) -> None:
    streams = [Stream(batched_sup, prompt, 120) for prompt in PROMPTS[:3]]
    for stream in streams:
        stream.start()
    seen: list[Any] = []

    def three_running() -> bool:
        status = batched_sup.role_status("chat")
        seen.append(status)
        return status.in_flight == 3 and len(status.stream_tokens_per_s) == 3

    wait_until(three_running, 60, "three streams in slots")
    status = seen[-1]
    assert status.slots == 4 and status.state == "busy"
    # The worker's own KV figure (its contexts' cells) is the estimate start-up checks.
    estimate = memory.role_memory("chat", batched_sup.config.roles["chat"])
    assert estimate is not None and status.kv_cache_bytes == estimate.kv_bytes > 0
    assert all(rate >= 0 for rate in status.stream_tokens_per_s)
    for stream in streams:
        stream.join(120)
        assert stream.error is None
    assert not isinstance(streams[0].error, Cancelled)


def test_a_call_run_from_an_idle_role_returns_while_a_later_stream_still_runs(
    batched_sup: Supervisor,
) -> None:
    """A non-streaming call that finds the role idle may run on its caller's thread;
    on a batching worker that thread must not stay to serve the streams that join."""
    wait_until(lambda: batched_sup.role_status("chat").in_flight == 0, 60, "an idle role")
    sleep = DebugRequest(id=0, action="sleep", seconds=2.0)
    done = threading.Event()
    sleeper = threading.Thread(
        target=lambda: (testing.debug(batched_sup, "chat", sleep), done.set()), daemon=True
    )
    sleeper.start()
    wait_until(lambda: batched_sup.role_status("chat").in_flight >= 1, 30, "the sleep runs")
    long = Stream(batched_sup, PROMPTS[0], 600)
    long.start()
    assert done.wait(60), "the sleep's caller never got its answer"
    assert long.is_alive(), "the sleep's caller was held until the stream ended"
    long.join(180)
    assert long.error is None


def test_a_chat_stream_is_prompted_as_llama_cpp_pythons_chat_completion(
    batched_sup: Supervisor, model_path: str
) -> None:
    """The chat template runs as in a solo call: the same prompt tokens, the template's
    stop string honoured, and (one stream alone) the same answer."""
    messages = [{"role": "user", "content": "Name three colours."}]
    with direct_llama(model_path, n_ctx=N_CTX) as llm:
        llm.chat_format = "gemma"  # what the worker falls back to for gemma (status says)
        direct = llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0)
    assert batched_sup.role_status("chat").chat_template == "fallback:gemma"
    result = batched_sup.chat(messages, max_tokens=24, temperature=0).collect()
    assert result.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert result.completion_tokens == direct["usage"]["completion_tokens"]
    assert result.text == direct["choices"][0]["message"]["content"]
    assert result.finish_reason == direct["choices"][0]["finish_reason"]
