"""Right answers and no hangs (issue 9): each test checks the answer against an
independent reference (llama-cpp-python called directly in this process) or a
property a wrong answer cannot have."""

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

from conftest import wait_for_state, wait_until
from lilbee_workers import Supervisor, SupervisorConfig, WorkerTimeout, WorkerUnavailable, testing
from lilbee_workers.transport.frames import ChatMessage, DebugRequest, NoopRequest
from tiny_models import write_tiny_reranker

# With gemma 3 270M, this request's greedy text differs between a fresh and a warm
# llama-cpp-python model when the prompt prefix is reused (seen: "Hi-level..." fresh,
# "Hi命ever..." warm), so it exposes an answer that depends on history.
CHAT_MESSAGES = [ChatMessage(role="user", content="Hi")]
LONG_TEXT = " ".join(f"honey bee colony number {i} gathers nectar from flowers" for i in range(40))


@pytest.fixture(scope="module")
def direct_chat(model_path: str) -> Iterator[Any]:
    """gemma 3 270M in this process, opened as the chat worker opens it (n_ctx 1024)."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=1024, n_batch=2048, n_ubatch=512, verbose=False)
    llm.chat_format = "gemma"  # the fallback the worker reports for this template-less model
    yield llm
    llm.close()


def direct_chat_text(llm: Any, **sampling: Any) -> str:
    llm.reset()
    reply = llm.create_chat_completion(
        messages=[{"role": m.role, "content": m.content} for m in CHAT_MESSAGES], **sampling
    )
    return str(reply["choices"][0]["message"]["content"] or "")


# ----------------------------------------------------------------- item 1: no history


def test_chat_answer_does_not_depend_on_what_the_worker_served_before(
    sup: Supervisor, direct_chat: Any
) -> None:
    sampling = {"max_tokens": 24, "temperature": 0.0, "seed": 3}
    assert {s.role: s for s in sup.status()}["chat"].chat_template == "fallback:gemma"
    texts = [sup.chat(CHAT_MESSAGES, **sampling).text() for _ in range(3)]
    sup.restart("chat")
    texts.append(sup.chat(CHAT_MESSAGES, **sampling).text())
    reference = direct_chat_text(direct_chat, stream=False, top_p=0.95, **sampling)
    assert reference.strip(), "the reference produced no text"
    assert texts == [reference] * 4


# ----------------------------------------------------------------- item 3: embed reference


def test_embed_batch_spanning_several_decodes_equals_direct_llama_embed(
    make_config: Callable[..., SupervisorConfig], model_path: str
) -> None:
    from llama_cpp import Llama

    # A small context, so a modest batch (cheap on a busy machine) spans several decodes.
    texts = [f"{i}: " + " ".join(["bees make honey from nectar"] * (2 + i % 5)) for i in range(24)]
    with Supervisor(make_config({"embed": {"n_ctx": 256}})) as small:
        got = small.embed(texts)
    llm = Llama(
        model_path=model_path,
        embedding=True,
        pooling_type=1,  # mean, what the worker resolves for gemma (no pooling in its metadata)
        n_ctx=256,
        n_batch=256,
        n_ubatch=256,
        verbose=False,
    )
    try:
        tokens = sum(len(llm.tokenize(t.encode())) for t in texts)
        assert tokens > 2 * 256, "the batch must span several llama_decode calls"
        reference = np.asarray(llm.embed(texts, normalize=True), dtype=np.float32)
        alone = np.asarray(llm.embed([texts[5]], normalize=True), dtype=np.float32)
    finally:
        llm.close()
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-5
    # Not a tautology: the same text in another batch shape differs by float noise only.
    assert float(got[5] @ alone[0]) > 0.999


# ----------------------------------------------------------------- item 4: death while loading


def _our_workers(parent_pid: int) -> list[int]:
    """Worker processes started for ``parent_pid`` (its pid is the last argv item)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"lilbee_workers.child" in argv and str(parent_pid).encode() in argv[-3:]:
            found.append(int(entry))
    return found


