"""``python -m lilbee_workers.child DATA_FD HEALTH_FD PARENT_PID``: one worker process.

The first thing it does is ask the kernel to SIGKILL it when its parent dies, then
check that the parent is still the one that started it (it may have died before the
request took effect), so a worker never outlives its supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the heartbeat thread still exits when the health pipe closes
    if os.getppid() != parent_pid:
        os._exit(1)


if __name__ == "__main__":
    die_with_parent(int(sys.argv[3]))
    from lilbee_workers.child.main import main

    main(int(sys.argv[1]), int(sys.argv[2]))
