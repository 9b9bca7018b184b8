"""How a pull shows its progress: bars on a terminal (size, rate, ETA), one JSON line
per file for scripts, or plain lines (a pipe, or ``serve``'s log with ``auto_pull``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lilbee_workers.hub.download import Pulled


class BarReport:
    """A rich progress bar per file on a terminal: size, rate, time left."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream or sys.stderr),
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BarReport:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def start(self, file: str, size: int) -> None:
        self.tasks[file] = self.progress.add_task(file, total=size)

    def advance(self, file: str, done: int) -> None:
        if file in self.tasks:
            self.progress.update(self.tasks[file], completed=done)

    def finish(self, pulled: Pulled) -> None:
        self.progress.update(self.tasks[pulled.file], completed=pulled.size)
        state = "verified" if pulled.downloaded else "already cached, verified"
        self.note(f"{pulled.file}: {state}, sha256 {pulled.sha256}")


class LineReport:
    """Plain lines: a start, a line every ``every`` seconds with the share done, the
    rate and time left, and an end."""

    def __init__(self, emit: Callable[[str], None], every: float = 5.0) -> None:
        self.emit, self.every = emit, every
        self.began: dict[str, tuple[float, int]] = {}
        self.last = 0.0

    def __enter__(self) -> LineReport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def note(self, text: str) -> None:
        self.emit(text)

    def start(self, file: str, size: int) -> None:
        self.began[file] = (time.monotonic(), size)
        self.last = time.monotonic()
        self.emit(f"{file}: {size / 2**20:.1f} MiB")

    def advance(self, file: str, done: int) -> None:
        now = time.monotonic()
        if file not in self.began or now - self.last < self.every:
            return
        self.last = now
        began, size = self.began[file]
        rate = done / max(now - began, 1e-6)
        left = f"{(size - done) / rate:.0f}s left" if rate > 0 else "time left unknown"
        self.emit(f"{file}: {100 * done / max(size, 1):.0f}% of {size / 2**20:.1f} MiB, "
                  f"{rate / 2**20:.1f} MiB/s, {left}")  # fmt: skip

    def finish(self, pulled: Pulled) -> None:
        state = "verified" if pulled.downloaded else "already cached, verified"
        self.emit(f"{pulled.file}: {state} in {pulled.seconds:.1f}s, sha256 {pulled.sha256}")


class JsonReport:
    """One JSON object per line: each note, and each file when it is verified."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout  # the one at the time of the pull

    def __enter__(self) -> JsonReport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _line(self, data: object) -> None:
        print(json.dumps(data), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._line({"note": text})

    def start(self, file: str, size: int) -> None:
        return None

    def advance(self, file: str, done: int) -> None:
        return None

    def finish(self, pulled: Pulled) -> None:
        self._line({**asdict(pulled), "seconds": round(pulled.seconds, 3)})
