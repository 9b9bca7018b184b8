"""The in-process supervisor: one set of replicas (one worker process each, one by
default) per role."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from lilbee_workers import memory
from lilbee_workers.api import CallHandle, WorkerAPI
from lilbee_workers.config import SupervisorConfig, default_config, load_config
from lilbee_workers.errors import InvalidRequest, WorkerUnavailable
from lilbee_workers.limits import check_model, check_request, check_timeout
from lilbee_workers.logs import configure_logging, role_log_path
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.handle import WorkerFactory
from lilbee_workers.parent.replicas import ReplicaSet
from lilbee_workers.transport.frames import AnyFrame, Request
from lilbee_workers.types import RoleStatus

log = structlog.get_logger("lilbee_workers.supervisor")

RESTART_ONLY = (
    "socket",
    "socket_mode",
    "socket_group",
    "log_dir",
    "log_format",
    "log_level",
    "max_frame_bytes",
    "log_max_bytes",
)
"""Settings a reload cannot apply (they shape the socket, the logs, or each worker's
pipes when it starts): they keep their running values until the daemon restarts."""


@dataclass
class ReloadResult:
    """What a reload did: the roles now on their new settings; the roles it could not
    move, and why (each rolled back, or not); settings that need a daemon restart."""

    restarted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    needs_restart: list[str] = field(default_factory=list)


class Supervisor(WorkerAPI):
    """Runs one worker subprocess per configured role and serves calls to them.

    >>> with Supervisor("workers.toml") as sup:
    ...     vectors = sup.embed(["hello", "world"])
    ...     for chunk in sup.chat("Say hi"):
    ...         print(chunk, end="")

    ``queue_wait_s``: how long a call waits for room in a full role queue before
    ``Overloaded`` (0: answer at once).
    """

    def __init__(
        self,
        config: SupervisorConfig | str | os.PathLike[str] | None = None,
        *,
        queue_wait_s: float = 0.0,
    ) -> None:
        if config is None:
            config = default_config()
        elif not isinstance(config, SupervisorConfig):
            config = load_config(config)
        self.config = config.validate()
        if not structlog.is_configured():  # never log to stdout behind an app's back
            configure_logging(self.config.log_level, self.config.log_format)
        memory.check_machine(self.config)  # refuses what will not fit; warns of thread overload
        self.queue_wait_s = queue_wait_s
        self.log_dir = self.config.resolved_log_dir()
        self._dispatchers: dict[str, ReplicaSet] = {}
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait: bool = True) -> Supervisor:
        """Start every role's worker; with ``wait``, return once each is ready or failed."""
        if self._started:
            return self
        self._started = True
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.backend == "ray":
            from lilbee_workers.cluster import connect

            connect.hold()
        for role, role_config in self.config.roles.items():
            dispatcher = ReplicaSet(
                role,
                role_config,
                self.log_dir,
                self.config.max_frame_bytes,
                self.config.log_max_bytes,
                new_worker=self._backend(role),
            )
            self._dispatchers[role] = dispatcher
            dispatcher.start()
        if wait:
            self.wait_started()
        states = {role: replicas.state.value for role, replicas in self._dispatchers.items()}
        log.info("supervisor started", roles=states)
        return self

    def _backend(self, role: str) -> Callable[[int], WorkerFactory] | None:
        """What makes each replica's workers: local processes (None, the default) or,
        with ``backend = "ray"``, Ray actors."""
        if self.config.backend != "ray":
            return None
        from lilbee_workers.cluster.worker import ray_factory

        config = self.config
        return lambda replica: ray_factory(
            role,
            role_log_path(self.log_dir, role, replica),
            config.max_frame_bytes,
            config.log_max_bytes,
            config.ray_address,
        )

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until every role's first worker is ready or failed (or ``timeout`` s);
        return whether they all are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for dispatcher in self._dispatchers.values():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not dispatcher.wait_started(remaining):
                return False
        return True

    def close(self, timeout: float | None = None) -> None:
        """Answer queued calls, let calls in flight finish (up to ``timeout``, default
        the config's ``drain_timeout_s``), stop every worker."""
        if self._closed:
            return
        self._closed = True
        drain = self.config.drain_timeout_s if timeout is None else timeout
        for dispatcher in self._dispatchers.values():
            dispatcher.close()
        deadline = time.monotonic() + drain
        for dispatcher in self._dispatchers.values():
            dispatcher.join(max(0.0, deadline - time.monotonic()))
        if self._started and self.config.backend == "ray":
            from lilbee_workers.cluster import connect

            connect.release()
        log.info("supervisor closed")

    def __enter__(self) -> Supervisor:
        return self.start()

    # ------------------------------------------------------------------ API

    def submit(self, role: str, request: Request, timeout: float | None = None) -> Call:
        """Queue a request frame for ``role``, after the same checks as every call (for
        servers that relay frames, such as the daemon). Read its replies with
        ``wait_frame``/``next_frame``; ``cancel`` it if nobody will."""
        check_request(role, request, self.config)
        check_timeout(timeout)
        return self._dispatcher(role).submit(request, self.queue_wait_s, timeout)

    def _open(self, role: str, request: Request, timeout: float | None) -> CallHandle:
        return self.submit(role, request, timeout)

    def _final(self, role: str, request: Request, timeout: float | None) -> AnyFrame:
        # Non-streaming: on an idle role the pipe I/O runs in this thread.
        check_request(role, request, self.config)
        check_timeout(timeout)
        call = self._dispatcher(role).run_now(request, self.queue_wait_s, timeout)
        return call.next_frame(timeout)

    def _dispatcher(self, role: str) -> ReplicaSet:
        """The dispatcher of a configured role."""
        if self._closed:
            raise WorkerUnavailable("the supervisor is closed", role=role)
        if not self._started:
            self.start()
        try:
            return self._dispatchers[role]
        except KeyError:
            raise WorkerUnavailable(
                f"role {role!r} is not configured (configured: {', '.join(self._dispatchers)})",
                role=role,
            ) from None

    def healthy(self) -> bool:
        """Every role's dispatcher thread and worker health monitor is running (what
        the systemd watchdog is fed on: a dead background thread is a bug)."""
        return all(dispatcher.healthy() for dispatcher in self._dispatchers.values())

    def role_status(self, role: str) -> RoleStatus:
        """One role's status (``WorkerUnavailable`` for a role not configured)."""
        return self._dispatcher(role).status()

    def status(self) -> list[RoleStatus]:
        return [dispatcher.status() for dispatcher in self._dispatchers.values()]

    def restart(self, role: str = "all", wait: bool = True) -> list[RoleStatus]:
        roles = list(self._dispatchers) if role == "all" else [role]
        for name in roles:
            if name not in self._dispatchers:
                raise InvalidRequest(
                    f"no role {name!r} to restart (configured: {', '.join(self._dispatchers)},"
                    " or all)"
                )
        jobs = [self._dispatcher(name).restart() for name in roles]
        if wait:  # a failed restart shows in the status: the role is failed, and why
            for job in jobs:
                job.wait()
        return [self._dispatchers[name].status() for name in roles]

    def load(self, role: str, model: str) -> list[RoleStatus]:
        dispatcher = self._dispatcher(role)
        check_model(role, model, self.config)
        error = dispatcher.load(model)
        if error is not None:
            raise error
        return [dispatcher.status()]

    def unload(self, role: str) -> list[RoleStatus]:
        dispatcher = self._dispatcher(role)
        if dispatcher.config.standby:
            raise InvalidRequest(f"{role} keeps a standby worker loaded; set standby = false")
        dispatcher.unload()
        return [dispatcher.status()]

    def reload(self, config: SupervisorConfig) -> ReloadResult:
        """Apply a new config: restart (draining first) only the roles whose settings
        changed, each through its role's owner. A role whose new settings cannot start
        is rolled back to its old ones and keeps them in ``self.config``, so the same
        reload sent again tries it again. Settings only a restart applies keep their
        running values (named in ``needs_restart``). Adding or removing roles, or
        changing the backend, is refused."""
        config.validate()
        if set(config.roles) != set(self.config.roles):
            raise InvalidRequest("reload cannot add or remove roles; restart the daemon")
        if (config.backend, config.ray_address) != (self.config.backend, self.config.ray_address):
            raise InvalidRequest("reload cannot change backend or ray_address; restart the daemon")
        old = self.config
        changed = [role for role, new in config.roles.items() if new != old.roles[role]]
        memory.check_reload(old, config, changed)  # refuses what will not fit, before any stop
        jobs = {role: self._dispatchers[role].restart(config.roles[role]) for role in changed}
        failed: dict[str, str] = {}
        for role, job in jobs.items():
            outcome = job.result()
            if not outcome.ok:
                back = (
                    "rolled back to the old settings" if outcome.rolled_back else "NOT rolled back"
                )
                failed[role] = f"{outcome.reason} ({back})"
                log.error("reload of a role failed", role=role, why=failed[role])
        roles = {
            role: old.roles[role] if role in failed else new for role, new in config.roles.items()
        }
        running = {key: getattr(old, key) for key in RESTART_ONLY}
        needs_restart = [
            f"{key} {getattr(config, key)!r} (running {value!r})"
            for key, value in running.items()
            if getattr(config, key) != value
        ]
        self.config = msgspec.structs.replace(config, roles=roles, **running)
        restarted = [role for role in changed if role not in failed]
        return ReloadResult(restarted, failed, needs_restart)

    def worker_pid(self, role: str) -> int | None:
        """The pid of a role's current worker (None when it has none)."""
        worker = self._dispatcher(role).worker
        return worker.pid if worker is not None and worker.alive() else None

    @property
    def log_paths(self) -> dict[str, Path]:
        return {role: d.log_path for role, d in self._dispatchers.items()}
