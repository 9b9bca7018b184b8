"""Issue 19's status fields (slots, the running streams' rates, the KV cache) as the
three faces show them: merged over replicas, in the ``status`` table, in Prometheus."""

from __future__ import annotations

import io

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from lilbee_workers.cli.output import status_table
from lilbee_workers.http.metrics import render
from lilbee_workers.parent.replica_status import merge
from lilbee_workers.types import RoleStatus

MiB = 2**20


def chat(**fields: object) -> RoleStatus:
    return RoleStatus(role="chat", state="busy", pid=7, model="/m/gemma.gguf", **fields)  # type: ignore[arg-type]


def test_replicas_add_up_their_slots_and_kv_caches_and_list_every_stream() -> None:
    one = chat(replica=0, slots=4, in_flight=3, kv_cache_bytes=300 * MiB,
               stream_tokens_per_s=[20.0, 18.0, 16.0])  # fmt: skip
    two = chat(replica=1, slots=4, in_flight=1, kv_cache_bytes=300 * MiB,
               stream_tokens_per_s=[40.0])  # fmt: skip
    merged = merge("chat", [one, two], [[], []])
    assert (merged.slots, merged.in_flight) == (8, 4)
    assert merged.kv_cache_bytes == 600 * MiB
    assert sorted(merged.stream_tokens_per_s) == [16.0, 18.0, 20.0, 40.0]
    assert merged.replicas == [one, two]


def table_text(statuses: list[RoleStatus]) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=160).print(status_table(statuses))
    return out.getvalue().splitlines()


def test_a_batched_role_shows_slots_in_use_the_streams_rate_and_its_kv_cache() -> None:
    status = chat(slots=8, in_flight=3, queued=2, kv_cache_bytes=288 * MiB,
                  stream_tokens_per_s=[20.0, 10.0, 15.0])  # fmt: skip
    lines = table_text([status, RoleStatus(role="embed", state="ready", pid=8)])
    header = next(line for line in lines if line.startswith("role"))
    assert header.split()[-2:] == ["tok/s", "KV"]
    [row] = [line.split() for line in lines if line.startswith("chat")]
    assert "3/8+2" in row and row[-2:] == ["15.0", "288M"]
    [embed] = [line.split() for line in lines if line.startswith("embed")]
    assert "0+0" in embed and embed[-2:] == ["-", "-"]  # one slot: no "/1"


def test_a_table_without_a_batched_role_keeps_its_80_columns() -> None:
    status = RoleStatus(role="embed", state="ready", pid=8, in_flight=1, kv_cache_bytes=MiB,
                        stream_tokens_per_s=[30.0])  # fmt: skip
    lines = table_text([status])
    header = next(line for line in lines if line.startswith("role"))
    assert "tok/s" not in header and "KV" not in header
    assert "1+0" in next(line for line in lines if line.startswith("embed")).split()


def samples(statuses: list[RoleStatus]) -> dict[tuple[str, str], float]:
    text = render(lambda: statuses).decode()
    return {
        (s.name, s.labels.get("role", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prometheus_has_slots_busy_slots_kv_cache_and_the_streams_mean_rate() -> None:
    status = chat(slots=8, in_flight=3, kv_cache_bytes=288 * MiB,
                  stream_tokens_per_s=[20.0, 10.0, 15.0])  # fmt: skip
    idle = RoleStatus(role="embed", state="ready", kv_cache_bytes=36 * MiB)
    found = samples([status, idle])
    assert found[("lilbee_slots", "chat")] == 8 and found[("lilbee_slots_busy", "chat")] == 3
    assert found[("lilbee_kv_cache_bytes", "chat")] == 288 * MiB
    assert found[("lilbee_stream_tokens_per_second", "chat")] == 15.0
    assert found[("lilbee_slots", "embed")] == 1 and found[("lilbee_slots_busy", "embed")] == 0
    assert found[("lilbee_stream_tokens_per_second", "embed")] == 0.0
    assert found[("lilbee_kv_cache_bytes", "embed")] == 36 * MiB
