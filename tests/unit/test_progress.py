"""Load progress without a model: the worker's frame throttle, the supervisor's record,
how status and the progress views render it, and `status` through a daemon socket."""

from __future__ import annotations

import io
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lilbee_workers.child.heartbeat import ProgressReporter
from lilbee_workers.cli.main import app
from lilbee_workers.cli.output import state_text, status_table
from lilbee_workers.cli.progress import LoadBars, LoadLines, watch_loads
from lilbee_workers.parent.stats import RoleStats
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import PipeChannel, SocketChannel
from lilbee_workers.transport.frames import LoadProgress, StatusReply, StatusRequest
from lilbee_workers.types import RoleStatus


def role(state: str, progress: float | None = None, name: str = "chat", **kw: object) -> RoleStatus:
    return RoleStatus(role=name, state=state, load_progress=progress, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- worker side


def test_reporter_sends_a_frame_per_step_rising_and_always_the_end() -> None:
    ours, theirs = socket.socketpair()
    sender = PipeChannel(Connection(ours.detach()), codec.TO_HEARTBEAT)
    receiver = PipeChannel(Connection(theirs.detach()), codec.FROM_HEARTBEAT)
    report = ProgressReporter(sender, step=0.1)
    for fraction in (0.0, 0.01, 0.05, 0.1, 0.15, 0.35, 0.3, float("nan"), 0.999, 1.0, 1.0, 7.0):
        report(fraction)
    got = []
    while receiver.poll(0.2):
        frame = receiver.recv()
        assert isinstance(frame, LoadProgress)
        got.append(frame.fraction)
    sender.close()
    receiver.close()
    assert got == [0.0, 0.1, 0.35, 0.999, 1.0]


# ---------------------------------------------------------------- supervisor side


def test_stats_show_only_the_loading_generation() -> None:
    stats = RoleStats()
    assert stats.counts()["load_progress"] is None  # no load reported yet
    stats.loading(2)
    assert stats.counts()["load_progress"] == 0.0
    stats.load_progressed(2, 0.43)
    stats.load_progressed(3, 0.9)  # a standby spare loading beside it
    stats.load_progressed(1, 1.0)  # a late frame of an older worker
    assert stats.counts()["load_progress"] == 0.43
    stats.load_progressed(2, 1.0)
    assert stats.counts()["load_progress"] == 1.0


# ---------------------------------------------------------------- rendering


def test_state_text_says_loading_only_while_loading() -> None:
    assert state_text(role("starting", 0.43)) == "loading 43%"
    assert state_text(role("restarting", 0.999)) == "loading 99%"
    assert state_text(role("starting")) == "starting"  # no progress reported yet
    assert state_text(role("ready", 1.0)) == "ready"
    assert state_text(role("failed", 0.5)) == "failed"


def test_status_table_shows_the_load() -> None:
    out = io.StringIO()
    Console(file=out, width=120).print(
        status_table([role("starting", 0.43), role("ready", 1.0, "embed")])
    )
    lines = out.getvalue().splitlines()
    assert any(line.startswith("chat") and "loading 43%" in line for line in lines), lines
    assert any(line.startswith("embed") and " ready " in line for line in lines), lines


def test_plain_lines_at_coarse_steps_then_how_it_ended() -> None:
    out = io.StringIO()
    view = LoadLines(out, ends=True, step=25)
    view.show([role("starting"), role("starting", 0.0, "embed")])
    view.show([role("starting", 0.1), role("starting", 0.3, "embed")])
    view.show([role("starting", 0.4), role("starting", 0.99, "embed")])
    view.show([role("starting", 0.6), role("failed", 0.99, "embed", last_exit="killed")])
    view.show([role("ready", 1.0), role("failed", 0.99, "embed", last_exit="killed")])
    view.close([role("ready", 1.0), role("failed", 0.99, "embed", last_exit="killed")])
    assert out.getvalue().splitlines() == [
        "embed: loading 0%",
        "chat: loading 0%",
        "embed: loading 25%",
        "chat: loading 25%",
        "embed: loading 75%",
        "chat: loading 50%",
        "embed: failed: killed",
        "chat: ready",
    ]


def test_plain_lines_close_says_ready_for_a_role_never_seen_loading() -> None:
    out = io.StringIO()
    watch_loads(lambda: [role("ready", 1.0)], lambda timeout: True, LoadLines(out))
    assert out.getvalue() == "chat: ready\n"
    quiet = io.StringIO()  # `restart` prints how it ended itself
    watch_loads(lambda: [role("ready", 1.0)], lambda timeout: True, LoadLines(quiet, ends=False))
    assert quiet.getvalue() == ""


def test_bars_show_each_role_and_its_state() -> None:
    out = io.StringIO()
    bars = LoadBars(Console(file=out, width=80, force_terminal=True, color_system=None))
    bars.show([role("starting", 0.43), role("draining", None, "embed")])
    bars.close([role("ready", 1.0), role("failed", 0.1, "embed")])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "loading 43%" in text and "draining" in text
    drawn = [line.strip() for line in re.split(r"[\r\n]", text)]
    last = {
        name: [line for line in drawn if line.startswith(name)][-1] for name in ("chat", "embed")
    }
    assert last["chat"].endswith("ready") and "━" in last["chat"], last
    assert last["embed"].endswith("failed"), last


# ---------------------------------------------------------------- `status` over a socket


@pytest.fixture
def loading_daemon() -> Iterator[Path]:
    """A stand-in daemon whose chat role is 43% through loading its model."""
    directory = Path(tempfile.mkdtemp(prefix="lbw-"))
    path = directory / "d.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def answer() -> None:
        conn, _ = listener.accept()
        channel = SocketChannel(conn, codec.TO_DAEMON)
        request = channel.recv()
        assert isinstance(request, StatusRequest)
        roles = [role("starting", 0.43, generation=1), role("ready", 1.0, "embed", pid=7)]
        channel.send(StatusReply(id=request.id, roles=roles))
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        thread.join(5)
        listener.close()
        path.unlink(missing_ok=True)
        directory.rmdir()


def test_status_command_shows_loading_percent(loading_daemon: Path) -> None:
    result = CliRunner().invoke(
        app, ["status", "--socket", str(loading_daemon)], env={"LILBEE_WORKERS_CONFIG": None}
    )
    assert result.exit_code == 3, result.output  # a role not ready yet
    chat = next(line for line in result.stdout.splitlines() if line.startswith("chat"))
    assert "loading 43%" in chat, result.stdout