def test_worker_dying_while_loading_is_seen_at_once_with_its_reason(
    make_config: Callable[..., SupervisorConfig], tmp_path: Path
) -> None:
    model = write_tiny_reranker(tmp_path / "aborts.gguf", duplicate_token=True)
    config = make_config(
        {"rerank": {"model": str(model), "n_ctx": 256, "max_restarts": 0, "start_timeout_s": 120}}
    )
    started = time.monotonic()
    with Supervisor(config) as sup:
        elapsed = time.monotonic() - started
        [status] = sup.status()
        assert status.state == "failed"
        assert "died while loading" in status.last_exit and "SIGABRT" in status.last_exit
        with pytest.raises(WorkerUnavailable) as caught:
            sup.rerank("q", ["d"])
        assert "GGML_ASSERT" in caught.value.log_tail
    assert elapsed < 20, f"death while loading took {elapsed:.1f}s to see (timeout 120s)"


UNGUARDED_SCRIPT = """
import sys
import numpy as np
from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig

# No `if __name__ == "__main__":` guard, on purpose.
config = SupervisorConfig(
    roles={{"embed": RoleConfig(model={model!r}, n_ctx=512, start_timeout_s=60)}},
    log_dir={log_dir!r},
)
sup = Supervisor(config)
vector = sup.embed(["bees make honey"])[0]
np.save({out!r}, vector)
print("embedded", flush=True)
if len(sys.argv) > 1:
    import time
    time.sleep(600)  # the test kills us here
sup.close()
"""


def _write_unguarded(tmp_path: Path, model_path: str) -> Path:
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(UNGUARDED_SCRIPT).format(
            model=model_path, log_dir=str(tmp_path / "logs"), out=str(tmp_path / "v.npy")
        )
    )
    return script


def test_script_without_main_guard_just_works(tmp_path: Path, model_path: str) -> None:
    from llama_cpp import Llama

    script = _write_unguarded(tmp_path, model_path)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embedded" in result.stdout
    llm = Llama(
        model_path=model_path, embedding=True, pooling_type=1, n_ctx=512, n_batch=512,
        n_ubatch=512, verbose=False,
    )  # fmt: skip
    try:
        reference = np.asarray(llm.embed(["bees make honey"], normalize=True)[0])
    finally:
        llm.close()
    assert np.abs(np.load(tmp_path / "v.npy") - reference).max() < 1e-5


def test_killed_unguarded_script_leaves_no_worker(tmp_path: Path, model_path: str) -> None:
    script = _write_unguarded(tmp_path, model_path)
    proc = subprocess.Popen(
        [sys.executable, str(script), "hold"], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "embedded"
        assert len(_our_workers(proc.pid)) == 1
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not _our_workers(proc.pid), timeout=5, what="workers die with the script")


# ----------------------------------------------------------------- item 5: status is safe


def test_status_while_the_queue_churns_never_raises(sup: Supervisor) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                sup.submit("embed", NoopRequest(id=0), 30).next_frame(30)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 3
        reads = 0
        while time.monotonic() < deadline:
            status = sup.role_status("embed")
            assert status.queued >= 0
            reads += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert reads > 100


# ----------------------------------------------------------------- item 6: threads survive


def test_worker_log_at_a_custom_level_does_not_stop_hang_detection(sup: Supervisor) -> None:
    testing.debug(sup, "chat", DebugRequest(id=0, action="log", level=25, count=3))
    worker = sup._dispatcher("chat").worker  # white box: its health monitor must live
    assert worker is not None
    time.sleep(0.5)  # the records reach the monitor
    assert worker.monitoring() and sup.healthy()
    pid = worker.pid
    os.kill(pid, signal.SIGSTOP)  # still watched: the hang must be seen and the worker replaced
    try:
        wait_until(lambda: sup.worker_pid("chat") not in (None, pid), timeout=30, what="replaced")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "hung" in sup.role_status("chat").last_exit
    wait_for_state(sup, "chat", "ready")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(24, "Too many open files"), "Too many open files"),  # EMFILE
        (RuntimeError("a bug while starting"), "a bug while starting"),  # anything else
    ],
)
def test_unexpected_error_while_starting_fails_the_role_with_the_reason(
    make_config: Callable[..., SupervisorConfig],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    reason: str,
) -> None:
    from lilbee_workers.parent import launch

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(launch.socket, "socketpair", broken)
    sup = Supervisor(make_config({"embed": {}}))
    try:
        done = threading.Thread(target=sup.start)
        done.start()
        done.join(20)
        assert not done.is_alive(), "start() hung after an unexpected error"
        [status] = sup.status()
        assert status.state == "failed" and reason in status.last_exit
        assert sup.healthy(), "the dispatcher thread died"
        with pytest.raises(WorkerUnavailable, match=reason):
            sup.embed(["x"])
        monkeypatch.undo()
        [after] = sup.restart("embed")
        assert after.state == "ready"
        assert sup.embed(["back"]).shape == (1, 640)
    finally:
        sup.close()


