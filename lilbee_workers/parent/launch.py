"""Launching a worker process: ``python -m lilbee_workers.child`` with its ends of two
socket pairs passed as file descriptors, stdout and stderr on the role's log.

Not ``multiprocessing``: the parent's ``__main__`` is never re-imported, so a script
without an ``if __name__ == "__main__"`` guard, or a notebook, can run a supervisor.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import lilbee_workers

_PACKAGE_ROOT = str(Path(lilbee_workers.__file__).resolve().parent.parent)


@dataclass(frozen=True)
class Launched:
    """A started worker: its process, its pidfd (readable once it exits; a race-free
    handle to signal it), and the parent's ends of its data and health pipes."""

    popen: subprocess.Popen[bytes]
    pidfd: int
    data: Connection
    health: Connection


def worker_environment() -> dict[str, str]:
    """The parent's environment, with this package importable and ggml quiet on abort."""
    env = dict(os.environ)
    paths = [_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # On an abort, ggml would attach gdb to print a backtrace: slow, and it buries
    # llama.cpp's own assert message (the line users need) under the backtrace.
    env.setdefault("GGML_NO_BACKTRACE", "1")
    return env


def launch_worker(role: str, log_path: Path) -> Launched:
    """Start one worker process for ``role``; ``OSError`` when it cannot be started."""
    data_parent, data_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    health_parent, health_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = (data_child.fileno(), health_child.fileno())
    command = [sys.executable, "-m", "lilbee_workers.child", *map(str, fds), str(os.getpid())]
    try:
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                command,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=worker_environment(),
            )
    except OSError:
        data_parent.close()
        health_parent.close()
        raise
    finally:
        data_child.close()
        health_child.close()
    return Launched(
        popen,
        os.pidfd_open(popen.pid),
        Connection(data_parent.detach()),
        Connection(health_parent.detach()),
    )
