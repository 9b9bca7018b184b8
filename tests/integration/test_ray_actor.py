"""``RoleActor`` in this process, without Ray: the code a Ray actor runs, on the real
gemma 3 270M model, checked against llama-cpp-python called directly. (Its use as a
Ray actor is tests/integration/test_ray_backend.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

from lilbee_workers.cluster.actor import RoleActor
from lilbee_workers.config import RoleConfig
from lilbee_workers.transport import codec
from lilbee_workers.transport.frames import (
    ChatChunk,
    ChatResult,
    CompleteRequest,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    LoadFailed,
    LoadProgress,
    Pong,
    Ready,
    WorkerBoot,
)

TEXTS = ["bees make honey", "rust on an old iron gate", "flowers in the meadow"]


def boot(role: str, model: str, tmp: str, parallel: int = 1) -> bytes:
    config = RoleConfig(model=model, n_ctx=512, parallel=parallel)
    return codec.encode(
        WorkerBoot(
            role=role,
            config=msgspec.msgpack.encode(config),
            model_path=model,
            log_path=f"{tmp}/{role}.log",
            generation=1,
            max_frame_bytes=1 << 24,
            log_max_bytes=1 << 20,
        )
    )


@pytest.fixture(scope="module")
def embed_actor(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleActor]:
    actor = RoleActor(boot("embed", model_path, str(tmp_path_factory.mktemp("actor"))))
    ready = codec.FROM_WORKER.decode(actor.load())
    assert isinstance(ready, Ready) and ready.n_embd == 640
    yield actor
    actor.close()


def test_embed_equals_llama_embed_called_directly(embed_actor: RoleActor, model_path: str) -> None:
    from llama_cpp import Llama

    [raw] = embed_actor.call_once(codec.encode(EmbedRequest(id=5, texts=TEXTS)))
    result = codec.FROM_WORKER.decode(raw)
    assert isinstance(result, EmbedResult) and result.id == 5 and result.count == 3
    got = np.frombuffer(result.vectors, dtype="<f4").reshape(result.count, result.dim)
    llm = Llama(model_path=model_path, embedding=True, pooling_type=1, n_ctx=512, verbose=False)
    try:
        reference = np.asarray(llm.embed(TEXTS, normalize=True), dtype=np.float32)
    finally:
        llm.close()
    assert np.abs(got - reference).max() < 1e-5


def test_garbage_and_a_wrong_request_are_typed_errors_and_the_actor_serves_on(
    embed_actor: RoleActor,
) -> None:
    [garbage] = embed_actor.call_once(b"\xc1not msgpack")
    error = codec.FROM_WORKER.decode(garbage)
    assert isinstance(error, ErrorFrame) and error.kind == "protocol" and error.role == "embed"
    [wrong] = embed_actor.call_once(codec.encode(CompleteRequest(id=9, prompt="hi")))
    error = codec.FROM_WORKER.decode(wrong)
    assert isinstance(error, ErrorFrame) and error.kind == "invalid_request" and error.id == 9
    [again] = embed_actor.call_once(codec.encode(EmbedRequest(id=10, texts=["x"])))
    assert isinstance(codec.FROM_WORKER.decode(again), EmbedResult)


def test_beat_reports_the_load_and_answers_pings(embed_actor: RoleActor) -> None:
    frames = [codec.FROM_HEARTBEAT.decode(data) for data in embed_actor.beat(7)]
    assert isinstance(frames[-1], Pong) and frames[-1].seq == 7 and frames[-1].rss_bytes > 0
    before = frames[-1].progress  # graph nodes computed: what stall detection watches
    embed_actor.call_once(codec.encode(EmbedRequest(id=11, texts=["progress"])))
    [pong] = [codec.FROM_HEARTBEAT.decode(data) for data in embed_actor.beat(8)]
    assert isinstance(pong, Pong) and before is not None and pong.progress is not None
    assert pong.progress > before
    fresh = RoleActor(codec.encode(embed_actor.boot))
    assert fresh.beat(0) == []  # nothing loaded, nothing to say, no pong asked for
    fresh.close()


def test_a_stream_yields_its_chunks_then_the_result_and_a_cancel_stops_it(
    model_path: str, tmp_path: str
) -> None:
    from llama_cpp import Llama

    actor = RoleActor(boot("chat", model_path, str(tmp_path)))
    assert isinstance(codec.FROM_WORKER.decode(actor.load()), Ready)
    try:
        request = CompleteRequest(id=3, prompt="Honey is made by", max_tokens=12, temperature=0.0)
        frames = [codec.FROM_WORKER.decode(data) for data in actor.call(codec.encode(request))]
        *chunks, final = frames
        assert all(isinstance(chunk, ChatChunk) for chunk in chunks) and len(chunks) >= 2
        assert isinstance(final, ChatResult)
        assert "".join(c.text for c in chunks) == final.text  # type: ignore[union-attr]
        llm = Llama(model_path=model_path, n_ctx=512, n_batch=2048, n_ubatch=512, verbose=False)
        try:
            direct = llm.create_completion("Honey is made by", max_tokens=12, temperature=0.0)
        finally:
            llm.close()
        assert final.text == direct["choices"][0]["text"]
        # Cancel from the control side while the data side streams a long answer.
        long = CompleteRequest(id=4, prompt="A long story:", max_tokens=400, temperature=0.7)
        stream = actor.call(codec.encode(long))
        next(stream)
        threading.Thread(target=actor.cancel, args=(4,)).start()
        *_, last = [codec.FROM_WORKER.decode(data) for data in stream]
        assert isinstance(last, ChatResult) and last.finish_reason == "cancelled"
        assert last.completion_tokens < 100
    finally:
        actor.close()


def test_an_actor_that_batches_streams_them_side_by_side_and_cancels_one_alone(
    model_path: str, tmp_path: str
) -> None:
    actor = RoleActor(boot("chat", model_path, str(tmp_path), parallel=3))
    ready = codec.FROM_WORKER.decode(actor.load())
    assert isinstance(ready, Ready) and ready.slots == 3
    try:
        finals: dict[int, ChatResult] = {}
        firsts: dict[int, float] = {}
        ended: dict[int, float] = {}

        def run(request_id: int, max_tokens: int) -> None:
            request = CompleteRequest(
                id=request_id, prompt="Honey is made by", max_tokens=max_tokens, temperature=0.0
            )
            for data in actor.call(codec.encode(request)):
                frame = codec.FROM_WORKER.decode(data)
                firsts.setdefault(request_id, time.monotonic())
                if isinstance(frame, ChatResult):
                    finals[request_id], ended[request_id] = frame, time.monotonic()

        threads = [
            threading.Thread(target=run, args=(i, n)) for i, n in ((1, 40), (2, 40), (3, 400))
        ]
        for thread in threads:
            thread.start()
        wait = time.monotonic() + 60
        while 3 not in firsts and time.monotonic() < wait:
            time.sleep(0.01)
        actor.cancel(3)  # the long one stops; the two others run on untouched
        for thread in threads:
            thread.join(120)
        assert finals[3].finish_reason == "cancelled"
        for request_id in (1, 2):
            assert finals[request_id].finish_reason == "length"
            assert finals[request_id].completion_tokens == 40
        assert max(firsts.values()) < min(ended[1], ended[2])  # all three ran at once
    finally:
        actor.close()


def test_a_model_that_cannot_load_is_a_load_failed_with_the_reason(tmp_path: str) -> None:
    bad = f"{tmp_path}/broken.gguf"
    with open(bad, "wb") as handle:
        handle.write(b"GGUF" + b"\0" * 64)
    actor = RoleActor(boot("embed", bad, str(tmp_path)))
    failed = codec.FROM_WORKER.decode(actor.load())
    actor.close()
    assert isinstance(failed, LoadFailed) and failed.kind == "model" and failed.message
    progress = [codec.FROM_HEARTBEAT.decode(d) for d in actor.beat(0)]
    assert not any(isinstance(frame, LoadProgress) and frame.fraction == 1.0 for frame in progress)
