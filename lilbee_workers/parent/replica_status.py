"""A replicated role's status as a whole, from its replicas' own: counters added up
(slots and KV caches too: each replica has its own), every running stream's rate,
latency percentiles over all their calls, the state of the whole."""

from __future__ import annotations

from collections import Counter

from lilbee_workers.parent.stats import percentile
from lilbee_workers.types import RoleState, RoleStatus

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


def role_state(states: list[RoleState]) -> RoleState:
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
    "slots",
    "kv_cache_bytes",
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
        state=role_state(states).value,
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
    merged.stream_tokens_per_s = [rate for s in each for rate in s.stream_tokens_per_s]
    merged.quarantined = lead.quarantined  # the role's one quarantine, not one per replica
    merged.batch_sizes = dict(sum((Counter(s.batch_sizes) for s in each), Counter()))
    merged.batch_tokens = dict(sum((Counter(s.batch_tokens) for s in each), Counter()))
    loading = [fraction for s in each if (fraction := s.loading) is not None]
    merged.load_progress = min(loading) if loading else lead.load_progress
    return merged
