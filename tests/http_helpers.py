"""Run the real daemon with its HTTP face on a free loopback port, for the HTTP tests."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import Client
from lilbee_workers.types import RoleStatus

JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HttpDaemon:
    def __init__(self, process: DaemonProcess, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def openai(self, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        options.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=self.url + "/v1", **options)

    def status(self, role: str) -> RoleStatus:
        with Client(self.process.socket) as client:
            return {s.role: s for s in client.status()}[role]


def start_http_daemon(root: Path, roles: dict[str, dict[str, Any]], **top: Any) -> HttpDaemon:
    port = free_port()
    config = write_config(
        root / "w.toml",
        roles,
        log_dir=str(root / "logs"),
        http_listen=f"127.0.0.1:{port}",
        **top,
    )
    process = DaemonProcess(config)
    process.wait_ready()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            return HttpDaemon(process, port)
        except httpx.TransportError:
            time.sleep(0.1)
    process.stop()
    raise AssertionError("the HTTP face never answered")


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
