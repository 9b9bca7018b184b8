"""``/metrics``: the figures ``status`` shows, in Prometheus text format.

A collector reads ``status()`` at scrape time, so nothing is counted twice and the
numbers always agree with ``lilbee-workers status``. Every series is labelled by
``role`` only, so a role's history stays one series when it switches models;
``lilbee_role_model{role, model}`` (always 1) names the model it has loaded.

``lilbee_stream_tokens_per_second`` is the mean of the running streams' own rates (what
one caller sees; it falls as companions join a batched worker); the role's total
generation rate is ``rate(lilbee_tokens_generated_total[1m])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from lilbee_workers.types import LATENCY_BUCKETS_MS, RoleState, RoleStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def model_name(model: str) -> str:
    """The name a model goes by over HTTP: its file name without ``.gguf``."""
    name = Path(model).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


# (name, help, type, the figure of a status): one series per role.
_SIMPLE: list[tuple[str, str, type[CounterMetricFamily | GaugeMetricFamily], str]] = [
    ("lilbee_tokens_generated", "Completion tokens generated.", CounterMetricFamily,
     "tokens_generated"),
    ("lilbee_worker_restarts", "Workers replaced after a crash or hang.", CounterMetricFamily,
     "restarts"),
    ("lilbee_retries", "Calls re-run on a fresh worker.", CounterMetricFamily, "retried"),
    ("lilbee_quarantined", "Sends of a poison request refused without a worker.",
     CounterMetricFamily, "quarantined"),
    ("lilbee_queue_depth", "Calls waiting.", GaugeMetricFamily, "queued"),
    ("lilbee_in_flight", "Calls running.", GaugeMetricFamily, "in_flight"),
    ("lilbee_slots", "Calls the role's workers run at once (parallel x replicas).",
     GaugeMetricFamily, "slots"),
    ("lilbee_slots_busy", "Slots running a call (= lilbee_in_flight).", GaugeMetricFamily,
     "in_flight"),
    ("lilbee_kv_cache_bytes", "KV cache of the role's workers, as llama.cpp sized it.",
     GaugeMetricFamily, "kv_cache_bytes"),
    ("lilbee_worker_rss_bytes", "Resident memory of the worker.", GaugeMetricFamily,
     "rss_bytes"),
]  # fmt: skip


class StatusCollector(Collector):
    """Prometheus metric families from one ``status()`` snapshot."""

    def __init__(self, status: Callable[[], list[RoleStatus]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        roles = self._status()
        requests = CounterMetricFamily(
            "lilbee_requests", "Calls answered, by outcome.", labels=["role", "outcome"]
        )
        latency = HistogramMetricFamily(
            "lilbee_request_latency_seconds", "Call latency in the supervisor.", labels=["role"]
        )
        simple = [kind(name, text, labels=["role"]) for name, text, kind, _ in _SIMPLE]
        state = GaugeMetricFamily(
            "lilbee_role_state", "1 for the role's current state.", labels=["role", "state"]
        )
        loaded = GaugeMetricFamily(
            "lilbee_role_model", "1, labelled with the model the role has loaded.",
            labels=["role", "model"],
        )  # fmt: skip
        stream_rate = GaugeMetricFamily(
            "lilbee_stream_tokens_per_second",
            "Mean generation rate of the streams running now, tokens/s each (0: none runs).",
            labels=["role"],
        )
        for status in roles:
            role = status.role
            requests.add_metric([role, "ok"], status.served)
            requests.add_metric([role, "error"], status.errors)
            requests.add_metric([role, "cancelled"], status.cancelled)
            latency.add_metric(
                [role], _cumulative(status.latency_buckets), status.latency_sum_ms / 1000.0
            )
            for family, (_, _, _, field) in zip(simple, _SIMPLE, strict=True):
                family.add_metric([role], getattr(status, field))
            for name in RoleState:
                state.add_metric([role, name.value], 1.0 if status.state == name.value else 0.0)
            model = status.model_name or model_name(status.model)
            if model:
                loaded.add_metric([role, model], 1.0)
            rates = status.stream_tokens_per_s
            stream_rate.add_metric([role], sum(rates) / len(rates) if rates else 0.0)
        yield from (requests, latency, *simple, stream_rate, state, loaded)


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus ``le`` buckets (cumulative, seconds)."""
    bounds = [f"{bound / 1000:g}" for bound in LATENCY_BUCKETS_MS] + ["+Inf"]
    counts = counts or [0] * len(bounds)
    total = 0
    buckets = []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append((bound, float(total)))
    return buckets


def render(status: Callable[[], list[RoleStatus]]) -> bytes:
    """The text a scrape gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)
