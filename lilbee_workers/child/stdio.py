"""The worker's stdout/stderr: the role's log file, rotated while the worker runs,
and writes that never raise (a full disk must not kill a worker at its next print)."""

from __future__ import annotations

import io
import os
import sys


class LogStream(io.TextIOBase):
    """A text stream on a file descriptor that drops what it cannot write (ENOSPC, EIO)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # the log is full or gone; the worker's answers matter more
        return len(text)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def use_log_streams() -> None:
    """Python's stdio on fds 1 and 2 (which the supervisor pointed at the role's log)."""
    sys.stdout = LogStream(1)
    sys.stderr = LogStream(2)


def rotate_log(log_path: str, max_bytes: int) -> bool:
    """Past ``max_bytes``, move the log to ``.1`` and reopen fds 1 and 2 on a new file,
    so llama.cpp's C output and ours go there too. True when it rotated."""
    try:
        if os.fstat(2).st_size <= max_bytes:
            return False
        os.replace(log_path, log_path + ".1")
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except OSError:
        return False  # not a regular file we may rotate (e.g. /dev/null): leave it
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True
