"""One Ray actor as a ``WorkerHandle``: the supervisor's side of the Ray backend.

The dispatcher, ``attempt``, ``policy`` and the health monitor work on it unchanged,
because it keeps the local worker's shape: a data pipe and a health pipe (socket pairs
inside this process, relayed to the actor's methods by ``cluster.relay``) and a death
sentinel (a pipe that turns readable once the actor is gone).

An actor that dies fails its Ray calls: the relay marks it gone and the dispatcher
retries or reports as for a local crash. A stopped or wedged actor misses its pings;
the monitor then calls ``kill`` (``ray.kill``). Ray itself never restarts an actor or
retries a call (``max_restarts=0``, ``max_task_retries=0``).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import structlog

from lilbee_workers.cluster import connect
from lilbee_workers.cluster.relay import LOADING_POLL_S, ActorRelay, pipe_pair
from lilbee_workers.config import RoleConfig
from lilbee_workers.logs import rotate_if_large, tail_lines
from lilbee_workers.parent.handle import WorkerFactory, WorkerHandle, poll_data
from lilbee_workers.parent.monitor import HealthMonitor
from lilbee_workers.parent.policy import StartFailed
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    LoadFailed,
    Ready,
    WorkerBoot,
)

log = structlog.get_logger("lilbee_workers.ray")


class RayWorker:
    """A handle on one role actor (one generation) and its two relayed pipes."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        model_path: str,
        log_path: Path,
        generation: int,
        max_frame_bytes: int,
        address: str,
        on_exit: Callable[[RayWorker], None],
        log_max_bytes: int,
        warm_up: bool,
    ) -> None:
        self.role, self.config, self.model_path = role, config, model_path
        self.log_path, self.generation, self.max_frame_bytes = log_path, generation, max_frame_bytes
        self.address, self.on_exit = address, on_exit
        self.log_max_bytes, self.warm_up = log_max_bytes, warm_up
        self.on_progress: Callable[[float], None] = lambda fraction: None
        self.ready: Ready | None = None
        self.monitor: HealthMonitor | None = None
        self.kill_reason: str | None = None
        self.death = ""  # what Ray said when the actor's calls failed
        self.node = ""
        self.started_at = time.monotonic()
        self._pid = 0
        self._actor: Any = None
        self._stopping = False
        self._gone = threading.Event()
        self._exited = threading.Event()  # the monitor thread has finished
        self._monitor_thread: threading.Thread | None = None
        self._sentinel_read, self._sentinel_write = os.pipe()
        self._released = False  # the owner is done: nobody polls the sentinel
        self._killed = False  # ray.kill was called (once)
        self._lock = threading.Lock()  # the sentinel's two ends; log lines

    # ------------------------------------------------------------------ start

    def start(self, abandon: Callable[[], bool] = lambda: False) -> Ready:
        """Create the actor, load the model in it, and wait for READY; ``StartFailed``
        if it never comes (the cluster unreachable, the load failed, the actor died).
        Whatever goes wrong, nothing is left behind: no actor, thread or pipe."""
        rotate_if_large(self.log_path, self.log_max_bytes)
        self._note(f"=== lilbee-workers {self.role} actor generation {self.generation}")
        try:
            self._actor = connect.create_actor(self.address, self.config, self._boot())
        except Exception as exc:
            message = f"cannot start the {self.role} actor on Ray at {self.address}: {exc}"
            self._note(message)
            self._mark_gone(message)
            self._exited.set()  # no monitor was started
            self.close_data()
            raise StartFailed(message, crashed=False) from None
        data_relay: Connection | None = None
        try:
            data_relay, relay = self._connect_pipes()
            self.ready = self._await_ready(abandon)
            self._pid, self.node = self.ready.pid, self.ready.node
            assert self.monitor is not None
            self.monitor.pid = self._pid
            relay.side_by_side = self.ready.slots > 1  # streams run at once in its slots
            relay.start(relay.data, data_relay, f"ray-data-{self.role}")
        except BaseException:
            self.kill("start failed")
            if data_relay is not None:
                data_relay.close()  # its relay never started
            self.join(5)
            self.close_data()
            raise
        log.info("actor ready", role=self.role, pid=self._pid, node=self.node[:8])
        return self.ready

    def _connect_pipes(self) -> tuple[Connection, ActorRelay]:
        """The local pipes, the monitor and the health relay; the data relay's end."""
        data_ours, data_relay = pipe_pair()
        health_ours, health_relay = pipe_pair()
        self.data = PipeChannel(data_ours, codec.FROM_WORKER, self.max_frame_bytes)
        self.health = PipeChannel(health_ours, codec.FROM_HEARTBEAT, self.max_frame_bytes)
        self._poller = select.poll()
        self._poller.register(data_ours.fileno(), select.POLLIN)
        self._poller.register(self._sentinel_read, select.POLLIN)
        self._data_fd = data_ours.fileno()
        self._start_monitor()
        relay = ActorRelay(
            self._actor,
            self.config.heartbeat_timeout_s,
            loaded=lambda: self.ready is not None,
            gone=self._gone,
            on_gone=self._end,
            note=self._note,
        )
        relay.start(relay.health, health_relay, f"ray-health-{self.role}")
        return data_relay, relay

    def _boot(self) -> bytes:
        boot = WorkerBoot(
            role=self.role,
            config=msgspec.msgpack.encode(self.config),
            model_path=self.model_path,
            log_path=str(self.log_path),
            generation=self.generation,
            max_frame_bytes=self.max_frame_bytes,
            log_max_bytes=self.log_max_bytes,
            warm_up=self.warm_up,
        )
        return codec.encode(boot)

    def _start_monitor(self) -> None:
        self.monitor = HealthMonitor(
            self.role,
            0,
            self.health,
            self._sentinel_read,
            self.config,
            loaded=lambda: self.ready is not None,
            stopping=lambda: self._stopping,
            on_hang=self.kill,
            on_progress=lambda fraction: self.on_progress(fraction),
        )
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"health-{self.role}-ray", daemon=True
        )
        self._monitor_thread.start()

    def _await_ready(self, abandon: Callable[[], bool]) -> Ready:
        ray = connect.ray_module()
        loading = self._actor.load.options(concurrency_group="data").remote()
        deadline = time.monotonic() + self.config.start_timeout_s
        while not ray.wait([loading], timeout=LOADING_POLL_S)[0]:
            if self._gone.is_set() or connect.joined() is None:
                raise StartFailed(self.exit_description(), crashed=True, log_tail=self.log_tail())
            if abandon():
                raise StartFailed(f"{self.role} is shutting down", crashed=False)
            if time.monotonic() > deadline:
                self.kill(f"did not load within {self.config.start_timeout_s:g}s")
                raise StartFailed(self.exit_description(), crashed=True, log_tail=self.log_tail())
        try:
            frame = codec.FROM_WORKER.decode(ray.get(loading))
        except Exception as exc:  # the actor died while loading
            self._end(connect.describe_death(exc))
            raise StartFailed(
                f"actor died while loading the model: {self.exit_description()}",
                crashed=True,
                log_tail=self.log_tail(),
            ) from None
        if isinstance(frame, LoadFailed):
            raise StartFailed(frame.message, crashed=False)
        if not isinstance(frame, Ready):
            raise StartFailed(f"unexpected {type(frame).__name__} while loading", crashed=True)
        return frame

    # ------------------------------------------------------------------ health

    def _monitor(self) -> None:
        assert self.monitor is not None
        try:
            self.monitor.watch()
        except Exception as exc:
            log.exception("health monitor failed; killing the actor", role=self.role)
            self.kill(f"health monitor failed: {type(exc).__name__}: {exc}")
        finally:
            self._exited.set()
            self.health.close()
            self._close_sentinel()
            log.info("actor gone", role=self.role, pid=self._pid, reason=self.exit_description())
            self.on_exit(self)

    def _mark_gone(self, death: str) -> None:
        """The actor is dead (or killed): the sentinel turns readable, once."""
        with self._lock:
            if self._gone.is_set():
                return
            self.death = self.death or death
            self._gone.set()
            os.close(self._sentinel_write)
        if death:
            self._note(f"actor gone: {death}")

    def _close_sentinel(self) -> None:
        """Close the sentinel once the actor is gone, the monitor done and the owner let go."""
        with self._lock:
            if self._exited.is_set() and self._released and self._sentinel_read >= 0:
                os.close(self._sentinel_read)
                self._sentinel_read = -1

    def monitoring(self) -> bool:
        thread = self._monitor_thread
        return self._exited.is_set() or (thread is not None and thread.is_alive())

    def wait_data(self, timeout: float, wake_fd: int = -1) -> tuple[bool, bool]:
        """Wait up to ``timeout`` s: (data pipe readable, actor gone)."""
        return poll_data(self._poller, self._data_fd, timeout, wake_fd)

    # ------------------------------------------------------------------ facts

    @property
    def pid(self) -> int:
        return self._pid

    def alive(self) -> bool:
        return self._actor is not None and not self._gone.is_set()

    def vitals(self) -> dict[str, Any]:
        pong = self.monitor.last_pong if self.monitor is not None else None
        return {
            "pid": self._pid,
            "node": self.node,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "rss_bytes": pong.rss_bytes if pong is not None else 0,
        }

    def log_tail(self, lines: int = 20) -> str:
        return tail_lines(self.log_path, lines)

    def exit_description(self) -> str:
        who = f"{self.role} actor" + (f" pid {self._pid}" if self._pid else "")
        if self.node:
            who += f" on node {self.node[:8]}"  # as status shows it
        how = self.death or ("still running" if self.alive() else "gone")
        return f"{who} {self.kill_reason}; {how}" if self.kill_reason else f"{who} {how}"

    def _note(self, line: str) -> None:
        """A line in the role's log (rotated past ``log_max_bytes``, as a worker does)."""
        with self._lock:
            rotate_if_large(self.log_path, self.log_max_bytes)
            try:
                with open(self.log_path, "a", encoding="utf-8") as handle:
                    handle.write(line.rstrip("\n") + "\n")
            except OSError:
                pass

    # ------------------------------------------------------------------ stop

    def kill(self, reason: str) -> None:
        """End the actor now (``ray.kill``; first reason wins)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self._end("killed")

    def _end(self, death: str) -> None:
        """The actor is given up, for whatever reason (killed, stopped, or a Ray call
        failed: Ray may only call it unavailable, or a method raised): it is seen gone
        at once, and then killed, so a live actor never keeps its model and its share of
        the cluster behind our back. Never a Ray call once this process left Ray."""
        self._mark_gone(death)
        with self._lock:
            if self._killed or self._actor is None:
                return
            self._killed = True
        ray = connect.joined()
        if ray is None:
            return  # the cluster is left: its actors ended with our driver
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception as exc:
            log.warning("ray.kill failed", role=self.role, error=str(exc))

    def join(self, timeout: float) -> None:
        self._exited.wait(timeout)

    def stop(self, grace_s: float) -> None:
        """Stop what runs (the owner stops a worker after its calls), then end the actor."""
        self._stopping = True
        if self._actor is not None and not self._gone.is_set() and connect.joined():
            try:
                self._actor.stop.options(concurrency_group="control").remote()
            except Exception:
                pass
        self._end("stopped")
        self.join(grace_s)
        self.close_data()

    def close_data(self) -> None:
        try:
            self.data.close()
        except (OSError, AttributeError):
            pass
        self._released = True
        self._close_sentinel()


def ray_factory(
    role: str, log_path: Path, max_frame_bytes: int, log_max_bytes: int, address: str
) -> WorkerFactory:
    """Role actors on Ray, as a dispatcher's ``new_worker`` (``backend = "ray"``)."""

    def new_worker(
        config: RoleConfig,
        model_path: str,
        generation: int,
        on_exit: Callable[[WorkerHandle], None],
        warm_up: bool,
    ) -> WorkerHandle:
        return RayWorker(
            role,
            config,
            model_path,
            log_path,
            generation,
            max_frame_bytes,
            address,
            on_exit,
            log_max_bytes,
            warm_up,
        )

    return new_worker
