"""Replicas against fake workers: least-loaded routing, a lost call handed to another
replica at once (not after the restart), the one-retry rule across replicas, rolling
restarts that keep serving, resizing on reload, and the role's status as a whole."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest
from fake_worker import EMBED, Script, chat, wait_for

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import ConfigError, WorkerCrashed, WorkerError
from lilbee_workers.transport.frames import ChatChunk, ChatResult
from lilbee_workers.types import RoleState


def served_by(scripts: list[Script]) -> list[int]:
    """How many requests each replica's workers received, all generations together."""
    return [sum(len(w.requests) for w in script.workers) for script in scripts]


def test_a_busy_replica_is_passed_over_for_an_idle_one(start_set) -> None:
    scripts = [Script(role="chat", on_request={1: ["hang"]}), Script(role="chat")]
    role = start_set(scripts, kill_after_s=30, cancel_grace_s=0.2)
    hanging = role.submit(chat("long"))  # the first call goes to replica 0, and hangs
    wait_for(lambda: served_by(scripts) == [1, 0])
    for _ in range(3):
        assert isinstance(role.submit(chat("short")).next_frame(5), ChatResult)
    assert served_by(scripts) == [1, 3]
    hanging.cancel()


def test_a_lost_call_is_answered_by_another_replica_before_the_restart(start_set) -> None:
    held = threading.Event()  # replica 0's replacement cannot finish loading until set
    scripts = [Script(on_request={1: ["crash"]}, hold_start={2: held}), Script()]
    role = start_set(scripts)
    reply = role.submit(EMBED).next_frame(5)  # the first call goes to replica 0
    assert reply.id == 7
    assert [len(s.workers[0].requests) for s in scripts] == [1, 1]  # crashed there, answered here
    wait_for(lambda: len(scripts[0].workers) == 2)  # its replacement starts after the answer
    assert scripts[0].workers[1].ready is None  # and is still loading
    status = role.status()
    assert status.state == RoleState.DEGRADED and status.replicas[1].state == "ready"
    held.set()
    wait_for(lambda: role.status().state == RoleState.READY)
    status = role.status()
    assert (status.restarts, status.retried, status.retried_ok) == (1, 1, 1)
    assert [r.replica for r in status.replicas] == [0, 1]
    assert status.served == 1 and status.replicas[1].served == 1


def test_a_call_lost_on_two_replicas_is_a_typed_error_with_no_third_try(start_set) -> None:
    scripts = [Script(on_request={1: ["crash"]}), Script(on_request={1: ["crash"]})]
    role = start_set(scripts)
    with pytest.raises(WorkerCrashed, match="2 times"):
        role.submit(EMBED).next_frame(5)
    wait_for(lambda: role.status().state == RoleState.READY)
    assert served_by(scripts) == [1, 1]


def test_a_stream_the_caller_saw_part_of_is_not_handed_over(start_set) -> None:
    scripts = [Script(role="chat", on_request={1: ["chunk_then_crash"]}), Script(role="chat")]
    role = start_set(scripts)
    call = role.submit(chat("hi"))
    assert isinstance(call.next_frame(5), ChatChunk)
    with pytest.raises(WorkerCrashed, match="1 chunk"):
        call.next_frame(5)
    assert served_by(scripts) == [1, 0]


def test_with_every_other_replica_down_the_call_waits_for_its_own_restart(start_set) -> None:
    held = threading.Event()
    scripts = [Script(on_request={1: ["crash"]}), Script(hold_start={2: held})]
    role = start_set(scripts)
    scripts[1].workers[0].crash_now()  # replica 1 is down and cannot come back yet
    wait_for(lambda: role.status().replicas[1].state != "ready")
    assert role.submit(EMBED).next_frame(5).id == 7  # replica 0 crashed, then served it
    assert [len(w.requests) for w in scripts[0].workers] == [1, 1]
    held.set()


def test_a_rolling_restart_keeps_the_role_serving(start_set) -> None:
    gates = [threading.Event(), threading.Event()]
    scripts = [Script(hold_start={2: gates[0]}), Script(hold_start={2: gates[1]})]
    role = start_set(scripts)
    done = role.restart()
    for restarting, serving in ((0, 1), (1, 0)):
        wait_for(lambda r=restarting: len(scripts[r].workers) == 2)
        assert role.status().state == RoleState.DEGRADED
        before = served_by(scripts)
        for _ in range(3):  # answered by the replica that is not restarting
            assert role.submit(EMBED).next_frame(5).id == 7
        after = served_by(scripts)
        assert after[serving] == before[serving] + 3 and after[restarting] == before[restarting]
        gates[restarting].set()
    assert done.wait(10)
    assert role.status().state == RoleState.READY
    assert [len(s.workers) for s in scripts] == [2, 2]


def test_a_reload_adds_and_retires_replicas(start_set, tmp_path: Path) -> None:
    scripts = [Script(), Script(), Script()]
    role = start_set(scripts, replicas=2)
    config = role.config
    assert role.restart(msgspec.structs.replace(config, replicas=3)).wait(10)
    assert [r.replica for r in role.status().replicas] == [0, 1, 2]
    # new_worker was given index 2: the third script's workers serve replica 2
    assert len(scripts[2].workers) == 1 and scripts[2].workers[0].alive()
    assert role.restart(msgspec.structs.replace(config, replicas=1)).wait(10)
    assert role.status().replicas == [] and role.status().state == RoleState.READY
    wait_for(lambda: not scripts[2].workers[-1].alive() and not scripts[1].workers[-1].alive())
    assert role.submit(EMBED).next_frame(5).id == 7


