"""One replica of a role, as its ``ReplicaSet`` sees it: a ``RoleDispatcher`` plus the
few verbs the set needs to route calls and move them between replicas, so that the set
never reaches into a replica's queue or lifecycle itself."""

from __future__ import annotations

from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.dispatcher import RoleDispatcher
from lilbee_workers.parent.queue import Close, Recover
from lilbee_workers.transport.frames import Request
from lilbee_workers.types import RoleState


class Replica(RoleDispatcher):
    """A role dispatcher serving as one of several replicas."""

    @property
    def retiring(self) -> bool:
        return self.queue.retiring

    @property
    def default_model(self) -> str:
        return self.life.default_model

    @property
    def failed_reason(self) -> str:
        return self.life.failed_reason

    def route_cost(self, request: Request) -> tuple[bool, bool, bool, bool, int]:
        """How poor a choice this replica is for ``request`` (lower is better): cooling
        down after a failure, queue full, not serving, needing a model switch, and the
        calls queued and running here."""
        queued, running = self.queue.counts()
        state, life = self.state, self.life
        cooling = state == RoleState.FAILED and life.policy.cooling_down()
        switch = life.wanted(request) != life.model_name
        return cooling, queued >= self.queue.size, not state.serving, switch, queued + running

    def take_over(self, call: Call) -> bool:
        """A call from another replica, at the head of the line past the size bound (it
        was admitted once); False while retiring or closing."""
        return self.queue.take_over(call)

    def take_queued(self) -> list[Call]:
        """The calls waiting here, for other replicas to take."""
        return self.queue.take_calls()

    def retire(self) -> None:
        """Take no new call; the set moves the queued ones, then calls ``stop_when_idle``."""
        self.queue.retire()

    def stop_when_idle(self) -> None:
        """Stop once the call in flight is answered (the dispatcher thread then ends)."""
        self.queue.post(Close())

    def recover_after(self, calls: list[Call]) -> None:
        """Bring a fresh worker up once ``calls``, lost here and taken by another
        replica, are answered."""
        self.queue.post(Recover(calls))
