"""Model loads as people watch them: while ``serve`` starts its roles, or ``restart
--wait`` waits for them, each role's load is shown as it goes. On a terminal, one
rich progress bar per role; otherwise (a log, a pipe, the journal) plain lines at
coarse steps: ``chat: loading 50%``, then ``chat: ready``.

Both read the roles' status (``RoleStatus.loading``, from llama.cpp's load progress
callback), so they work the same in the daemon and over its socket.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

from lilbee_workers.cli.output import percent, state_text
from lilbee_workers.errors import WorkerError
from lilbee_workers.types import RoleStatus

if TYPE_CHECKING:
    from rich.console import Console

    from lilbee_workers.client import Client

POLL_S = 0.1
"""How often the status is read while a load is watched."""

_SETTLED = ("ready", "busy", "failed", "stopped", "unloaded")


class LoadView(Protocol):
    """Shows the roles' loads."""

    def show(self, statuses: list[RoleStatus]) -> None:
        """The roles as they are now."""
        ...

    def close(self, statuses: list[RoleStatus]) -> None:
        """The watch is over; ``statuses`` is how it ended."""
        ...


def view_for(stream: TextIO, ends: bool) -> LoadView:
    """Bars when ``stream`` is a terminal, plain lines otherwise. ``ends``: also say
    when each role is ready or failed (``restart`` prints that itself)."""
    if stream.isatty():
        from rich.console import Console

        return LoadBars(Console(file=stream))
    return LoadLines(stream, ends=ends)


def watch_loads(
    status: Callable[[], list[RoleStatus]],
    over: Callable[[float], bool],
    view: LoadView,
    final: Callable[[], list[RoleStatus]] | None = None,
) -> None:
    """Show ``status()`` every ``POLL_S`` until ``over(timeout)`` (which waits up to
    ``timeout`` s) is true; then close the view with ``final()`` (default: the status
    then). A status that cannot be read is skipped: ``over`` decides when to stop."""
    statuses: list[RoleStatus] = []
    try:
        while True:
            try:
                statuses = status()
            except WorkerError:
                pass
            else:
                view.show(statuses)
            if over(POLL_S):
                break
        if final is not None:
            statuses = final()
        else:
            try:
                statuses = status()
            except WorkerError:
                pass
    finally:
        view.close(statuses)


def restart_watching(client: Client, role: str, view: LoadView) -> list[RoleStatus]:
    """``client.restart(role, wait=True)``, showing the loads while it waits. The restart
    runs on a thread of its own (a connection of its own); this one reads the status."""
    outcome: list[list[RoleStatus]] = []
    failure: list[BaseException] = []

    def restart() -> None:
        try:
            outcome.append(client.restart(role, wait=True))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=restart, name="restart", daemon=True)
    thread.start()

    def over(timeout: float) -> bool:
        thread.join(timeout)
        return not thread.is_alive()

    def restarted() -> list[RoleStatus]:
        return [s for s in client.status() if role in ("all", s.role)]

    watch_loads(restarted, over, view, final=lambda: outcome[0] if outcome else [])
    if failure:
        raise failure[0]
    return outcome[0]


def end_text(status: RoleStatus) -> str:
    """How a role's load ended: ``ready``, or ``failed: why``."""
    if status.state in ("ready", "busy") or not status.last_exit:
        return status.state
    return f"{status.state}: {status.last_exit}"


class LoadLines:
    """Plain lines: one each time a role's load passes a ``step`` percent, and (with
    ``ends``) one when it is ready or failed."""

    def __init__(self, out: TextIO | None = None, *, ends: bool = True, step: int = 25) -> None:
        self.out = out if out is not None else sys.stderr
        self.ends = ends
        self.step = step
        self._marks: dict[str, int] = {}  # per role loading now: the last step printed
        self._ended: set[str] = set()

    def show(self, statuses: list[RoleStatus]) -> None:
        for status in statuses:
            fraction = status.loading
            if fraction is not None:
                self._ended.discard(status.role)
                mark = percent(fraction) // self.step * self.step
                if mark != self._marks.get(status.role, -1):  # a new load starts lower
                    self._marks[status.role] = mark
                    self._line(f"{status.role}: loading {mark}%")
            elif status.role in self._marks and status.state in _SETTLED:
                self._end(status)

    def close(self, statuses: list[RoleStatus]) -> None:
        for status in statuses:
            if status.role not in self._ended and status.state in _SETTLED:
                self._end(status)

    def _end(self, status: RoleStatus) -> None:
        self._marks.pop(status.role, None)
        self._ended.add(status.role)
        if self.ends:
            self._line(f"{status.role}: {end_text(status)}")

    def _line(self, text: str) -> None:
        # One write: print() writes the text and the newline apart, and a log line from
        # another thread can land between them.
        self.out.write(text + "\n")
        self.out.flush()


class LoadBars:
    """One rich progress bar per role, with its state beside it."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TaskID, TextColumn

        self._tasks: dict[str, TaskID] = {}
        self._loaded: set[str] = set()  # roles seen loading: their "ready" is the new one
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[state]}"),
            console=console,
            auto_refresh=False,  # drawn on each show: no refresh thread of its own
        )
        self._progress.start()

    def show(self, statuses: list[RoleStatus], closing: bool = False) -> None:
        width = max((len(s.role) for s in statuses), default=0)
        for status in statuses:
            task = self._tasks.get(status.role)
            if task is None:
                task = self._progress.add_task(status.role.ljust(width), total=100, state="")
                self._tasks[status.role] = task
            fraction = status.loading
            if fraction is not None:
                self._loaded.add(status.role)
                done = float(percent(fraction))
            elif status.state in ("ready", "busy"):
                done = 100.0 if closing or status.role in self._loaded else 0.0
            else:
                done = 0.0
            self._progress.update(task, completed=done, state=state_text(status))
        self._progress.refresh()

    def close(self, statuses: list[RoleStatus]) -> None:
        try:
            self.show(statuses, closing=True)
        finally:
            self._progress.stop()
