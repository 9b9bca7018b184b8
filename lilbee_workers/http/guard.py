"""The ASGI middleware in front of the endpoints: what a web page in a browser on this
machine must not be able to do to the API (cross-site requests, DNS rebinding), and the
bearer key.

A page can send a cross-origin POST without asking first only with a "simple" Content-Type
(a form, ``text/plain``): requiring ``application/json`` forces a CORS preflight, which is
never granted. A page served from a name the attacker rebinds to 127.0.0.1 sends its own
name as ``Host``: without an API key, only loopback names and the listen host pass.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lilbee_workers.http.errors import error_body
from lilbee_workers.listen import is_loopback


class Guard:
    """Refuses, before any endpoint runs: a ``Host`` that is not loopback or the listen
    host when no key is set (403), an ``Origin`` that is not (403), a missing or wrong
    ``Authorization: Bearer <key>`` when a key is set, on every path but ``/health``
    (401), and a POST whose body is not ``application/json`` (415). ``api_key`` may be
    replaced while serving (a reload)."""

    def __init__(self, app: ASGIApp, listen_host: str, api_key: str | None = None) -> None:
        self.app = app
        self.listen_host = _bare(listen_host)
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = {k: v.decode("latin-1") for k, v in scope["headers"]}
        key = self.api_key
        if key is None and not self._ours(host_of(headers.get(b"host", ""))):
            return _refuse(403, "Host is not this machine", "misdirected_request")
        origin = headers.get(b"origin")
        if origin is not None and not self._ours(urlsplit(origin).hostname or ""):
            return _refuse(403, f"requests from origin {origin!r} are refused", "bad_origin")
        if key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, f"Bearer {key}".encode()):
                body = error_body(
                    "missing or wrong API key", "invalid_request_error", "unauthorized"
                )
                return JSONResponse(body, 401, {"WWW-Authenticate": "Bearer"})
        if scope["method"] == "POST" and not _is_json(headers.get(b"content-type", "")):
            return _refuse(415, "Content-Type must be application/json", "unsupported_media_type")
        return None

    def _ours(self, host: str) -> bool:
        host = _bare(host)
        return bool(host) and (is_loopback(host) or host == self.listen_host)


def host_of(value: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``)."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, colon, port = value.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else value


def _bare(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _is_json(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _refuse(status: int, message: str, code: str) -> JSONResponse:
    kind = "permission_error" if status == 403 else "invalid_request_error"
    return JSONResponse(error_body(message, kind, code), status)
