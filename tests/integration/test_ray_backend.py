"""The Ray backend for real: role actors on a local two-node Ray cluster (on 127.0.0.2,
see tests/ray_cluster.py), loading the same GGUF models as local workers.

Answers are checked against the local backend on the same model; faults really kill
(SIGKILL) and stop (SIGSTOP) the actor's process. Skipped only where Ray is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import pid_alive, wait_for_state, wait_until
from lilbee_workers import (
    InvalidRequest,
    Supervisor,
    SupervisorConfig,
    WorkerCrashed,
    WorkerUnavailable,
    testing,
)
from lilbee_workers.transport.frames import DebugRequest

pytest.importorskip("ray")

TEXTS = [f"sentence number {i} about bees and honey and flowers" for i in range(48)]
PROMPT = "Honey is made by"
DOCS = ["honey comes from bees", "rust on an old iron gate", "bees visit flowers"]


@pytest.fixture(scope="module")
def ray_sup(
    ray_cluster: Any, make_config: Callable[..., SupervisorConfig], tiny_reranker: str
) -> Iterator[Supervisor]:
    wide = {"max_restarts": 1000}
    chat = {**wide, "parallel": 2}  # its actor batches two streams: every chat test runs so
    roles = {"embed": wide, "chat": chat, "rerank": {"model": tiny_reranker, "n_ctx": 256}}
    config = make_config(roles, backend="ray", ray_address=ray_cluster.address)
    with Supervisor(config) as sup:
        yield sup


@pytest.fixture(scope="module")
def local_answers(make_config: Callable[..., SupervisorConfig], tiny_reranker: str) -> Any:
    """The same calls on local worker processes: the reference."""
    roles = {"embed": {}, "chat": {}, "rerank": {"model": tiny_reranker, "n_ctx": 256}}
    with Supervisor(make_config(roles)) as sup:
        return {
            "embed": sup.embed(TEXTS[:8]),
            "chat": list(sup.complete(PROMPT, max_tokens=12, temperature=0.0)),
            "rerank": [(i.index, i.score) for i in sup.rerank("bees", DOCS)],
        }


def ready(sup: Supervisor) -> Supervisor:
    for role in ("embed", "chat"):
        wait_for_state(sup, role, "ready", timeout=60)
    return sup


def test_answers_equal_the_local_backend_on_the_same_model(
    ray_sup: Supervisor, local_answers: Any
) -> None:
    sup = ready(ray_sup)
    assert np.abs(sup.embed(TEXTS[:8]) - local_answers["embed"]).max() < 1e-5
    stream = sup.complete(PROMPT, max_tokens=12, temperature=0.0)
    assert list(stream) == local_answers["chat"] and stream.result is not None
    scores = [(i.index, i.score) for i in sup.rerank("bees", DOCS)]
    assert [i for i, _ in scores] == [i for i, _ in local_answers["rerank"]]
    assert np.allclose([s for _, s in scores], [s for _, s in local_answers["rerank"]], atol=1e-5)


def test_two_streams_run_side_by_side_in_one_actor(ray_sup: Supervisor) -> None:
    sup = ready(ray_sup)
    pid = sup.worker_pid("chat")
    first_chunk: dict[int, float] = {}
    ended: dict[int, float] = {}
    results: dict[int, Any] = {}

    def stream(index: int) -> None:
        chunks = sup.complete(PROMPT, max_tokens=48, temperature=0.0)
        for _ in chunks:
            first_chunk.setdefault(index, time.monotonic())
        results[index], ended[index] = chunks.result, time.monotonic()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [0, 1]
    assert all(r.completion_tokens == 48 and r.finish_reason == "length" for r in results.values())
    assert max(first_chunk.values()) < min(ended.values())  # both ran at once
    status = sup.role_status("chat")
    assert status.slots == 2 and status.pid == pid


def test_status_shows_each_actor_node_and_pid(ray_sup: Supervisor, ray_cluster: Any) -> None:
    sup = ready(ray_sup)
    for status in sup.status():
        assert status.state == "ready" and status.pid and pid_alive(status.pid)
        assert len(status.node) == 56 and status.node != ray_cluster.far_node  # the head
        assert "ray::" in _cmdline(status.pid)  # a Ray worker process, not one of ours


def test_actor_killed_mid_embed_is_retried_once_with_the_right_answer(
    ray_sup: Supervisor,
) -> None:
    sup = ready(ray_sup)
    reference = sup.embed(TEXTS)
    before = sup.role_status("embed")
    old_pid = before.pid
    assert old_pid is not None

    def kill_mid_call() -> None:
        wait_until(lambda: sup.role_status("embed").in_flight == 1, what="embed in flight")
        time.sleep(0.1)
        os.kill(old_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_call, daemon=True)
    killer.start()
    vectors = sup.embed(TEXTS)
    killer.join()
    assert np.abs(vectors - reference).max() < 1e-4
    after = sup.role_status("embed")
    assert after.retried_ok == before.retried_ok + 1  # lost under the call, answered again
    assert after.restarts == before.restarts + 1 and after.generation > before.generation
    assert after.pid != old_pid and not pid_alive(old_pid)


def test_actor_killed_mid_stream_is_a_crash_with_the_chunk_count_never_spliced(
    ray_sup: Supervisor,
) -> None:
    sup = ready(ray_sup)
    stream = sup.chat("Tell a long story about a bee.", max_tokens=400, temperature=0.0)
    seen = [next(stream), next(stream)]
    pid = sup.worker_pid("chat")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match=r"mid-stream after \d+ chunk\(s\)") as caught:
        for chunk in stream:
            seen.append(chunk)
    assert "chat actor pid" in caught.value.message
    wait_for_state(sup, "chat", "ready", timeout=60)
    assert sup.worker_pid("chat") != pid


def test_stopped_actor_misses_its_pings_and_is_replaced(ray_sup: Supervisor) -> None:
    sup = ready(ray_sup)
    reference = sup.embed(TEXTS[:4])
    old_pid = sup.worker_pid("embed")
    assert old_pid is not None
    before = sup.role_status("embed").restarts
    os.kill(old_pid, signal.SIGSTOP)
    try:
        vectors = sup.embed(TEXTS[:4])  # waits out the missed pings, then a new actor
        assert np.abs(vectors - reference).max() < 1e-4
        status = sup.role_status("embed")
        assert "hung: no heartbeat reply within 1s" in status.last_exit
        assert status.restarts == before + 1 and status.pid != old_pid
        wait_until(lambda: not pid_alive(old_pid), timeout=30, what="stopped actor killed")
    finally:
        if pid_alive(old_pid):
            os.kill(old_pid, signal.SIGKILL)


def test_closing_a_stream_cancels_the_generation_in_the_actor(ray_sup: Supervisor) -> None:
    sup = ready(ray_sup)
    pid = sup.worker_pid("chat")
    stream = sup.chat("Write a very long essay about bees.", max_tokens=600, temperature=0.7)
    call: Any = stream._call
    assert next(stream) and next(stream)
    stream.close()
    wait_until(lambda: call.finished, timeout=10, what="the actor to stop after the cancel")
    started = time.monotonic()
    assert sup.chat("hi", max_tokens=2).collect().completion_tokens > 0
    assert time.monotonic() - started < 10  # not stuck behind 600 tokens
    assert sup.worker_pid("chat") == pid  # cancelled, not killed


def test_a_role_pinned_by_a_custom_resource_runs_on_the_second_node(
    ray_cluster: Any, make_config: Callable[..., SupervisorConfig], local_answers: Any
) -> None:
    from ray_cluster import FAR_RESOURCE

    config = make_config(
        {"embed": {"resources": {FAR_RESOURCE: 1}, "num_cpus": 1}},
        backend="ray",
        ray_address=ray_cluster.address,
    )
    with Supervisor(config) as sup:
        status = sup.role_status("embed")
        assert status.state == "ready" and status.node == ray_cluster.far_node
        assert np.abs(sup.embed(TEXTS[:8]) - local_answers["embed"]).max() < 1e-5
        assert sup.role_status("embed").served == 1


def test_handler_errors_keep_their_type_and_the_actor(ray_sup: Supervisor) -> None:
    sup = ready(ray_sup)
    pid, restarts = sup.worker_pid("embed"), sup.role_status("embed").restarts
    with pytest.raises(InvalidRequest, match="tokens"):
        sup.embed(["bee " * 3000])  # longer than the context
    with pytest.raises(InvalidRequest):
        sup.chat("hi", max_tokens=0).collect()
    assert sup.worker_pid("embed") == pid and sup.role_status("embed").restarts == restarts
    assert sup.embed(["still serving"]).shape == (1, 640)


def test_replicas_are_placed_by_ray_and_one_lost_is_covered_by_the_other(
    ray_cluster: Any, make_config: Callable[..., SupervisorConfig], local_answers: Any
) -> None:
    # 6 CPUs each: the head (12) and the far node (6) hold one replica each.
    roles = {"embed": {"replicas": 2, "num_cpus": 6, "max_restarts": 10}}
    config = make_config(roles, backend="ray", ray_address=ray_cluster.address)
    with Supervisor(config) as sup:
        status = sup.role_status("embed")
        nodes = {replica.node for replica in status.replicas}
        assert status.state == "ready" and len(nodes) == 2 and ray_cluster.far_node in nodes
        victim = status.replicas[0].pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        assert np.abs(sup.embed(TEXTS[:8]) - local_answers["embed"]).max() < 1e-5
        wait_until(lambda: sup.role_status("embed").state == "ready", timeout=60, what="back")
        after = sup.role_status("embed")
        assert victim not in {replica.pid for replica in after.replicas}


def test_joining_ray_keeps_the_programs_sigterm_handler_and_close_leaves_the_cluster(
    ray_cluster: Any, model_path: str, tmp_path: Any
) -> None:
    # A fresh process: ray.init from the main thread would put sys.exit on SIGTERM.
    script = textwrap.dedent(f"""
        import signal, ray
        from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig
        from lilbee_workers.cluster import connect
        def ours(signum, frame): pass
        signal.signal(signal.SIGTERM, ours)
        config = SupervisorConfig(roles={{"embed": RoleConfig(model={model_path!r})}},
                                  backend="ray", ray_address={ray_cluster.address!r},
                                  log_dir={str(tmp_path)!r})
        connect.ensure_connected(config.ray_address)  # asked from the main thread
        assert signal.getsignal(signal.SIGTERM) is ours
        with Supervisor(config) as sup:
            assert sup.embed(["x"]).shape == (1, 640)
            assert signal.getsignal(signal.SIGTERM) is ours
        assert not ray.is_initialized()  # the last supervisor left the cluster
        print("ok")
    """)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_a_model_missing_on_the_node_fails_the_role_with_the_actors_reason(
    ray_cluster: Any, make_config: Callable[..., SupervisorConfig]
) -> None:
    roles = {"embed": {"model": "/nonexistent/on-the-node.gguf", "max_restarts": 0}}
    config = make_config(roles, backend="ray", ray_address=ray_cluster.address)
    with Supervisor(config) as sup:
        status = sup.role_status("embed")
        assert status.state == "failed"
        assert "model file not found: /nonexistent/on-the-node.gguf" in status.last_exit
        with pytest.raises(WorkerUnavailable, match="model file not found"):
            sup.embed(["x"])


def test_an_actor_given_up_after_a_failed_ray_call_is_killed_not_orphaned(
    ray_sup: Supervisor,
) -> None:
    # What the relays do when a Ray call fails without a confirmed death (the actor
    # "unavailable", or a method raising): give the handle up. The actor must go too.
    sup = ready(ray_sup)
    [replica] = sup._dispatcher("embed").replicas
    worker: Any = replica.worker
    old_pid = worker.pid
    worker._end("ActorUnavailableError: the actor is temporarily unavailable")
    wait_until(lambda: not pid_alive(old_pid), timeout=30, what="the given-up actor killed")
    assert sup.embed(["after"]).shape == (1, 640) and sup.worker_pid("embed") != old_pid


def test_an_unplaceable_role_fails_at_once_and_logs_rotate_while_an_actor_runs(
    ray_cluster: Any, make_config: Callable[..., SupervisorConfig], tiny_reranker: str
) -> None:
    roles = {
        "embed": {},
        "rerank": {"model": tiny_reranker, "n_ctx": 256, "resources": {"no_such_node": 1}},
    }
    config = make_config(roles, backend="ray", ray_address=ray_cluster.address, log_max_bytes=8192)
    began = time.monotonic()
    with Supervisor(config) as sup:
        rerank = sup.role_status("rerank")
        assert rerank.state == "failed" and time.monotonic() - began < 30  # not start_timeout
        assert "no live node of the Ray cluster has" in rerank.last_exit
        assert "no_such_node=1" in rerank.last_exit
        log_path = Path(sup.role_status("embed").log_path)
        for _ in range(3):  # forwarded log records land in the role's log, rotated
            testing.debug(sup, "embed", DebugRequest(id=0, action="log", count=300))
            sup.embed(["between"])  # the next ping brings the records over
            time.sleep(0.5)
        assert log_path.with_suffix(".log.1").exists()
        assert log_path.stat().st_size < 8192 + 64 * 1024


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().replace(b"\0", b" ").decode()
