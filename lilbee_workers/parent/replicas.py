"""One role served by ``replicas`` workers side by side: each replica is a whole
dispatcher (its own queue, worker, recovery and log; ``replica.Replica``), and this
class routes calls between them, through the verbs a ``Replica`` offers.

Routing is least-loaded (queued + running), preferring replicas that serve the model
the call names, and never a replica being restarted while another serves. A call lost
with its replica's worker is handed at once to another live replica (its one retry),
instead of waiting for the lost worker's restart. ``restart`` and reload roll through
the replicas one at a time, so the role keeps serving throughout; they, resizes and
model loads are run one at a time by the role's ``RoleOwner``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerError, WorkerUnavailable
from lilbee_workers.logs import MAX_LOG_BYTES
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.dispatcher import RoleDispatcher
from lilbee_workers.parent.handle import WorkerFactory, WorkerHandle
from lilbee_workers.parent.quarantine import Quarantine
from lilbee_workers.parent.replica import Replica
from lilbee_workers.parent.replica_status import merge, role_state
from lilbee_workers.parent.role_owner import Job, Outcome, RoleOwner
from lilbee_workers.transport.frames import Request
from lilbee_workers.types import RoleState, RoleStatus

log = structlog.get_logger("lilbee_workers.replicas")

_MAX_REPLICAS = 64


class ReplicaSet:
    """A role's replicas, and the routing of calls between them."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        log_dir: Path,
        max_frame_bytes: int,
        log_max_bytes: int = MAX_LOG_BYTES,
        new_worker: Callable[[int], WorkerFactory] | None = None,
    ) -> None:
        """``new_worker(replica)`` makes each replica's workers (default: real processes)."""
        self.role = role
        self._log_dir = log_dir
        self._max_frame_bytes = max_frame_bytes
        self._log_max_bytes = log_max_bytes
        self._new_worker = new_worker
        self._lock = threading.Lock()  # guards _replicas, _retired, _restarting, _closed
        self._restarting: set[Replica] = set()
        self._retired: list[Replica] = []  # closed by a reload; joined at the end
        self._closed = False
        self._turn = itertools.count()
        self.quarantine = Quarantine(role)  # one for the role: a poison is poison on any replica
        self._owner = RoleOwner(role)  # restarts, reloads, resizes, loads: one at a time
        self._replicas = [self._make(i, config) for i in range(config.replicas)]

    def _make(self, replica: int, config: RoleConfig) -> Replica:
        factory = self._new_worker(replica) if self._new_worker is not None else None
        return Replica(
            self.role,
            config,
            self._log_dir,
            self._max_frame_bytes,
            self._log_max_bytes,
            new_worker=factory,
            replica=replica,
            hand_over=self._hand_over,
            quarantine=self.quarantine,
        )

    @property
    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas)

    @property
    def config(self) -> RoleConfig:
        return self.replicas[0].config

    @property
    def log_path(self) -> Path:
        return self.replicas[0].log_path

    @property
    def worker(self) -> WorkerHandle | None:
        """The first replica's worker (one of several when ``replicas`` > 1)."""
        return self.replicas[0].worker

    @property
    def state(self) -> RoleState:
        return role_state([replica.state for replica in self.replicas])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until every replica's first worker is ready or failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for replica in self.replicas:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not replica.started.wait(remaining):
                return False
        return True

    def close(self) -> None:
        with self._lock:  # a reload adding replicas now adds none
            self._closed = True
            replicas = [*self._replicas, *self._retired]
        self._owner.close()
        for replica in replicas:
            replica.close()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            replicas = [*self._replicas, *self._retired]
        joined = [r.join(max(0.0, deadline - time.monotonic())) for r in replicas]
        return all(joined) and self._owner.join(max(0.0, deadline - time.monotonic()))

    def healthy(self) -> bool:
        return all(replica.healthy() for replica in self.replicas)

    # ------------------------------------------------------------------ calls

    def submit(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        return self._admit(request, lambda replica: replica.submit(request, block_s, timeout))

    def run_now(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        return self._admit(request, lambda replica: replica.run_now(request, block_s, timeout))

    def _admit(self, request: Request, admit: Callable[[Replica], Call]) -> Call:
        """Give the call to the replica routing picks. One retired between the choice and
        the admission refuses it: the call goes to another (a retired replica has left
        the list, so this ends), never answered "shutting down" while a replica serves."""
        while True:
            replica = self._route(request)
            try:
                return admit(replica)
            except WorkerUnavailable:
                if not replica.retiring or self._closed:
                    raise

    def _route(self, request: Request, avoid: Replica | None = None) -> Replica:
        """The replica for a call: not refusing (failed, cooling down) nor full; serving
        before coming back (starting, unloaded, failed and cooled down); not being
        restarted; the model it names loaded; the fewest calls queued and running; in
        turn. ``avoid``: a replica the call is leaving, unless no other is left."""
        if len(self._replicas) == 1:  # one replica: nothing to choose (the hot path)
            return self._replicas[0]
        with self._lock:
            replicas, restarting = self._replicas, set(self._restarting)
        if avoid is not None and len(replicas) > 1:
            replicas = [r for r in replicas if r is not avoid]
        if len(replicas) == 1:
            return replicas[0]
        start = next(self._turn) % len(replicas)
        rotated = replicas[start:] + replicas[:start]

        def cost(replica: Replica) -> tuple[bool, bool, bool, bool, bool, int]:
            cooling, full, down, switch, load = replica.route_cost(request)
            return cooling, full, down, replica in restarting, switch, load

        return min(rotated, key=cost)

    def _hand_over(self, calls: list[Call], lost_on: RoleDispatcher) -> bool:
        """Give calls whose worker was lost to another serving replica, at the head of
        its line (their one retry), and move the calls queued behind them too. False
        when no other replica serves: the calls then wait for their replica's restart
        (a retired replica's too: it restarts its worker for them before it ends)."""
        assert isinstance(lost_on, Replica)  # every dispatcher of the set is one
        with self._lock:
            others = [r for r in self._replicas if r is not lost_on and r.state.serving]
        if not others:
            return False
        target = self._route(calls[0].request, avoid=lost_on)
        if target not in others:
            target = others[0]
        for call in reversed(calls):  # appendleft: keep their order
            if not target.take_over(call) and not self._place(call, lost_on):
                call.fail(lost_on.shutting_down_error())
        self._move_queued(lost_on)
        if not lost_on.retiring:  # a retired replica needs no fresh worker
            lost_on.recover_after(calls)  # runs once the lost call releases its role
        return True

    def _move_queued(self, source: Replica) -> None:
        """Calls waiting on ``source`` (lost, restarting or retired) go to the other
        replicas; each keeps its retry. With nowhere else to go, they stay."""
        for call in reversed(source.take_queued()):  # appendleft: keep their order
            if not self._place(call, source):
                call.fail(source.shutting_down_error())

    def _place(self, call: Call, leaving: Replica) -> bool:
        """Put ``call`` at the head of a live replica's line, ``leaving`` last. A target
        that refuses is being retired (it has left the list) or the set is closing."""
        for _ in range(_MAX_REPLICAS + 1):
            if self._route(call.request, avoid=leaving).take_over(call):
                return True
            if self._closed:
                return False
        return leaving.take_over(call)

    # ------------------------------------------------------------------ controls

    def restart(self, config: RoleConfig | None = None) -> Job:
        """Restart the replicas one at a time (each drains first), with ``config`` if
        given, adding or removing replicas to match it. Run by the role's owner after
        any lifecycle step before it; the same restart asked again while this one waits
        is this one. Wait on the job, then read its ``outcome``."""
        key = "same settings" if config is None else config
        return self._owner.run("restart", lambda: self._roll(config), key=key)

    def _roll(self, config: RoleConfig | None) -> Outcome:
        """A restart or reload: with new settings, all replicas end on them, or, if one
        cannot start with them, all are rolled back to the old ones."""
        self._prune_retired()
        if config is None:
            return self._restart_each(None)
        old = self.config
        self._shrink(config.replicas)  # before the roll: no restart for a replica leaving
        outcome = self._restart_each(config)
        if outcome.ok:
            outcome = self._grow(config)
        if outcome.ok or self._closed:
            return outcome
        log.error(
            "reload failed on a replica: rolling every replica back to the old settings",
            role=self.role,
            why=outcome.reason,
        )
        self._shrink(old.replicas)
        back = self._restart_each(old, only_if_not=old)
        if back.ok:
            back = self._grow(old)
        reason = outcome.reason + ("" if back.ok else f"; the roll back failed too: {back.reason}")
        return Outcome(ok=False, reason=reason, rolled_back=back.ok)

    def _restart_each(
        self, config: RoleConfig | None, only_if_not: RoleConfig | None = None
    ) -> Outcome:
        """Restart the replicas in turn (those not on ``only_if_not`` already); stop at
        the first that fails and say why."""
        replicas = self.replicas
        for replica in replicas:
            if only_if_not is not None and replica.config == only_if_not:
                continue
            with self._lock:
                if self._closed:
                    return Outcome(ok=False, reason=f"{self.role} is shutting down")
                self._restarting.add(replica)
            try:
                if len(replicas) > 1:
                    self._move_queued(replica)  # the others serve them meanwhile
                replica.restart(config).wait()
            finally:
                with self._lock:
                    self._restarting.discard(replica)
            if replica.state == RoleState.FAILED:
                return Outcome(ok=False, reason=_why(replica))
        return Outcome()

    def _grow(self, config: RoleConfig) -> Outcome:
        """Start replicas until there are ``config.replicas`` (none once closed)."""
        with self._lock:
            count = len(self._replicas)
        for index in range(count, config.replicas):
            replica = self._make(index, config)
            with self._lock:
                if self._closed:
                    return Outcome(ok=False, reason=f"{self.role} is shutting down")
                self._replicas.append(replica)  # close() now closes it too
            replica.start()
            replica.started.wait()
            if replica.state == RoleState.FAILED:
                return Outcome(ok=False, reason=_why(replica))
        return Outcome()

    def _shrink(self, count: int) -> None:
        """Retire replicas until ``count`` are left: each takes no new call, its queued
        calls move to the others, and it stops once its call in flight is answered (a
        call lost there is retried on another replica)."""
        while True:
            with self._lock:
                if len(self._replicas) <= count or self._closed:
                    return
                retired = self._replicas.pop()  # routing no longer sees it
                self._retired.append(retired)
            retired.retire()
            self._move_queued(retired)
            retired.stop_when_idle()

    def _prune_retired(self) -> None:
        """Forget retired replicas whose thread has ended (they are kept until then, so
        that close joins them)."""
        with self._lock:
            self._retired = [r for r in self._retired if not r.finished()]

    def load(self, model: str) -> WorkerError | None:
        """Make ``model`` the default on every replica, one at a time; if one cannot
        load it, the replicas already switched go back to the previous default."""
        outcome = self._owner.run("load", lambda: self._load_each(model)).result()
        if outcome.ok:
            return None
        return outcome.error or WorkerUnavailable(outcome.reason, role=self.role)

    def _load_each(self, model: str) -> Outcome:
        previous = self.replicas[0].default_model
        switched: list[Replica] = []
        for replica in self.replicas:
            control = replica.load(model)
            control.done.wait()
            if control.error is not None:
                for back in switched:
                    back.load(previous).done.wait()
                return Outcome(ok=False, reason=str(control.error), error=control.error)
            switched.append(replica)
        return Outcome()

    def unload(self) -> None:
        """Stop every replica's worker (freeing their memory)."""

        def unload_each() -> Outcome:
            for event in [replica.unload() for replica in self.replicas]:
                event.wait()
            return Outcome()

        self._owner.run("unload", unload_each).wait()

    # ------------------------------------------------------------------ status

    def status(self) -> RoleStatus:
        """The role as a whole; with several replicas, each one's own in ``replicas``."""
        self._prune_retired()
        replicas = self.replicas
        if len(replicas) == 1:
            return replicas[0].status()
        each = [replica.status() for replica in replicas]
        for index, status in enumerate(each):
            status.replica = index
        return merge(self.role, each, [r.stats.latency_window() for r in replicas])


def _why(replica: Replica) -> str:
    return f"replica {replica.replica}: {replica.failed_reason or replica.state.value}"
