"""The HTTP face's pure parts: the guard (bearer auth, Host, Origin, Content-Type), the
listen/key config rules, error mapping, the Prometheus series. The endpoints themselves
are tested against a real daemon in tests/integration/test_http.py."""

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
from lilbee_workers.http.errors import retry_headers, status_of, worker_error_body
from lilbee_workers.http.guard import Guard, host_of
from lilbee_workers.http.metrics import render
from lilbee_workers.parent.policy import crashed_error
from lilbee_workers.types import LATENCY_BUCKETS_MS, RoleStatus

KEY = "k" * 32


def guarded(key: str | None = KEY, listen_host: str = "127.0.0.1") -> TestClient:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    routes = [Route("/v1/models", hello, methods=["GET", "POST"]), Route("/health", hello)]
    app = Starlette(routes=routes)
    return TestClient(Guard(app, listen_host, key), base_url="http://127.0.0.1:8088")


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
    assert all(s.labels == {"role": "embed"} for s in histogram.samples if "le" not in s.labels)


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_a_json_post_passes_the_guard(content_type: str) -> None:
    response = guarded(None).post(
        "/v1/models", content=b"{}", headers={"Content-Type": content_type}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_post_that_is_not_json_is_415(content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    for client, auth in ((guarded(None), {}), (guarded(), {"Authorization": f"Bearer {KEY}"})):
        response = client.post("/v1/models", content=b"{}", headers={**headers, **auth})
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert guarded(None).get("/v1/models").status_code == 200  # a GET has no body to check


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8088", "127.0.0.1:1", "[::1]:8088", "::1", "LocalHost."]
)
def test_without_a_key_a_loopback_host_passes(host: str) -> None:
    assert guarded(None).get("/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8088", "127.0.0.1.nip.io", ""])
def test_without_a_key_another_host_is_403(host: str) -> None:
    response = guarded(None).get("/v1/models", headers={"Host": host})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "misdirected_request"


def test_the_listen_host_passes_and_a_key_lifts_the_host_check() -> None:
    assert (
        guarded(None, "lilbee.local")
        .get("/health", headers={"Host": "lilbee.local:80"})
        .status_code
        == 200
    )
    keyed = guarded(KEY, "0.0.0.0")
    auth = {"Authorization": f"Bearer {KEY}", "Host": "box.lan:8088"}
    assert keyed.get("/v1/models", headers=auth).status_code == 200


@pytest.mark.parametrize("key", [None, KEY])
def test_a_foreign_origin_is_403(key: str | None) -> None:
    client = guarded(key)
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example"):
        response = client.get("/v1/models", headers={"Origin": origin, **auth})
        assert response.status_code == 403, origin
        assert response.json()["error"]["code"] == "bad_origin"
    for origin in ("http://localhost:3000", "http://127.0.0.1:8088", "http://[::1]"):
        assert client.get("/v1/models", headers={"Origin": origin, **auth}).status_code == 200


def test_host_of_strips_the_port() -> None:
    assert host_of("[::1]:8088") == "::1"
    assert host_of("a.b:80") == "a.b"
    assert host_of("::1") == "::1"
    assert host_of("a.b") == "a.b"


def test_a_poison_request_says_do_not_retry_and_retryable_errors_do_not() -> None:
    poison = crashed_error("chat", 2, "killed by signal SIGKILL", 0, "/l/chat.log", "")
    status, _ = worker_error_body(poison)
    assert status == 502 and retry_headers(status, poison) == {"x-should-retry": "false"}
    once = crashed_error("chat", 1, "killed", 4, "/l/chat.log", "")  # one crash, mid-stream
    assert retry_headers(502, once) == {}
    assert retry_headers(500, ModelError("x")) == {"x-should-retry": "false"}
    assert retry_headers(503, WorkerUnavailable("x")) == {"Retry-After": "1"}
    assert retry_headers(504, WorkerTimeout("x")) == {}
    assert retry_headers(400, InvalidRequest("x")) == {}


def test_series_are_labelled_by_role_and_the_model_is_an_info_gauge() -> None:
    before = RoleStatus(role="chat", state="ready", model="/m/a.gguf", model_name="a", served=7)
    after = RoleStatus(role="chat", state="ready", model="/m/b.gguf", model_name="b", served=8)

    def samples(status: RoleStatus) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = render(lambda: [status]).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    ok = ("lilbee_requests_total", (("outcome", "ok"), ("role", "chat")))
    assert samples(before)[ok] == 7 and samples(after)[ok] == 8  # one series across the switch
    assert samples(after)[("lilbee_role_model", (("model", "b"), ("role", "chat")))] == 1.0
    assert all(
        "model" not in dict(labels)
        for name, labels in samples(after)
        if name != "lilbee_role_model"
    )


# --------------------------------------------------------------- issue 18 items 8, 9


def test_a_worker_400_names_its_param_under_the_bodys_name() -> None:
    """A worker's ``InvalidRequest`` says which field; HTTP names it as its body does."""
    error = InvalidRequest("max_tokens must be > 0, got 0", param="max_tokens")
    status, body = worker_error_body(error, {"max_tokens": "max_completion_tokens"})
    assert status == 400
    assert body["error"]["param"] == "max_completion_tokens"
    assert body["error"]["message"] == "max_completion_tokens must be > 0, got 0"
    assert worker_error_body(error)[1]["error"]["param"] == "max_tokens"
    assert worker_error_body(InvalidRequest("x"))[1]["error"]["param"] is None


def test_an_over_long_text_gets_no_python_or_cli_hint_over_http() -> None:
    error = InvalidRequest(
        "text 0 is 300 tokens, over the context of 256 (truncate=True, or embed --truncate, "
        "cuts it)",
        param="texts",
    )
    _, body = worker_error_body(error, {"texts": "input"})
    message = body["error"]["message"]
    assert "truncate=True" not in message and "--truncate" not in message
    assert message.startswith("text 0 is 300 tokens, over the context of 256")
    assert body["error"]["param"] == "input"


def test_param_crosses_the_wire_and_old_frames_still_decode() -> None:
    from lilbee_workers.transport.codec import decode, encode
    from lilbee_workers.transport.error_frames import from_frame, to_frame
    from lilbee_workers.transport.frames import ErrorFrame

    error = from_frame(decode(encode(to_frame(InvalidRequest("seed", param="seed"), 7))))
    assert isinstance(error, InvalidRequest) and error.param == "seed"
    # Without a param, the frame's bytes are what they were before the field existed.
    plain = ErrorFrame(id=1, kind="invalid_request", message="m")
    assert b"param" not in encode(plain)
