"""One set of tests, two transports: the in-process ``Supervisor`` and the socket
``Client`` must behave the same for code written against either."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from conftest import FAST
from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import (
    InvalidRequest,
    Supervisor,
    WorkerTimeout,
    WorkerUnavailable,
)
from lilbee_workers.aio import AsyncWorkerAPI
from lilbee_workers.api import WorkerAPI

TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}


@pytest.fixture(scope="module", params=["supervisor", "client", "ray-daemon"])
def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_path: str,
    tiny_reranker: str,
) -> Iterator[WorkerAPI]:
    roles = {
        "embed": {"model": model_path, "n_ctx": 512, **TIMING},
        "chat": {"model": model_path, "n_ctx": 512, **TIMING},
        "rerank": {"model": tiny_reranker, "n_ctx": 256, **TIMING},
    }
    root = tmp_path_factory.mktemp(request.param)
    top: dict[str, Any] = {"log_dir": str(root / "logs")}
    if request.param == "ray-daemon":  # the same API, the workers Ray actors
        top.update(backend="ray", ray_address=request.getfixturevalue("ray_cluster").address)
    config_path = write_config(root / "w.toml", roles, **top)
    if request.param == "supervisor":
        with Supervisor(config_path) as sup:
            yield sup
    else:
        daemon = DaemonProcess(config_path)
        try:
            with daemon.wait_ready() as client:
                yield client
        finally:
            assert daemon.stop() == 0


def test_embed(api: WorkerAPI) -> None:
    vectors = api.embed(["bees", "honey"])
    assert vectors.shape == (2, 640) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert api.embed([]).shape == (0, 640)


def test_chat_stream_and_result(api: WorkerAPI) -> None:
    stream = api.chat([{"role": "user", "content": "Bees are"}], max_tokens=6, temperature=0.0)
    chunks = list(stream)
    assert stream.result is not None
    assert "".join(chunks) == stream.result.text
    assert stream.result.finish_reason == "length" and stream.result.completion_tokens == 6


def test_rerank(api: WorkerAPI) -> None:
    items = api.rerank("bees", ["honey", "rust", "flower"], top_n=2, return_documents=True)
    assert len(items) == 2 and items[0].score >= items[1].score
    assert items[0].document in ("honey", "rust", "flower")


def test_status_and_restart(api: WorkerAPI) -> None:
    statuses = {s.role: s for s in api.status()}
    assert set(statuses) == {"embed", "chat", "rerank"}
    old_pid = statuses["rerank"].pid
    [after] = api.restart("rerank")
    assert after.state == "ready" and after.pid != old_pid


def test_typed_errors(api: WorkerAPI) -> None:
    with pytest.raises(InvalidRequest, match="prompt is too long"):
        api.chat("bee " * 2000, max_tokens=2).collect()
    with pytest.raises(InvalidRequest, match="must be a string"):
        api.embed(["ok", 5])  # type: ignore[list-item]
    with pytest.raises(WorkerUnavailable, match="not configured"):
        api.vision(b"\x89PNG").collect()
    assert api.embed(["after errors"]).shape == (1, 640)


def test_timeout_cancels_and_the_role_serves_on(api: WorkerAPI) -> None:
    with pytest.raises(WorkerTimeout):
        api.chat("Write a very long story.", max_tokens=500, timeout=0.5).collect()
    started = time.monotonic()
    assert api.chat("Hi", max_tokens=2).collect().completion_tokens == 2
    assert time.monotonic() - started < 10


def test_async_face(api: WorkerAPI) -> None:
    import asyncio

    async def main() -> tuple[int, str]:
        aapi = AsyncWorkerAPI(api)
        vectors = await aapi.embed(["async"])
        stream = await aapi.chat("Bees", max_tokens=3, temperature=0.0)
        text = "".join([chunk async for chunk in stream])
        return int(vectors.shape[1]), text

    dim, text = asyncio.run(main())
    assert dim == 640 and text
