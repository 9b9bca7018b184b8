"""The OpenAI-compatible HTTP face, through clients no one here wrote: the official
``openai`` package and ``httpx``, against a real daemon with real workers. Answers are
checked against the same calls made through the daemon's Unix socket (``Client``)."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST, direct_llama, pid_alive, solo_completion
from http_helpers import JSON, HttpDaemon, start_http_daemon
from lilbee_workers import Client
from tiny_models import png_bytes

TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}


def gemma_name(http: HttpDaemon) -> str:
    """The name the bundled gemma goes by over HTTP: its file name without .gguf."""
    return Path(http.status("chat").model).stem


@pytest.fixture(scope="module")
def http(
    tmp_path_factory: pytest.TempPathFactory,
    model_path: str,
    tiny_reranker: str,
    tiny_projector: str,
) -> Iterator[HttpDaemon]:
    daemon = start_http_daemon(
        tmp_path_factory.mktemp("http"),
        {
            "embed": {"model": model_path, "n_ctx": 512, **TIMING},
            # One chat worker batches eight streams: every HTTP chat test runs so.
            "chat": {"model": model_path, "n_ctx": 512, "parallel": 8, **TIMING},
            "rerank": {"model": tiny_reranker, "n_ctx": 128, **TIMING},
            "vision": {"model": model_path, "mmproj": tiny_projector, "n_ctx": 1024, **TIMING},
        },
        http_max_body_bytes=64 * 1024,
    )
    yield daemon
    assert daemon.process.stop() == 0


@pytest.fixture(scope="module")
def socket_client(http: HttpDaemon) -> Iterator[Client]:
    with Client(http.process.socket) as client:
        yield client


def test_embeddings_equal_the_socket_clients(http: HttpDaemon, socket_client: Client) -> None:
    texts = ["bees make honey", "the stock market fell"]
    answer = http.openai().embeddings.create(model=gemma_name(http), input=texts)
    vectors = np.array([item.embedding for item in answer.data], dtype=np.float32)
    expected = socket_client.embed(texts)
    assert vectors.shape == expected.shape == (2, 640)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert answer.usage.prompt_tokens > 0
    raw = httpx.post(
        http.url + "/v1/embeddings", json={"input": "bees make honey", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[0], atol=1e-6)


def test_chat_completion_streamed_and_not_equal_the_socket_clients(
    http: HttpDaemon, socket_client: Client
) -> None:
    client = http.openai()
    messages = [{"role": "user", "content": "Name a flower."}]
    whole = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=12, temperature=0.0
    )
    expected = socket_client.chat(messages, max_tokens=12, temperature=0.0).collect()
    assert whole.choices[0].message.content == expected.text and expected.text
    assert whole.choices[0].finish_reason == expected.finish_reason
    assert whole.usage.completion_tokens == expected.completion_tokens
    stream = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=12, temperature=0.0, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces) == expected.text
    assert len([p for p in pieces if p]) > 1  # it really streamed


def test_completion_knows_who_makes_honey(http: HttpDaemon) -> None:
    answer = http.openai().completions.create(
        model="chat", prompt="Honey is made by", max_tokens=8, temperature=0.0
    )
    assert "bee" in answer.choices[0].text.lower()
    streamed = http.openai().completions.create(
        model="chat", prompt="Honey is made by", max_tokens=8, temperature=0.0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == answer.choices[0].text


def test_models_list_names_what_each_role_serves(http: HttpDaemon) -> None:
    models = {model.id: model for model in http.openai().models.list()}
    assert set(models) == {gemma_name(http), Path(_tiny(http, "rerank")).stem}
    assert set(models[gemma_name(http)].model_extra["roles"]) == {"embed", "chat", "vision"}


def _tiny(http: HttpDaemon, role: str) -> str:
    statuses = httpx.get(http.url + "/health").json()["roles"]
    assert role in statuses
    with Client(http.process.socket) as client:
        return {s.role: s.model for s in client.status()}[role]


def test_an_image_message_goes_to_the_vision_role(http: HttpDaemon) -> None:
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    before = _served(http, "vision")
    answer = http.openai().chat.completions.create(
        model=gemma_name(http),
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the picture?"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
        max_tokens=4,
    )
    assert answer.choices[0].message.content is not None
    assert _served(http, "vision") == before + 1
    with pytest.raises(openai.BadRequestError, match="data: URL"):
        http.openai().chat.completions.create(
            model="chat",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                }
            ],
        )


def _served(http: HttpDaemon, role: str) -> int:
    with Client(http.process.socket) as client:
        return {s.role: s.served for s in client.status()}[role]


def test_bad_requests_are_400_and_unknown_models_404(http: HttpDaemon) -> None:
    client = http.openai()
    with pytest.raises(openai.BadRequestError, match="messages must not be empty"):
        client.chat.completions.create(model="chat", messages=[])
    with pytest.raises(openai.BadRequestError, match="invalid request body"):
        client.embeddings.create(model="embed", input=[1, 2, 3])  # token ids: not supported
    with pytest.raises(openai.NotFoundError, match="GET /v1/models lists them") as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):  # a path is never a model name
        client.embeddings.create(model="/etc/passwd", input="x")
    response = httpx.post(http.url + "/v1/embeddings", content=b"{not json", headers=JSON)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def _image_message() -> list[dict[str, Any]]:
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the picture?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        }
    ]


@pytest.mark.parametrize("alias", ["chat", "vision"])
def test_an_image_message_may_name_the_chat_or_vision_role(http: HttpDaemon, alias: str) -> None:
    before = _served(http, "vision")
    answer = http.openai().chat.completions.create(
        model=alias,
        messages=_image_message(),
        max_tokens=2,
    )
    assert answer.choices[0].message.content is not None
    assert answer.model == gemma_name(http)
    assert _served(http, "vision") == before + 1


def test_a_browser_cannot_drive_the_loopback_api(http: HttpDaemon) -> None:
    body = json.dumps({"input": "bees"}).encode()
    plain = httpx.post(
        http.url + "/v1/embeddings", content=body, headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
    form = httpx.post(http.url + "/v1/embeddings", data={"input": "bees"})
    assert form.status_code == 415
    rebound = httpx.get(http.url + "/v1/models", headers={"Host": f"evil.example:{http.port}"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "misdirected_request"
    foreign = httpx.post(
        http.url + "/v1/embeddings",
        json={"input": "bees"},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "bad_origin"
    for host in (f"localhost:{http.port}", f"127.0.0.1:{http.port}"):
        ok = httpx.post(http.url + "/v1/embeddings", content=body, headers={**JSON, "Host": host})
        assert ok.status_code == 200
    local = httpx.get(http.url + "/v1/models", headers={"Origin": "http://localhost:3000"})
    assert local.status_code == 200


def test_unknown_paths_and_wrong_methods_get_openai_error_bodies(http: HttpDaemon) -> None:
    missing = httpx.post(http.url + "/v1/nothing", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(http.url + "/v1/embeddings")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"


def test_include_usage_ends_the_stream_with_a_usage_chunk(http: HttpDaemon) -> None:
    client = http.openai()
    messages = [{"role": "user", "content": "Name a flower."}]
    whole = client.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=6,
        temperature=0.0,
    )
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=messages,
            max_tokens=6,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = list(
        client.completions.create(
            model="chat",
            prompt="Honey is made by",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert text[-1].choices == [] and text[-1].usage is not None
    assert text[-1].usage.completion_tokens == 4


def test_a_developer_message_is_a_system_message(http: HttpDaemon) -> None:
    def answer(role: str) -> str | None:
        messages = [
            {"role": role, "content": "Answer in one word."},
            {"role": "user", "content": "Name a flower."},
        ]
        reply = http.openai().chat.completions.create(
            model="chat",
            messages=messages,
            max_tokens=8,
            temperature=0.0,
        )
        return reply.choices[0].message.content

    assert answer("developer") == answer("system")


def test_null_n_and_stream_mean_the_defaults(http: HttpDaemon) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "n": None,
        "stream": None,
    }
    response = httpx.post(http.url + "/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["object"] == "chat.completion"
    prompt = {"prompt": "Honey is", "max_tokens": 2, "n": None, "stream": None}
    assert httpx.post(http.url + "/v1/completions", json=prompt).status_code == 200


def test_tools_and_json_mode_are_refused_not_ignored(http: HttpDaemon) -> None:
    client = http.openai()
    messages = [{"role": "user", "content": "What is the weather?"}]
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=messages, tools=[tool])
    assert caught.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="chat",
            messages=messages,
            response_format={"type": "json_object"},
        )
    assert caught.value.param == "response_format"
    plain = client.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=2,
        response_format={"type": "text"},
        tools=[],
    )
    assert plain.choices[0].message.content is not None


def test_rerank_equals_the_socket_clients(http: HttpDaemon, socket_client: Client) -> None:
    documents = ["bees make honey", "stocks fell", "hives and bees"]
    response = httpx.post(
        http.url + "/v1/rerank",
        json={"query": "bees", "documents": documents, "top_n": 2, "return_documents": True},
    )
    assert response.status_code == 200
    results = response.json()["results"]
    expected = socket_client.rerank("bees", documents, top_n=2, return_documents=True)
    assert [(r["index"], r["document"]["text"]) for r in results] == [
        (item.index, item.document) for item in expected
    ]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results], [item.score for item in expected], atol=1e-6
    )


def test_health_and_metrics_agree_with_status(http: HttpDaemon, socket_client: Client) -> None:
    health = httpx.get(http.url + "/health")
    assert health.status_code == 200 and health.json()["roles"]["chat"] in ("ready", "busy")
    socket_client.embed(["one more"])
    socket_client.complete("Bees", max_tokens=2, temperature=0.0).collect()  # tokens to count
    text = httpx.get(http.url + "/metrics").text
    statuses = {s.role: s for s in socket_client.status()}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    embed = (("role", "embed"),)  # series are per role: a model switch keeps the history
    ok = samples[("lilbee_requests_total", (("outcome", "ok"), *embed))]
    assert ok == statuses["embed"].served >= 1
    cancelled = samples[("lilbee_requests_total", (("outcome", "cancelled"), *embed))]
    assert cancelled == statuses["embed"].cancelled
    count = samples[("lilbee_request_latency_seconds_count", embed)]
    assert count == sum(statuses["embed"].latency_buckets) >= 1
    assert samples[("lilbee_role_state", (*embed, ("state", "ready")))] == 1.0
    assert samples[("lilbee_worker_rss_bytes", embed)] > 10_000_000
    chat = (("role", "chat"),)
    assert samples[("lilbee_tokens_generated_total", chat)] == statuses["chat"].tokens_generated > 0
    assert samples[("lilbee_role_model", (("model", gemma_name(http)), *embed))] == 1.0
    assert not [key for key in samples if key[0] != "lilbee_role_model" and "model" in dict(key[1])]


def test_a_body_over_the_cap_is_refused_before_it_is_read(http: HttpDaemon) -> None:
    big = json.dumps({"input": "x" * 100_000}).encode()
    response = httpx.post(http.url + "/v1/embeddings", content=big, headers=JSON)
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"input": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = httpx.post(http.url + "/v1/embeddings", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert httpx.get(http.url + "/health").status_code == 200


def test_a_client_gone_mid_stream_cancels_the_generation(
    http: HttpDaemon, socket_client: Client
) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Write a long story about bees."}],
        "max_tokens": 400,  # at temperature 0 it writes all 400 (9 s on 2 idle cores)
        "temperature": 0.0,
        "stream": True,
    }
    before = {s.role: s for s in socket_client.status()}["chat"].tokens_generated
    with httpx.stream("POST", http.url + "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chat = {s.role: s for s in socket_client.status()}["chat"]
        if chat.in_flight == 0:
            break
        time.sleep(0.05)
    assert chat.in_flight == 0, "the generation went on after its client left"
    # A cancelled generation is answered with the tokens it had made: far fewer than 400.
    assert chat.tokens_generated - before < 100


def test_eight_http_streams_are_served_side_by_side_by_one_worker(
    http: HttpDaemon, model_path: str
) -> None:
    """Eight OpenAI clients stream at once: one worker, one copy of the model, all eight
    generating before the first finishes; each answer starts as llama-cpp-python's own."""
    prompts = [f"Fact number {i} about honey bees:" for i in range(8)]
    firsts: dict[int, float] = {}
    ended: dict[int, float] = {}
    texts: dict[int, str] = {}
    before = http.status("chat")

    def stream(index: int) -> None:
        client = http.openai(timeout=300)
        pieces = []
        for chunk in client.completions.create(
            model="chat", prompt=prompts[index], max_tokens=48, temperature=0, stream=True
        ):
            firsts.setdefault(index, time.monotonic())
            pieces.append(chunk.choices[0].text if chunk.choices else "")
        texts[index], ended[index] = "".join(pieces), time.monotonic()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(texts) == list(range(8))
    assert max(firsts.values()) < min(ended.values())  # all eight generated at once
    after = http.status("chat")
    assert after.pid == before.pid and after.slots == 8 and after.restarts == before.restarts
    with direct_llama(model_path, n_ctx=512, threads=1) as llm:  # threads as the worker's
        for index, prompt in enumerate(prompts):
            direct = solo_completion(llm, prompt, max_tokens=48)
            assert texts[index][:3] == direct["text"][:3], prompt


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(600)
def test_64_streams_while_the_chat_worker_is_killed(
    http: HttpDaemon, socket_client: Client
) -> None:
    """Every stream completes or ends with an error event; none hangs; fds come back."""
    baseline = _open_fds(http.process.proc.pid)
    outcomes: list[str] = []
    lock = threading.Lock()

    def stream_one(index: int) -> None:
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": f"Count to ten, attempt {index}."}],
            "max_tokens": 6,
            "stream": True,
        }
        outcome = "hung"
        try:
            # 64 streams share one chat worker: the last waits for 63 others to finish
            # (minutes on 2 busy cores) before its first byte.
            with httpx.stream(
                "POST", http.url + "/v1/chat/completions", json=body, timeout=600
            ) as response:
                if response.status_code != 200:
                    outcome = f"status {response.status_code}"
                else:
                    for line in response.iter_lines():
                        if line == "data: [DONE]":
                            outcome = "done"
                        elif line.startswith("data: ") and '"error"' in line:
                            outcome = "error event"
        except httpx.HTTPError as exc:
            outcome = f"transport error {exc!r}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=stream_one, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    pid = {s.role: s for s in socket_client.status()}["chat"].pid
    assert pid is not None and pid_alive(pid)
    os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(600)
    assert not any(thread.is_alive() for thread in threads), "a stream hung"
    assert len(outcomes) == 64
    unexpected = [o for o in outcomes if o not in ("done", "error event", "status 502")]
    assert not unexpected, unexpected
    assert outcomes.count("done") >= 32  # the retry-once and the restart served most
    deadline = time.monotonic() + 20
    while _open_fds(http.process.proc.pid) > baseline + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _open_fds(http.process.proc.pid) <= baseline + 2


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpDaemon]:
    root = tmp_path_factory.mktemp("broken")
    daemon = start_http_daemon(
        root,
        {"embed": {"model": str(root / "missing.gguf"), "failed_cooldown_s": 600, **TIMING}},
    )
    yield daemon
    assert daemon.process.stop() == 0


def test_a_failed_role_is_503_with_retry_after(broken: HttpDaemon) -> None:
    health = httpx.get(broken.url + "/health")
    assert health.status_code == 503 and health.json()["roles"] == {"embed": "failed"}
    with pytest.raises(openai.InternalServerError, match="model file not found") as caught:
        broken.openai().embeddings.create(model="embed", input="x")
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "1"
    assert "x-should-retry" not in caught.value.response.headers  # it may come back


def test_an_image_without_a_vision_role_is_400_naming_messages(broken: HttpDaemon) -> None:
    with pytest.raises(openai.BadRequestError, match="no vision role") as caught:
        broken.openai().chat.completions.create(model="chat", messages=_image_message())
    assert caught.value.param == "messages"
    assert caught.value.type == "invalid_request_error"
