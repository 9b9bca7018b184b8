"""A role's lifecycle has one owner (issue 18, items 3, 4, 5, 7), against fake workers:
overlapping restarts never take more than one replica down; a reload one replica cannot
start under is rolled back on every replica; a replica being retired never answers a
live call "shutting down" while another serves; a refused respawn says so; an error in
the dispatcher's idle step does not end its thread; retired replicas are let go."""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgspec
from fake_worker import EMBED, Script, chat, wait_for

from lilbee_workers.errors import WorkerError, WorkerUnavailable
from lilbee_workers.parent.dispatcher import RoleDispatcher
from lilbee_workers.parent.queue import Respawn, RoleQueue
from lilbee_workers.parent.replicas import ReplicaSet
from lilbee_workers.transport.frames import ChatResult, Request


class NotServing:
    """Samples how many replicas are not serving, from a thread of its own, until
    stopped: the most seen at once."""

    def __init__(self, role: ReplicaSet) -> None:
        self.most = 0
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                down = sum(not r.state.serving for r in role.replicas)
                self.most = max(self.most, down)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most


# ----------------------------------------------------------------- item 5


def test_overlapping_restarts_take_at_most_one_replica_down_at_a_time(start_set) -> None:
    gates = {(r, g): threading.Event() for r in (0, 1) for g in (2, 3)}
    scripts = [Script(hold_start={g: gates[(r, g)] for g in (2, 3)}) for r in (0, 1)]
    role = start_set(scripts)
    watch = NotServing(role)
    first = role.restart()
    wait_for(lambda: len(scripts[0].workers) == 2)  # the first roll is under way
    second = role.restart()  # a second, overlapping it: it waits for the first
    # Each generation's load is let through only once it is seen loading, in the order
    # one roll after the other takes: replica 0, 1, then 0, 1 again.
    for replica, generation in ((0, 2), (1, 2), (0, 3), (1, 3)):
        wait_for(lambda r=replica, g=generation: len(scripts[r].workers) == g)
        other = role.replicas[1 - replica]
        wait_for(lambda o=other: o.state.serving)  # while one loads, the other serves
        gates[(replica, generation)].set()
    assert first.wait(10) and second.wait(10)
    assert watch.stop() <= 1, "two restarts took every replica down at once"
    assert [len(s.workers) for s in scripts] == [3, 3]  # two whole rolls, one after the other
    assert role.status().state == "ready"


def test_a_restart_asked_while_another_waits_joins_it(start_set) -> None:
    held = threading.Event()
    scripts = [Script(hold_start={2: held}), Script()]
    role = start_set(scripts)
    running = role.restart()
    wait_for(lambda: len(scripts[0].workers) == 2)
    waiting, joined = role.restart(), role.restart()
    assert joined is waiting and waiting is not running
    held.set()
    assert running.wait(10) and waiting.wait(10)
    assert [len(s.workers) for s in scripts] == [3, 3]  # two rolls, not three
    assert running.outcome is not None and running.outcome.ok


# ----------------------------------------------------------------- item 4


def test_a_reload_one_replica_cannot_start_under_is_rolled_back_on_every_replica(
    start_set,
) -> None:
    scripts = [Script(), Script(fail_start={2}), Script()]  # replica 1 fails the new settings
    role = start_set(scripts, max_restarts=0, failed_cooldown_s=60, kill_after_s=300)
    old = role.config
    new = msgspec.structs.replace(old, kill_after_s=7)
    job = role.restart(new)
    assert job.wait(10)
    # The reference: the settings the role had. No replica may be left on the new ones.
    assert [r.config for r in role.replicas] == [old, old, old]
    assert [r.config.kill_after_s for r in role.replicas] == [300, 300, 300]
    assert role.status().state == "ready"
    outcome = job.outcome
    assert outcome is not None and not outcome.ok and outcome.rolled_back
    assert "replica 1" in outcome.reason and "fake worker 2 failed to load" in outcome.reason
    assert [len(s.workers) for s in scripts] == [3, 3, 1]  # replica 2 never restarted
    # The same reload again is tried again (here it succeeds: replica 1 loads now).
    again = role.restart(new)
    assert again.wait(10) and again.outcome is not None and again.outcome.ok
    assert [r.config.kill_after_s for r in role.replicas] == [7, 7, 7]


def test_a_reload_whose_new_replica_cannot_start_shrinks_back(start_set) -> None:
    scripts = [Script(), Script(), Script(fail_every_start=True)]
    role = start_set(scripts, replicas=2, max_restarts=0, failed_cooldown_s=60)
    old = role.config
    job = role.restart(msgspec.structs.replace(old, replicas=3))
    assert job.wait(10)
    assert [r.config for r in role.replicas] == [old, old]
    assert role.status().state == "ready"
    assert job.outcome is not None
    assert not job.outcome.ok and job.outcome.rolled_back and "replica 2" in job.outcome.reason


# ----------------------------------------------------------------- item 3


def route_via(role: ReplicaSet, pick: Callable[[Request, RoleDispatcher | None], object]) -> None:
    """Route the next call through ``pick`` once (then as before)."""
    real = role._route
    used = []

    def route(request: Request, avoid: RoleDispatcher | None = None) -> RoleDispatcher:
        if not used:
            used.append(True)
            chosen = pick(request, avoid)
            if isinstance(chosen, RoleDispatcher):
                return chosen
        return real(request, avoid)

    role._route = route  # type: ignore[method-assign]


