"""The HTTP face's pure parts: bearer auth, the listen/key config rules, error mapping,
the Prometheus histogram. The endpoints themselves are tested against a real daemon in
tests/integration/test_http.py."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from lilbee_workers.config import RoleConfig, SupervisorConfig
from lilbee_workers.errors import (
    ConfigError,
    DaemonUnreachable,
    InvalidRequest,
    ModelError,
    Overloaded,
    ProtocolError,
    WorkerCrashed,
    WorkerTimeout,
    WorkerUnavailable,
)
from lilbee_workers.http.app import BearerAuth
from lilbee_workers.http.errors import retry_headers, status_of, worker_error_body
from lilbee_workers.http.metrics import render
from lilbee_workers.types import LATENCY_BUCKETS_MS, RoleStatus

KEY = "k" * 32


def guarded() -> TestClient:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/v1/models", hello), Route("/health", hello)])
    return TestClient(BearerAuth(app, KEY))


def test_every_path_but_health_needs_the_bearer_key() -> None:
    client = guarded()
    assert client.get("/health").status_code == 200
    missing = client.get("/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401
    right = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert right.status_code == 200 and right.text == "hi"


def config(**top: str) -> SupervisorConfig:
    return SupervisorConfig(roles={"embed": RoleConfig(model="m.gguf")}, **top)  # type: ignore[arg-type]


@pytest.mark.parametrize("listen", ["127.0.0.1:8088", "localhost:1", "[::1]:8088"])
def test_loopback_needs_no_key(listen: str) -> None:
    config(http_listen=listen).validate()


@pytest.mark.parametrize("listen", ["0.0.0.0:8088", "192.168.1.5:80", "[::]:8088"])
def test_a_reachable_address_needs_a_key_file(listen: str) -> None:
    with pytest.raises(ConfigError, match="set http_api_key_file"):
        config(http_listen=listen).validate()
    config(http_listen=listen, http_api_key_file="/etc/key").validate()


@pytest.mark.parametrize("listen", ["8088", "host:", ":8088", "h:99999", "h:port"])
def test_a_malformed_listen_address_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        config(http_listen=listen).validate()


def test_a_short_api_key_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    from lilbee_workers.http.serve import HttpServer

    key = Path(str(tmp_path)) / "key"
    key.write_text("short\n")
    with pytest.raises(ConfigError, match="under 16 characters"):
        HttpServer(config(http_listen="127.0.0.1:0", http_api_key_file=str(key)), None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidRequest("x"), 400),
        (Overloaded("x"), 429),
        (WorkerUnavailable("x"), 503),
        (DaemonUnreachable("x"), 503),
        (WorkerTimeout("x"), 504),
        (WorkerCrashed("x"), 502),
        (ProtocolError("x"), 502),  # a frame we could not read is our fault, not the client's
    ],
)
def test_errors_map_to_the_status_codes_clients_expect(error: Exception, status: int) -> None:
    assert status_of(error)[0] == status  # type: ignore[arg-type]


def test_latency_histogram_is_cumulative_in_seconds() -> None:
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    counts[0], counts[3], counts[-1] = 2, 1, 1  # <=5 ms twice, <=50 ms once, over 60 s once
    status = RoleStatus(role="embed", state="ready", model="/m/x.gguf",
                        latency_buckets=counts, latency_sum_ms=61_000.0)  # fmt: skip
    [histogram] = [
        f for f in text_string_to_metric_families(render(lambda: [status]).decode())
        if f.name == "lilbee_request_latency_seconds"
    ]  # fmt: skip
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 2 and buckets["0.025"] == 2 and buckets["0.05"] == 3
    assert buckets["60"] == 3 and buckets["+Inf"] == 4
    [total] = [s.value for s in histogram.samples if s.name.endswith("_sum")]
    assert total == 61.0
    assert all(s.labels["model"] == "x" for s in histogram.samples)


def test_a_poison_request_says_do_not_retry_and_retryable_errors_do_not() -> None:
    poison = WorkerCrashed("chat worker failed on this request 2 times (poison request?)")
    status, _ = worker_error_body(poison)
    assert status == 502 and retry_headers(status, poison) == {"x-should-retry": "false"}
    assert retry_headers(500, ModelError("x")) == {"x-should-retry": "false"}
    assert retry_headers(503, WorkerUnavailable("x")) == {"Retry-After": "1"}
    assert retry_headers(504, WorkerTimeout("x")) == {}
    assert retry_headers(400, InvalidRequest("x")) == {}
