"""Probes for tests and benchmarks: not part of the API, and not for production use.

``noop`` is a round trip through a role's worker that does no work (it measures the
supervisor's own overhead). ``debug`` sends fault injection, which a worker refuses
unless its role sets ``debug_requests = true``.
"""

from __future__ import annotations

from lilbee_workers.api import WorkerAPI
from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport.frames import AnyFrame, DebugRequest, NoopRequest, NoopResult


def noop(api: WorkerAPI, role: str, timeout: float | None = None) -> None:
    """A round trip through ``role``'s worker that does no work."""
    frame = api._final(role, NoopRequest(id=0, role=role), timeout)
    if not isinstance(frame, NoopResult):
        raise ProtocolError(f"expected a noop result, got {type(frame).__name__}")


def debug(
    api: WorkerAPI, role: str, request: DebugRequest, timeout: float | None = None
) -> AnyFrame:
    """Run a fault-injection request on ``role``'s worker; its final frame."""
    return api._final(role, request, timeout)
