"""Run the HTTP face on a thread of the daemon (uvicorn on its own event loop).

The listening socket is bound here, before uvicorn starts, so a port in use is a clear
error at start rather than a log line from a thread. A reload takes a new API key (the
key file is read again) and body cap; a new ``http_listen`` needs a restart. The loop's
default thread pool is as large as the connections uvicorn admits: each waiting request
holds one thread.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
import uvicorn

from lilbee_workers.api import WorkerAPI
from lilbee_workers.config import SupervisorConfig
from lilbee_workers.errors import ConfigError
from lilbee_workers.http.app import HttpFace
from lilbee_workers.listen import is_loopback, parse_listen

log = structlog.get_logger("lilbee_workers.http")

MAX_HTTP_CONNECTIONS = 256
_CUT_GRACE_S = 3.0
"""After the drain deadline, how long cut calls get to write their error and close
before uvicorn cancels whatever is left."""


class HttpServer:
    """``bind()`` takes the port (fails fast), ``start()`` serves, ``stop()`` stops
    accepting and waits for the thread."""

    def __init__(self, config: SupervisorConfig, api: WorkerAPI) -> None:
        self.listen = config.http_listen
        self.host, self.port = parse_listen(config.http_listen)
        api_key = self._key(config)
        self.face = HttpFace(api, config.http_max_body_bytes, api_key, self.host)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.face.app(),
                lifespan="off",
                log_level="warning",
                access_log=False,
                limit_concurrency=MAX_HTTP_CONNECTIONS,
                # A backstop only: ``stop`` sets it past the drain deadline, at which
                # the face itself cuts what still runs (with an error, between events).
                timeout_graceful_shutdown=5,
            )
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._socket: socket.socket | None = None
        self.authenticated = api_key is not None

    def _key(self, config: SupervisorConfig) -> str | None:
        """The key ``config`` names, read now; ``ConfigError`` if a reachable address
        would have none."""
        api_key = _read_key(config.http_api_key_file) if config.http_api_key_file else None
        if api_key is None and not is_loopback(self.host):
            raise ConfigError(f"http_listen {self.listen} needs http_api_key_file")
        return api_key

    def reload(self, config: SupervisorConfig) -> Callable[[], list[str]]:
        """Check a reloaded config's ``http_*`` settings (the key file is read again, so
        a rotated key takes effect); ``ConfigError`` if they are bad. The function
        returned applies them, and returns what needs a restart of the daemon instead."""
        api_key = self._key(config)

        def apply() -> list[str]:
            self.face.configure(config.http_max_body_bytes, api_key)
            self.authenticated = api_key is not None
            if config.http_listen != self.listen:
                return [f"http_listen {config.http_listen or '(off)'} (serving {self.listen})"]
            return []

        return apply

    def bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it each small response waits out a delayed ACK (~40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"cannot serve HTTP on {self.host}:{self.port}: {exc}") from None
        sock.listen(128)
        self._socket = sock
        self.port = sock.getsockname()[1]  # port 0: the one the kernel chose

    def start(self) -> None:
        if self._socket is None:
            self.bind()
        self._thread.start()
        log.info(
            "http serving",
            url=f"http://{self.host}:{self.port}/v1",
            api_key="required" if self.authenticated else "none (loopback only)",
        )

    def _run(self) -> None:
        async def serve() -> None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            loop.set_default_executor(
                ThreadPoolExecutor(MAX_HTTP_CONNECTIONS, thread_name_prefix="http-wait")
            )
            assert self._socket is not None
            await self._uvicorn.serve(sockets=[self._socket])

        try:
            asyncio.run(serve())
        except BaseException:
            log.exception("http server stopped with an error")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, deadline: float, drain_timeout_s: float) -> None:
        """Stop accepting; let calls in flight finish until ``deadline`` (monotonic), as
        socket calls do; then the face cuts the rest: a 503, or mid-stream an error event."""
        remaining = max(0.0, deadline - time.monotonic())
        if self._loop is not None and self._thread.is_alive():
            self.face.drain.start(self._loop, deadline, drain_timeout_s)
        self._uvicorn.config.timeout_graceful_shutdown = math.ceil(remaining + _CUT_GRACE_S)
        self._uvicorn.should_exit = True
        if self._thread.is_alive():
            self._thread.join(remaining + 2 * _CUT_GRACE_S)
        if self._socket is not None:
            self._socket.close()


def _read_key(path: str) -> str:
    try:
        key = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"http_api_key_file: cannot read {path}: {exc}") from None
    if len(key) < 16:
        raise ConfigError(f"http_api_key_file: {path} holds a key of under 16 characters")
    return key