# ----------------------------------------------------------------- item 7: no orphans


def test_close_during_a_restart_leaves_no_process(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    others = set(_our_workers(os.getpid()))  # the shared supervisor's workers
    sup = Supervisor(make_config({"embed": {}, "chat": {}})).start()
    sup.restart("all", wait=False)
    wait_until(
        lambda: {d.state for d in sup._dispatchers.values()} & {"starting", "draining"},
        what="a restart under way",
    )
    sup.close()
    wait_until(lambda: not set(_our_workers(os.getpid())) - others, timeout=2, what="no worker")


def test_timeouts_then_close_leave_no_process(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    others = set(_our_workers(os.getpid()))  # the shared supervisor's workers
    with Supervisor(make_config({"embed": {}})) as sup:
        for _ in range(8):
            try:
                sup.embed([LONG_TEXT] * 32, timeout=0.5)
            except WorkerTimeout:
                pass
    wait_until(lambda: not set(_our_workers(os.getpid())) - others, timeout=2, what="no worker")


# ----------------------------------------------------------------- item 9: timeouts


def test_caller_timeouts_answer_at_the_deadline_and_never_fail_the_role(
    make_config: Callable[..., SupervisorConfig], model_path: str
) -> None:
    config = make_config({"embed": {"max_restarts": 2, "n_ctx": 1024}})
    with Supervisor(config) as sup:
        first = sup.embed(["bees make honey"])
        for _ in range(10):
            started = time.monotonic()
            with pytest.raises(WorkerTimeout):
                sup.embed([LONG_TEXT + str(i) for i in range(64)], timeout=0.5)
            elapsed = time.monotonic() - started
            assert elapsed < 0.7, f"WorkerTimeout after {elapsed:.2f}s, deadline 0.5s"
            assert sup.role_status("embed").state != "failed"
        after = sup.embed(["bees make honey"])
        assert np.abs(after - first).max() < 1e-6
        [status] = sup.status()
        assert status.state in ("ready", "busy")


# ----------------------------------------------------------------- item 14: logs


def test_log_does_not_grow_per_call_and_rotates_while_running(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    config = make_config({"embed": {}}, log_max_bytes=8192)
    with Supervisor(config) as sup:
        log = sup.log_paths["embed"]
        first = sup.embed(["bees make honey"])  # the load's own lines are rotated after it
        size = log.stat().st_size
        for _ in range(5):
            sup.embed(["bees make honey", "honey is sweet"])
        assert log.stat().st_size == size, "calls write per-call lines to the role log"
        testing.debug(sup, "embed", DebugRequest(id=0, action="log", count=300))
        rotated = log.with_name(log.name + ".1")
        assert "debug log line 300 of 300" in rotated.read_text()
        assert log.stat().st_size < 8192
        testing.debug(sup, "embed", DebugRequest(id=0, action="log", count=2))
        assert "debug log line 2 of 2" in log.read_text()  # the worker writes to the new file
        assert np.abs(sup.embed(["bees make honey"]) - first).max() < 1e-6


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_worker_survives_a_log_on_a_full_disk(
    make_config: Callable[..., SupervisorConfig], tmp_path: Path, sup: Supervisor
) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "embed.log").symlink_to("/dev/full")  # every write: ENOSPC
    with Supervisor(make_config({"embed": {}}, log_dir=str(log_dir))) as full:
        [status] = full.status()
        assert status.state == "ready", status.last_exit
        testing.debug(full, "embed", DebugRequest(id=0, action="log", count=50))
        got = full.embed(["bees make honey", "rust is a language"])
        [after] = full.status()
        assert after.restarts == 0 and after.pid == status.pid
    reference = sup.embed(["bees make honey", "rust is a language"])  # same model and settings
    assert np.abs(got - reference).max() < 1e-5