def test_status_adds_replicas_up(start_set) -> None:
    scripts = [Script(), Script()]
    role = start_set(scripts)
    for _ in range(6):
        role.submit(EMBED).next_frame(5)
    status = role.status()
    assert status.served == 6 == sum(r.served for r in status.replicas)
    assert sum(status.latency_buckets) == 6 and status.p50_ms is not None
    assert {r.pid for r in status.replicas} == {s.workers[0].pid for s in scripts}
    assert status.replicas[1].log_path.endswith("embed.1.log")
    assert status.replicas[0].log_path.endswith("embed.log")


def test_replicas_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError, match="replicas must be 1 to 64"):
        RoleConfig(model="m.gguf", replicas=0).validate("embed")
    with pytest.raises(ConfigError, match="1 with standby"):
        RoleConfig(model="m.gguf", replicas=2, standby=True).validate("embed")
    RoleConfig(model="m.gguf", replicas=4).validate("embed")


def test_a_closed_set_refuses_calls(start_set) -> None:
    role = start_set([Script(), Script()])
    role.close()
    with pytest.raises(WorkerError, match="shutting down"):
        role.submit(EMBED).next_frame(5)


def test_close_during_a_growing_reload_leaves_nothing_running(start_set) -> None:
    held = threading.Event()
    scripts = [Script(hold_start={2: held}), Script(), Script()]
    role = start_set(scripts, replicas=2)
    done = role.restart(msgspec.structs.replace(role.config, replicas=3))
    wait_for(lambda: len(scripts[0].workers) == 2)  # replica 0 is reloading
    role.close()
    held.set()
    assert done.wait(10) and role.join(10)
    alive = [w for s in scripts for w in s.workers if w.alive()]
    assert alive == [] and not [t for t in threading.enumerate() if "embed.2" in t.name]


def test_a_failed_replica_is_never_chosen_over_one_coming_back(start_set) -> None:
    held = threading.Event()
    scripts = [Script(fail_start={2, 3, 4}), Script(hold_start={2: held})]
    role = start_set(scripts, max_restarts=1, failed_cooldown_s=60)
    scripts[0].workers[0].crash_now()  # its restarts fail: replica 0 is failed, cooling
    wait_for(lambda: role.status().replicas[0].state == "failed")
    scripts[1].workers[0].crash_now()  # replica 1 is coming back, held loading
    wait_for(lambda: len(scripts[1].workers) == 2)
    calls = [role.submit(EMBED) for _ in range(4)]  # none refused: they wait for replica 1
    held.set()
    assert [call.next_frame(5).id for call in calls] == [7] * 4


def test_a_failed_replica_comes_back_by_itself_after_its_cool_down(start_set) -> None:
    scripts = [Script(fail_start={1}), Script()]
    role = start_set(scripts, max_restarts=0, failed_cooldown_s=0.3)
    assert role.status().replicas[0].state == "failed"
    wait_for(lambda: role.status().state == RoleState.READY, timeout=5)  # no call needed
    assert scripts[0].workers[-1].alive()


def test_calls_queued_on_a_lost_replica_move_to_another_at_once(start_set) -> None:
    held = threading.Event()
    scripts = [
        Script(role="chat", on_request={1: ["hang"]}, hold_start={2: held}),
        Script(role="chat", on_request={1: ["hang"]}),
    ]
    role = start_set(scripts, kill_after_s=30, cancel_grace_s=0.2)
    first, second = role.submit(chat("a")), role.submit(chat("b"))  # one hangs on each
    wait_for(lambda: served_by(scripts) == [1, 1])
    queued = [role.submit(chat(str(i))) for i in range(4)]
    wait_for(lambda: role.status().replicas[0].queued >= 1 and role.status().queued == 4)
    scripts[0].workers[0].crash_now()  # replica 0 is lost and cannot come back yet
    second.cancel()  # replica 1's hung call goes; its fresh worker answers the rest
    for call in [first, *queued]:
        reply = call.next_frame(10)
        assert isinstance(reply, ChatResult) and reply.text == "gen2", reply
    wait_for(lambda: len(scripts[0].workers) == 2)  # replica 0 reloads once they are answered
    assert scripts[0].workers[1].ready is None  # and was not back while they were
    held.set()


def test_a_rolling_restart_with_broken_settings_stops_and_rolls_back(
    start_set, tmp_path: Path
) -> None:
    scripts = [Script(), Script()]
    role = start_set(scripts, max_restarts=0)
    broken = msgspec.structs.replace(role.config, model=str(tmp_path / "missing.gguf"))
    assert role.restart(broken).wait(10)
    status = role.status()
    assert status.state == RoleState.READY, status.replicas
    assert len(scripts[1].workers) == 1  # replica 1 was never restarted with them
    assert role.replicas[0].config.model != broken.model  # replica 0 is back on the old
