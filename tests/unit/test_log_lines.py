"""A log line reaches stderr in one write, so a progress line printed by another thread
(serve's load lines) can never land between a log line's text and its newline."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from lilbee_workers.logs import configure_logging


class Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info", colors=False)
    try:
        structlog.get_logger("test").info("worker spawned", role="chat", pid=1)
        structlog.get_logger("test").warning("worker lost", role="embed")
    finally:
        structlog.reset_defaults()
    assert len(stream.writes) == 2
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes), stream.writes
    assert "worker spawned" in stream.writes[0] and "role=chat" in stream.writes[0]
