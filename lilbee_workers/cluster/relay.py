"""The two relay threads between a ``RayWorker``'s local pipes and its actor.

- data: each request's bytes go to ``RoleActor.call`` (a streaming generator in the
  "data" concurrency group; each frame it yields is written back as it arrives), or,
  for replies that do not stream, to ``RoleActor.call_once``;
- health: a ``Ping`` becomes ``RoleActor.beat`` (the "control" group, so a busy actor
  still answers) and the log records, load progress and ``Pong`` it returns come back;
  ``Cancel`` and ``Shutdown`` become ``cancel`` and ``stop``.

A Ray call that fails because the actor is gone (killed, its process dead, its node
lost) reports that through ``on_gone``; the worker then turns its death sentinel on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from lilbee_workers.cluster import connect
from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport import codec
from lilbee_workers.transport.frames import Cancel, LogRecord, Ping, Shutdown, ShutdownAck

LOADING_POLL_S = 0.2  # how often a loading actor's progress and logs are fetched
STREAMING = frozenset({"chat", "complete", "vision"})
"""Requests whose replies stream: served by the generator method. The others take the
plain method, one Ray call and one ``ray.get`` (about 0.5 ms less per call here)."""


class ActorRelay:
    """Carries one actor's frames to and from its two local pipes."""

    def __init__(
        self,
        actor: Any,
        heartbeat_timeout_s: float,
        *,
        loaded: Callable[[], bool],
        gone: threading.Event,
        on_gone: Callable[[str], None],
        note: Callable[[str], None],
    ) -> None:
        self.actor = actor
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.loaded = loaded
        self.gone = gone
        self.on_gone = on_gone
        self.note = note
        self.side_by_side = False
        """The actor batches streams (``parallel`` > 1): relay them side by side."""
        self._send_lock = threading.Lock()

    def start(self, target: Callable[[Connection], None], conn: Connection, name: str) -> None:
        threading.Thread(target=target, args=(conn,), name=name, daemon=True).start()

    def data(self, relay: Connection) -> None:
        """Requests to the actor, its frames back, until the pipe closes or the actor is
        gone. A Ray call that fails for any reason gives the actor up (``on_gone``).
        With ``side_by_side`` (an actor that batches streams), each stream is relayed
        by a thread of its own, so the frames of several streams interleave."""
        with relay:
            while not self.gone.is_set():
                try:
                    raw = relay.recv_bytes()
                except (EOFError, OSError):
                    return  # our end closed: the owner is done with this worker
                if self.side_by_side and codec.tag_of(raw) in STREAMING:
                    name = f"ray-stream-{codec.request_id_of(raw)}"
                    threading.Thread(
                        target=self._relay, args=(relay, raw), name=name, daemon=True
                    ).start()
                elif not self._relay(relay, raw):
                    return

    def _relay(self, relay: Connection, raw: bytes) -> bool:
        """One request's frames back on ``relay``; False once the relay must end."""
        try:
            for data in self._frames(raw):
                with self._send_lock:
                    relay.send_bytes(data)
        except (OSError, ValueError) as exc:
            if not _ours(exc):  # else our end closed under a reply
                self.on_gone(connect.describe_death(exc))
            return False
        except Exception as exc:  # the actor died (or Ray lost it) under the call
            self.on_gone(connect.describe_death(exc))
            return False
        return True

    def _frames(self, raw: bytes) -> Iterator[bytes]:
        """The reply frames of one request, as the actor makes them."""
        ray = connect.joined()
        if ray is None:
            raise ConnectionError("this process left the Ray cluster")
        if codec.tag_of(raw) in STREAMING:
            group = "streams" if self.side_by_side else "data"
            for ref in self.actor.call.options(concurrency_group=group).remote(raw):
                yield ray.get(ref)
        else:
            yield from ray.get(self.actor.call_once.options(concurrency_group="data").remote(raw))

    def health(self, relay: Connection) -> None:
        """Pings to ``beat`` (its frames back), cancels and shutdown to the actor;
        while it loads, its progress and log lines every ``LOADING_POLL_S``. If this
        thread fails, the actor is given up: nobody would watch it any more."""
        with relay:
            try:
                self._serve_health(relay)
            except (EOFError, OSError):
                return  # the monitor closed its end: the worker is done
            except Exception as exc:
                self.on_gone(f"health relay failed: {type(exc).__name__}: {exc}")

    def _serve_health(self, relay: Connection) -> None:
        while not self.gone.is_set():
            if not relay.poll(LOADING_POLL_S):
                if not self.loaded():
                    self.beat(relay, 0)
                continue
            try:
                frame = codec.TO_HEARTBEAT.decode(relay.recv_bytes())
            except ProtocolError:
                continue
            if connect.joined() is None:
                self.on_gone("this process left the Ray cluster")
                return
            if isinstance(frame, Ping):
                self.beat(relay, frame.seq)
            elif isinstance(frame, Cancel):
                self.actor.cancel.options(concurrency_group="control").remote(frame.id)
            elif isinstance(frame, Shutdown):
                self.actor.stop.options(concurrency_group="control").remote()
                relay.send_bytes(codec.encode(ShutdownAck()))

    def beat(self, relay: Connection, seq: int) -> None:
        """One ``beat``: its frames to the monitor, its log lines into the role's log
        too. An actor that does not answer in time is left to the monitor's deadline."""
        ray = connect.joined()
        if ray is None:
            self.on_gone("this process left the Ray cluster")
            return
        try:
            reply = self.actor.beat.options(concurrency_group="control").remote(seq)
            frames = ray.get(reply, timeout=self.heartbeat_timeout_s)
        except ray.exceptions.GetTimeoutError:
            return
        except Exception as exc:  # the actor is gone
            self.on_gone(connect.describe_death(exc))
            return
        for data in frames:
            relay.send_bytes(data)
            self._log(data)

    def _log(self, data: bytes) -> None:
        """The actor's own stdout and stderr stay in Ray's logs, on its node: its
        Python log records are what the role's log gets."""
        try:
            frame = codec.FROM_HEARTBEAT.decode(data)
        except ProtocolError:
            return
        if isinstance(frame, LogRecord):
            self.note(frame.message)


def _ours(exc: BaseException) -> bool:
    """An error of our own pipe, not one Ray raised (Ray's errors may subclass these)."""
    return type(exc) in (OSError, ValueError, BrokenPipeError, ConnectionResetError)


def pipe_pair() -> tuple[Connection, Connection]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Connection(ours.detach()), Connection(theirs.detach())
