"""The daemon: a Supervisor behind a Unix socket, with signals and systemd notify.

The main loop only feeds the watchdog, reports status and reacts to signals (handlers
just set flags); the socket is served by ``server``, set up by ``socket_setup``, and a
reload runs in a thread of its own. No background thread (accept loop, connections,
reload) dies on an error: it logs it, counts it, and keeps serving.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import msgspec
import structlog

from lilbee_workers.config import SupervisorConfig, load_config
from lilbee_workers.errors import ConfigError, InvalidRequest
from lilbee_workers.service.server import SocketServer
from lilbee_workers.service.socket_setup import DaemonSetupError, bind_socket, socket_group_id
from lilbee_workers.service.systemd import Notifier, watchdog_interval
from lilbee_workers.supervisor import Supervisor

if TYPE_CHECKING:
    from lilbee_workers.cli.progress import LoadView
    from lilbee_workers.http.serve import HttpServer

__all__ = ["Daemon", "DaemonSetupError"]

log = structlog.get_logger("lilbee_workers.service.daemon")


class Daemon:
    """``Daemon(config, config_path=...).run()`` serves until SIGTERM/SIGINT; returns
    the exit code."""

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        config_path: Path | None = None,
        socket_path: Path | None = None,
        progress: LoadView | None = None,
        http_listen: str | None = None,
    ) -> None:
        """``progress``: where to show the roles' first loads (``serve`` on a terminal).
        ``http_listen``: the ``--http`` flag, which wins over the file's ``http_listen``
        at start and on every reload (so a reload compares the file with what serves)."""
        if http_listen is not None:
            config = msgspec.structs.replace(config, http_listen=http_listen).validate()
        self.http_listen_flag = http_listen
        self.config = config
        self.progress = progress
        self.config_path = config_path
        self.socket_path = socket_path or config.resolved_socket()
        self.socket_gid = socket_group_id(config.socket_group)
        self.notifier = Notifier()
        self.supervisor = Supervisor(config)
        self.thread_errors: Counter[str] = Counter()
        """Unexpected errors caught per background thread kind (accept, connection, reload)."""
        self.server: SocketServer | None = None
        self.http: HttpServer | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._errors_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._reloading = False
        self._reload_again = False
        self._last_status = ""

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        self._install_signals()
        listener = bind_socket(self.socket_path, self.config, self.socket_gid)
        self.server = SocketServer(
            listener, self.config, self.supervisor, self._stop, self._count_error
        )
        try:  # a port in use or a missing extra fails the start before any model loads
            self.http = bind_http(self.config, self.supervisor) if self.config.http_listen else None
        except BaseException:
            listener.close()
            self.socket_path.unlink(missing_ok=True)
            raise
        # The socket answers while the models load: `status` shows how far each has come
        # (calls wait in their role's queue until it is ready).
        self.supervisor.start(wait=False)
        self.server.start()
        if self.http is not None:
            self.http.start()
        self._await_roles()
        status = self._status_line()
        self.notifier.ready(status)
        self._last_status = status
        log.info("daemon ready", socket=str(self.socket_path), roles=status)
        interval = watchdog_interval()
        try:
            while not self._stop.is_set():
                self._wake.wait(interval if interval is not None else 1.0)
                self._wake.clear()
                if self._reload.is_set():
                    self._reload.clear()
                    self._start_reload()
                if self._stop.is_set():
                    break
                if interval is not None and self._healthy():
                    self.notifier.watchdog()
                status = self._status_line()
                if status != self._last_status:
                    self.notifier.status(status)
                    self._last_status = status
        finally:
            self._shut_down()
        return 0

    def _await_roles(self) -> None:
        """Until every role's first worker is ready or failed, or a stop signal came."""

        def over(timeout: float) -> bool:
            return self.supervisor.wait_started(timeout) or self._stop.is_set()

        if self.progress is not None:
            from lilbee_workers.cli.progress import watch_loads

            watch_loads(self.supervisor.status, over, self.progress)
        while not over(1.0):
            pass

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()
            self._wake.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _healthy(self) -> bool:
        """The accept loop, every dispatcher and every health monitor alive (a dead one
        means a bug: let systemd's watchdog restart us)."""
        server = self.server
        http_ok = self.http is None or self.http.alive()
        return server is not None and server.alive() and http_ok and self.supervisor.healthy()

    def _status_line(self) -> str:
        return ", ".join(f"{s.role}={s.state}" for s in self.supervisor.status())

    def _count_error(self, thread_kind: str) -> int:
        with self._errors_lock:
            self.thread_errors[thread_kind] += 1
            return self.thread_errors[thread_kind]

    # ------------------------------------------------------------------ reload

    def _start_reload(self) -> None:
        """Reload in a thread of its own, so the main loop keeps feeding the watchdog and
        answering SIGTERM. SIGHUPs during a reload coalesce into one more reload after
        it (which reads the file as it is then)."""
        with self._reload_lock:
            if self._reloading:
                self._reload_again = True
                log.info("SIGHUP during a reload: one more reload follows this one")
                return
            self._reloading = True
        threading.Thread(target=self._reload_thread, name="reload", daemon=True).start()

    def _reload_thread(self) -> None:
        while True:
            try:
                self._reload_config()
            except Exception as exc:
                count = self._count_error("reload")
                log.exception(
                    "reload failed unexpectedly; the old config keeps serving",
                    error=repr(exc),
                    errors=count,
                )
            with self._reload_lock:
                if not self._reload_again or self._stop.is_set():
                    self._reloading = False
                    self._reload_again = False
                    return
                self._reload_again = False

    def _reload_config(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP ignored: the daemon was started without a config file")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            if self.http_listen_flag is not None:  # the flag still wins over the file
                new = msgspec.structs.replace(new, http_listen=self.http_listen_flag)
            apply_http = self.http.reload(new) if self.http is not None else None
            result = self.supervisor.reload(new)
        except (ConfigError, InvalidRequest) as exc:
            log.error("reload rejected; the old config keeps serving", error=str(exc))
            if not self._stop.is_set():
                self.notifier.ready(f"reload rejected: {exc}; {self._status_line()}")
            return
        if apply_http is not None:
            needs_restart = apply_http()
        elif new.http_listen:
            needs_restart = [f"http_listen {new.http_listen} (HTTP is off)"]
        else:
            needs_restart = []
        needs_restart = result.needs_restart + needs_restart
        self.config = self.supervisor.config  # what runs: the next reload compares with it
        if self.server is not None:
            self.server.config = self.config  # max_connections, frame_timeout_s
        if needs_restart:
            log.warning("reload: these settings need a daemon restart", settings=needs_restart)
        failed = [f"{role} {why}" for role, why in result.failed.items()]
        if failed:
            log.error("reload partly applied: these roles kept their old settings", failed=failed)
        log.info(
            "config reloaded" if not failed else "config reloaded in part",
            restarted=result.restarted,
            failed=sorted(result.failed),
            needs_restart=needs_restart,
        )
        if not self._stop.is_set():
            pending = f"needs restart: {', '.join(needs_restart)}; " if needs_restart else ""
            pending = (f"reload failed: {'; '.join(failed)}; " if failed else "") + pending
            self.notifier.ready(pending + self._status_line())

    # ------------------------------------------------------------------ shutdown

    def _shut_down(self) -> None:
        self.notifier.stopping()
        log.info("daemon stopping: draining calls in flight")
        deadline = time.monotonic() + self.config.drain_timeout_s
        if self.http is not None:
            self.http.stop(deadline, self.config.drain_timeout_s)
        if self.server is not None:
            self.server.drain(deadline)
        self.supervisor.close(timeout=max(1.0, deadline - time.monotonic()))
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        self.notifier.close()
        log.info("daemon stopped")


def bind_http(config: SupervisorConfig, supervisor: Supervisor) -> HttpServer:
    """The HTTP face, bound; ``ConfigError`` when the ``http`` extra is not installed."""
    try:
        from lilbee_workers.http.serve import HttpServer
    except ImportError as exc:
        raise ConfigError(
            f"http_listen needs the http extra: pip install 'lilbee-workers[http]' ({exc})"
        ) from None
    server = HttpServer(config, supervisor)
    server.bind()
    return server