def retiring(replica: RoleDispatcher) -> bool:
    return replica.queue.closing or getattr(replica.queue, "retiring", False)


def test_a_call_routed_to_a_replica_retired_before_it_is_queued_goes_to_another(
    start_set,
) -> None:
    scripts = [Script(), Script()]
    role = start_set(scripts)
    leaving = role.replicas[1]
    jobs = []

    def pick_then_retire(request: Request, avoid: RoleDispatcher | None) -> RoleDispatcher:
        jobs.append(role.restart(msgspec.structs.replace(role.config, replicas=1)))
        wait_for(lambda: retiring(leaving))  # retired between routing and queueing
        return leaving

    route_via(role, pick_then_retire)
    assert role.submit(EMBED).next_frame(10).id == 7  # not "shutting down"
    assert jobs[0].wait(10)
    assert sum(len(w.requests) for w in scripts[0].workers) == 1


def test_a_call_handed_over_to_a_replica_being_retired_goes_to_another(start_set) -> None:
    scripts = [Script(on_request={1: ["crash"]}), Script(), Script()]
    role = start_set(scripts, max_restarts=100)
    leaving = role.replicas[2]
    jobs = []

    def pick_then_retire(request: Request, avoid: RoleDispatcher | None) -> RoleDispatcher:
        jobs.append(role.restart(msgspec.structs.replace(role.config, replicas=2)))
        wait_for(lambda: retiring(leaving))
        return leaving

    call = role.replicas[0].submit(EMBED)  # it crashes there; its retry is handed over
    route_via(role, pick_then_retire)
    assert call.next_frame(10).id == 7  # not "shutting down"
    assert jobs[0].wait(10)
    assert sum(len(w.requests) for w in scripts[2].workers) == 0


def test_a_call_lost_on_a_retired_replica_is_retried_on_a_live_one(start_set) -> None:
    scripts = [Script(role="chat"), Script(role="chat", on_request={1: ["hang"]})]
    role = start_set(scripts, kill_after_s=30, cancel_grace_s=0.2)
    call = role.replicas[1].submit(chat("long"))
    wait_for(lambda: len(scripts[1].workers[0].requests) == 1)
    first, leaving = role.replicas
    role._shrink(1)  # replica 1 is retired with its call in flight
    assert role.replicas == [first] and retiring(leaving)
    scripts[1].workers[0].crash_now()  # and its worker is lost under that call
    reply = call.next_frame(10)
    assert isinstance(reply, ChatResult) and reply.text == "gen1"  # replica 0's worker
    assert len(scripts[1].workers) == 1  # the retired replica started no fresh worker


# ----------------------------------------------------------------- item 7


def test_a_respawn_refused_while_closing_carries_an_error() -> None:
    queue = RoleQueue("chat", 4)
    queue.close()
    switch = Respawn(model="other")
    queue.post(switch)
    assert switch.done.is_set() and not switch.ok
    assert isinstance(switch.error, WorkerUnavailable)  # never read as a switch done


def test_an_error_in_the_idle_step_does_not_end_the_dispatcher_thread(start_set) -> None:
    scripts = [Script()]
    role = start_set(scripts)
    [replica] = role.replicas
    real, raised = replica.life.wake_in, threading.Event()

    def wake_in_once() -> float | None:
        if not raised.is_set():
            raised.set()
            raise RuntimeError("a bug in the idle step")
        return real()

    replica.life.wake_in = wake_in_once  # type: ignore[method-assign]
    assert role.submit(EMBED).next_frame(5).id == 7  # then the loop asks wake_in again
    assert raised.wait(5)
    assert role.submit(EMBED).next_frame(5).id == 7  # still served by the same thread
    assert role.healthy() and replica.stats._internal_errors == 1


def test_retired_replicas_are_let_go_once_finished(start_set) -> None:
    scripts = [Script(), Script(), Script()]
    role = start_set(scripts)
    assert role.restart(msgspec.structs.replace(role.config, replicas=1)).wait(10)
    wait_for(lambda: not scripts[2].workers[0].alive() and not scripts[1].workers[0].alive())
    wait_for(lambda: (role.status(), role._retired)[1] == [])


def test_resizes_and_crashes_under_load_answer_no_live_call_shutting_down(start_set) -> None:
    """The property under churn: while the role is open, no call is answered
    ``WorkerUnavailable`` (a live replica always exists: replica 0 is never retired)."""
    import random

    scripts = [Script(), Script(), Script()]
    role = start_set(scripts, max_restarts=10_000)
    config, stop, lock = role.config, threading.Event(), threading.Lock()
    unavailable: list[Exception] = []
    answered = [0]

    def caller() -> None:
        while not stop.is_set():
            try:
                role.submit(EMBED, block_s=5).next_frame(20)
                with lock:
                    answered[0] += 1
            except WorkerUnavailable as exc:
                unavailable.append(exc)
            except WorkerError:
                pass  # lost twice to the crasher: WorkerCrashed is the rule there

    def crasher() -> None:
        rng = random.Random(18)
        while not stop.wait(0.03):
            live = [w for s in scripts for w in s.workers if w.alive()]
            if live:
                rng.choice(live).crash_now()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    threads.append(threading.Thread(target=crasher))
    for thread in threads:
        thread.start()
    try:
        for size in (1, 3, 2, 3, 1, 2, 3, 1, 3):
            assert role.restart(msgspec.structs.replace(config, replicas=size)).wait(30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert answered[0] > 50
    assert unavailable == [], unavailable[:3]
