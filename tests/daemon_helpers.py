"""Run the real daemon (`lilbee-workers serve`) as a subprocess for tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lilbee_workers import Client
from lilbee_workers.errors import WorkerError


def write_config(path: Path, roles: dict[str, dict[str, Any]], **top: Any) -> Path:
    """A TOML config file (values: str, int, float, bool)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = [f"{key} = {value(v)}" for key, v in top.items()]
    for role, settings in roles.items():
        lines.append(f"[roles.{role}]")
        lines += [f"{key} = {value(v)}" for key, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    """`lilbee-workers serve` in a subprocess on a private socket."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        """``open_files``: run the daemon under ``ulimit -n open_files``; ``args``: more
        ``serve`` options (``--http HOST:PORT``)."""
        # A short, world-traversable directory: AF_UNIX paths are limited to 108 bytes,
        # and the foreign-uid test connects from another user.
        self.dir = Path(tempfile.mkdtemp(prefix="lbw-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "d.sock"
        self.log = self.dir / "daemon.log"
        self.config = config
        self._log_handle = open(self.log, "wb")
        limit = ["sh", "-c", f'ulimit -n {open_files} && exec "$@"', "sh"] if open_files else []
        self.proc = subprocess.Popen(
            [
                *limit,
                sys.executable,
                "-m",
                "lilbee_workers.cli.main",
                "serve",
                "--config",
                str(config),
                "--socket",
                str(self.socket),
                *args,
            ],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 90) -> Client:
        deadline = time.monotonic() + timeout
        client = Client(self.socket)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            try:
                statuses = client.status()
            except WorkerError:
                time.sleep(0.1)
                continue
            if all(s.state in ("ready", "failed") for s in statuses):
                return client
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_handle.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode
