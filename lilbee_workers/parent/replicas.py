"""One role served by ``replicas`` workers side by side: each replica is a whole
``RoleDispatcher`` (its own queue, worker, recovery and log), and this class routes
calls between them.

Routing is least-loaded (queued + running), preferring replicas that serve the model
the call names, and never a replica being restarted while another serves. A call lost
with its replica's worker is handed at once to another live replica (its one retry),
instead of waiting for the lost worker's restart. ``restart`` and reload roll through
the replicas one at a time, so the role keeps serving throughout.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerError
from lilbee_workers.logs import MAX_LOG_BYTES
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.dispatcher import RoleDispatcher
from lilbee_workers.parent.handle import WorkerFactory, WorkerHandle
from lilbee_workers.parent.quarantine import Quarantine
from lilbee_workers.parent.queue import Close, Recover
from lilbee_workers.parent.stats import percentile
from lilbee_workers.transport.frames import Request
from lilbee_workers.types import RoleState, RoleStatus

log = structlog.get_logger("lilbee_workers.replicas")

_NOT_SERVING_ORDER = (
    RoleState.RESTARTING,
    RoleState.STARTING,
    RoleState.DRAINING,
    RoleState.CRASHED,
    RoleState.UNLOADED,
    RoleState.FAILED,
    RoleState.STOPPED,
)
"""Which state a role with no serving replica shows: the most hopeful first."""


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
        self._restarting: set[RoleDispatcher] = set()
        self._retired: list[RoleDispatcher] = []  # closed by a reload; joined at the end
        self._closed = False
        self._turn = itertools.count()
        self.quarantine = Quarantine(role)  # one for the role: a poison is poison on any replica
        self._replicas = [self._make(i, config) for i in range(config.replicas)]

    def _make(self, replica: int, config: RoleConfig) -> RoleDispatcher:
        factory = self._new_worker(replica) if self._new_worker is not None else None
        return RoleDispatcher(
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
    def replicas(self) -> list[RoleDispatcher]:
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
        return _role_state([replica.state for replica in self.replicas])

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
        for replica in replicas:
            replica.close()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            replicas = [*self._replicas, *self._retired]
        return all([r.join(max(0.0, deadline - time.monotonic())) for r in replicas])

    def healthy(self) -> bool:
        return all(replica.healthy() for replica in self.replicas)

    # ------------------------------------------------------------------ calls

    def submit(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        return self._route(request).submit(request, block_s, timeout)

    def run_now(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        return self._route(request).run_now(request, block_s, timeout)

    def _route(self, request: Request, avoid: RoleDispatcher | None = None) -> RoleDispatcher:
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

        def cost(replica: RoleDispatcher) -> tuple[bool, bool, bool, bool, bool, int]:
            queued, running = replica.queue.counts()
            state, life = replica.state, replica.life
            cooling = state == RoleState.FAILED and life.policy.cooling_down()
            switch = life.wanted(request) != life.model_name
            return (cooling, queued >= replica.queue.size, not state.serving,
                    replica in restarting, switch, queued + running)  # fmt: skip

        return min(rotated, key=cost)

    def _hand_over(self, calls: list[Call], lost_on: RoleDispatcher) -> bool:
        """Give calls whose worker was lost to another serving replica, at the head of
        its line (their one retry), and move the calls queued behind them too. False
        when no other replica serves: the calls then wait for their replica's restart."""
        with self._lock:
            others = [r for r in self._replicas if r is not lost_on and r.state.serving]
        if not others:
            return False
        target = self._route(calls[0].request, avoid=lost_on)
        if target not in others:
            target = others[0]
        for call in reversed(calls):  # appendleft: keep their order
            if not target.queue.take_over(call):
                call.fail(target.shutting_down_error())
        self._move_queued(lost_on)
        lost_on.queue.post(Recover(calls))  # runs once the lost call releases its role
        return True

    def _move_queued(self, source: RoleDispatcher) -> None:
        """Calls waiting on ``source`` (lost, restarting or retired) go to the other
        replicas; each keeps its retry. With nowhere else to go, they stay."""
        for call in source.queue.take_calls():
            target = self._route(call.request, avoid=source)
            if not target.queue.take_over(call) and not source.queue.take_over(call):
                call.fail(source.shutting_down_error())

    # ------------------------------------------------------------------ controls

    def restart(self, config: RoleConfig | None = None) -> threading.Event:
        """Restart the replicas one at a time (each drains first), with ``config`` if
        given, adding or removing replicas to match it; the event is set when done."""
        done = threading.Event()
        replicas = self.replicas
        if len(replicas) == 1 and (config is None or config.replicas == 1):
            return replicas[0].restart(config)
        thread = threading.Thread(
            target=self._roll, args=(config, done), name=f"restart-{self.role}", daemon=True
        )
        thread.start()
        return done

    def _roll(self, config: RoleConfig | None, done: threading.Event) -> None:
        try:
            for replica in self.replicas:
                old = replica.config
                with self._lock:
                    if self._closed:
                        return
                    self._restarting.add(replica)
                try:
                    self._move_queued(replica)  # the others serve them meanwhile
                    replica.restart(config).wait()
                finally:
                    with self._lock:
                        self._restarting.discard(replica)
                if config is not None and replica.state == RoleState.FAILED:
                    why = replica.life.failed_reason
                    log.error(
                        "rolling restart stopped: a replica failed with the new "
                        "settings; it is back on the old",
                        role=self.role,
                        why=why,
                    )
                    replica.restart(old).wait()
                    return
            if config is not None:
                self._resize(config)
        except Exception:  # nothing dies quietly: the role keeps the replicas it has
            log.exception("rolling restart failed", role=self.role)
        finally:
            done.set()

    def _resize(self, config: RoleConfig) -> None:
        """Start or retire replicas to match ``config.replicas`` (none once closed)."""
        with self._lock:
            count = len(self._replicas)
        for index in range(count, config.replicas):
            replica = self._make(index, config)
            with self._lock:
                if self._closed:
                    return
                self._replicas.append(replica)  # close() now closes it too
            replica.start()
            replica.started.wait()
        while True:
            with self._lock:
                if len(self._replicas) <= config.replicas or self._closed:
                    return
                retired = self._replicas.pop()
                self._retired.append(retired)
            retired.queue.close()
            self._move_queued(retired)
            retired.queue.post(Close())

    def load(self, model: str) -> WorkerError | None:
        """Make ``model`` the default on every replica, one at a time; if one cannot
        load it, the replicas already switched go back to the previous default."""
        previous = self.replicas[0].life.default_model
        switched: list[RoleDispatcher] = []
        for replica in self.replicas:
            control = replica.load(model)
            control.done.wait()
            if control.error is not None:
                for back in switched:
                    back.load(previous).done.wait()
                return control.error
            switched.append(replica)
        return None

    def unload(self) -> None:
        """Stop every replica's worker (freeing their memory)."""
        for event in [replica.unload() for replica in self.replicas]:
            event.wait()

    # ------------------------------------------------------------------ status

    def status(self) -> RoleStatus:
        """The role as a whole; with several replicas, each one's own in ``replicas``."""
        replicas = self.replicas
        if len(replicas) == 1:
            return replicas[0].status()
        each = [replica.status() for replica in replicas]
        for index, status in enumerate(each):
            status.replica = index
        return merge(self.role, each, [r.stats.latency_window() for r in replicas])


def _role_state(states: list[RoleState]) -> RoleState:
    """All serving: ready (busy if any is); some: degraded; none: the most hopeful."""
    serving = [state for state in states if state.serving]
    if len(serving) == len(states):
        return RoleState.BUSY if RoleState.BUSY in serving else RoleState.READY
    if serving:
        return RoleState.DEGRADED
    return next((s for s in _NOT_SERVING_ORDER if s in states), states[0])


_SUMMED = (
    "restarts",
    "generation",
    "in_flight",
    "queued",
    "served",
    "errors",
    "cancelled",
    "retried",
    "retried_ok",
    "rss_bytes",
    "tokens_generated",
)


def merge(role: str, each: list[RoleStatus], latencies: list[list[float]]) -> RoleStatus:
    """One role's status from its replicas': counters added up, latency percentiles
    over all their calls, the state of the whole (``degraded`` while some are down)."""
    states = [RoleState(status.state) for status in each]
    lead = next((s for s in each if RoleState(s.state).serving), each[0])
    merged = RoleStatus(
        role=role,
        state=_role_state(states).value,
        pid=lead.pid,
        node=lead.node,
        model=lead.model,
        model_name=lead.model_name,
        models=lead.models,
        model_bytes=lead.model_bytes,
        idle_s=min(status.idle_s for status in each),
        uptime_s=lead.uptime_s,
        last_exit=next((s.last_exit for s in each if s.last_exit), ""),
        log_path=lead.log_path,
        chat_template=lead.chat_template,
        latency_sum_ms=round(sum(status.latency_sum_ms for status in each), 3),
        replicas=each,
    )
    for name in _SUMMED:
        setattr(merged, name, sum(getattr(status, name) for status in each))
    pooled = sorted(ms for window in latencies for ms in window)
    merged.p50_ms, merged.p99_ms = percentile(pooled, 0.50), percentile(pooled, 0.99)
    buckets = zip(*(status.latency_buckets for status in each), strict=True)
    merged.latency_buckets = [sum(counts) for counts in buckets]
    merged.quarantined = lead.quarantined  # the role's one quarantine, not one per replica
    merged.batch_sizes = dict(sum((Counter(s.batch_sizes) for s in each), Counter()))
    merged.batch_tokens = dict(sum((Counter(s.batch_tokens) for s in each), Counter()))
    loading = [fraction for s in each if (fraction := s.loading) is not None]
    merged.load_progress = min(loading) if loading else lead.load_progress
    return merged
