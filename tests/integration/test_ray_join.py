"""Joining a Ray cluster that is not there must fail the role with a reason, never hang
its start or the supervisor's close. In a fresh process each time: a ``ray.init`` that
never answers keeps retrying in its thread, and must not share a process with the other
Ray tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

SCRIPT = textwrap.dedent("""
    import sys, time
    from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig
    role = RoleConfig(model="/models/on-the-cluster.gguf", max_restarts=0, start_timeout_s=3)
    config = SupervisorConfig(roles={"embed": role}, backend="ray", ray_address=sys.argv[1],
                              log_dir=sys.argv[2])
    began = time.monotonic()
    with Supervisor(config) as sup:
        status = sup.role_status("embed")
    print(status.state, round(time.monotonic() - began, 1), status.last_exit, sep="|")
""")


def run(address: str, log_dir: Path) -> tuple[str, float, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, address, str(log_dir)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state, seconds, reason = done.stdout.strip().splitlines()[-1].split("|", 2)
    return state, float(seconds), reason


def test_a_head_nobody_listens_on_fails_the_role_at_once(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: refused
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    state, seconds, reason = run(f"127.0.0.2:{port}", tmp_path)
    assert state == "failed" and f"nothing answers at 127.0.0.2:{port}" in reason
    assert "cannot start the embed actor on Ray" in reason
    assert seconds < 10


def test_a_head_that_never_answers_fails_the_role_within_start_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.2", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        began = time.monotonic()
        state, seconds, reason = run(f"127.0.0.2:{port}", tmp_path)
        took = time.monotonic() - began
    assert state == "failed" and "Ray did not answer" in reason and "within 3s" in reason
    assert seconds < 30 and took < 60  # start and close both returned
