"""``/metrics``: the figures ``status`` shows, in Prometheus text format.

A collector reads ``status()`` at scrape time, so nothing is counted twice and the
numbers always agree with ``lilbee-workers status``. Labels: ``role`` and ``model``
(the model file's name without ``.gguf``).
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
_LABELS = ["role", "model"]


def model_name(model: str) -> str:
    """The name a model goes by over HTTP: its file name without ``.gguf``."""
    name = Path(model).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


class StatusCollector(Collector):
    """Prometheus metric families from one ``status()`` snapshot."""

    def __init__(self, status: Callable[[], list[RoleStatus]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        roles = self._status()
        requests = CounterMetricFamily(
            "lilbee_requests", "Calls answered, by outcome.", labels=[*_LABELS, "outcome"]
        )
        latency = HistogramMetricFamily(
            "lilbee_request_latency_seconds", "Call latency in the supervisor.", labels=_LABELS
        )
        tokens = CounterMetricFamily(
            "lilbee_tokens_generated", "Completion tokens generated.", labels=_LABELS
        )
        restarts = CounterMetricFamily(
            "lilbee_worker_restarts", "Workers replaced after a crash or hang.", labels=_LABELS
        )
        retries = CounterMetricFamily(
            "lilbee_retries", "Calls re-run on a fresh worker.", labels=_LABELS
        )
        queued = GaugeMetricFamily("lilbee_queue_depth", "Calls waiting.", labels=_LABELS)
        in_flight = GaugeMetricFamily("lilbee_in_flight", "Calls running.", labels=_LABELS)
        rss = GaugeMetricFamily(
            "lilbee_worker_rss_bytes", "Resident memory of the worker.", labels=_LABELS
        )
        state = GaugeMetricFamily(
            "lilbee_role_state", "1 for the role's current state.", labels=[*_LABELS, "state"]
        )
        for status in roles:
            labels = [status.role, status.model_name or model_name(status.model)]
            requests.add_metric([*labels, "ok"], status.served)
            requests.add_metric([*labels, "error"], status.errors)
            latency.add_metric(
                labels, _cumulative(status.latency_buckets), status.latency_sum_ms / 1000.0
            )
            tokens.add_metric(labels, status.tokens_generated)
            restarts.add_metric(labels, status.restarts)
            retries.add_metric(labels, status.retried)
            queued.add_metric(labels, status.queued)
            in_flight.add_metric(labels, status.in_flight)
            rss.add_metric(labels, status.rss_bytes)
            for name in RoleState:
                state.add_metric([*labels, name.value], 1.0 if status.state == name.value else 0.0)
        yield from (requests, latency, tokens, restarts, retries, queued, in_flight, rss, state)


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
