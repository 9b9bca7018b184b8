"""The Ray backend's connection: join the cluster once, make role actors, read
Ray's errors.

Ray is an optional extra (``pip install 'lilbee-workers[ray]'``): nothing here imports
it until a Ray-backed role starts.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from types import ModuleType
from typing import Any

from lilbee_workers.config import RoleConfig
from lilbee_workers.config_problems import MAX_PARALLEL
from lilbee_workers.errors import ConfigError

NAMESPACE = "lilbee-workers"
_lock = threading.Lock()  # guards everything below, and the one ray.init
_actor_class: Any = None
_users = 0  # started supervisors on the Ray backend in this process
_joined_by_us = False  # we called ray.init (not the application): we shut it down
_joiner: threading.Thread | None = None  # the one ray.init, in a thread of its own
_join_error: Exception | None = None
_joined_address = ""


class _QuietThreadWarning(logging.Filter):
    """Ray warns that it set no SIGTERM handler when joined from a thread other than the
    main one: that is what we want (the supervisor's own handler drains first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def ray_module() -> ModuleType:
    """``ray``, or a ``ConfigError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError('backend = "ray" needs Ray: pip install "lilbee-workers[ray]"') from None
    return ray


def joined() -> ModuleType | None:
    """``ray`` while this process is in a Ray cluster, else None. Supervisor-side Ray
    calls check it first: once we left, a Ray call would quietly join whatever cluster
    this machine runs (Ray's auto-init)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def ensure_connected(address: str, timeout: float = 60.0) -> ModuleType:
    """Join the Ray cluster at ``address`` once per process (``auto``: the one this
    machine runs, or ``$RAY_ADDRESS``; ``local``: start a private one).

    ``ray.init`` retries an unreachable cluster without end, so it runs in a thread of
    its own and the caller waits ``timeout`` s at most: a dead head fails the role with
    a reason instead of hanging its start (and the supervisor's close). A ``HOST:PORT``
    nobody listens on is said at once. Off the main thread, ``ray.init`` also leaves
    the program's SIGTERM handler alone (on it, it would put ``sys.exit`` there)."""
    global _joiner, _join_error
    ray = ray_module()
    with _lock:
        if ray.is_initialized():
            if _joined_by_us and address != _joined_address:
                raise ConfigError(
                    f"this process joined Ray at {_joined_address}; one process joins one "
                    f"cluster, so ray_address = {address!r} cannot be served here"
                )
            return ray
        if _joiner is None or not _joiner.is_alive():
            probe(address)
            _join_error = None
            _joiner = threading.Thread(target=_join, args=(ray, address), name="ray-join")
            _joiner.daemon = True
            _joiner.start()
        joiner = _joiner
    joiner.join(timeout)
    if joiner.is_alive():
        raise ConnectionError(f"Ray did not answer at {address} within {timeout:g}s")
    if _join_error is not None:
        raise _join_error
    return ray


def _join(ray: ModuleType, address: str) -> None:
    global _joined_by_us, _joined_address, _join_error
    try:
        logging.getLogger("ray._private.worker").addFilter(_QuietThreadWarning())
        ray.init(
            address=address or "auto",
            namespace=NAMESPACE,
            log_to_driver=False,  # llama.cpp's load chatter stays in Ray's logs
            include_dashboard=False,
            configure_logging=False,
        )
    except Exception as exc:
        _join_error = exc
        return
    with _lock:
        _joined_by_us, _joined_address = True, address
        late = _users == 0  # every supervisor closed while Ray was answering
    if late:
        release(hold_first=True)


def probe(address: str, timeout: float = 5.0) -> None:
    """For a ``HOST:PORT`` address, that something listens there."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # auto, local, ray://...: Ray's own to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address}: {exc.strerror or exc}") from None


def hold() -> None:
    """A supervisor on the Ray backend starts (its roles join the cluster when they
    start their first actor)."""
    global _users
    with _lock:
        _users += 1


def release(hold_first: bool = False) -> None:
    """A supervisor on the Ray backend closed: the last one leaves the cluster, if it
    was us who joined it (an application's own ``ray.init`` is its own to end)."""
    global _users, _joined_by_us
    with _lock:
        _users = max(0, _users - (0 if hold_first else 1))
        if _users or not _joined_by_us:
            return
        _joined_by_us = False
    ray_module().shutdown()


def actor_class() -> Any:
    """``RoleActor`` as a Ray actor class (made once)."""
    global _actor_class
    ray = ray_module()
    with _lock:
        if _actor_class is None:
            # The class is named here only for Ray to make the actor from it; its code
            # (and the roles it loads) runs in the actor's process, not in ours.
            from lilbee_workers.cluster.actor import RoleActor

            # A busy "data" call never blocks a beat; "streams" carries the chat streams
            # of an actor that batches them (``parallel``), side by side.
            groups = {"data": 1, "streams": MAX_PARALLEL, "control": 2}
            _actor_class = ray.remote(concurrency_groups=groups)(RoleActor)
        return _actor_class


def create_actor(address: str, config: RoleConfig, boot: bytes) -> Any:
    """A new role actor, placed by Ray where ``num_cpus``/``num_gpus``/``resources``
    fit (replicas spread over the nodes, so one node lost is not all of them). Ray
    never restarts it or retries its calls: our policy does (a retried stream would
    splice two generations). ``Unschedulable`` when no node could ever hold it."""
    ray = ensure_connected(address, config.start_timeout_s)
    wants = {"CPU": config.num_cpus, "GPU": config.num_gpus, **config.resources}
    check_feasible(ray.nodes(), {key: amount for key, amount in wants.items() if amount > 0})
    return (
        actor_class()
        .options(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            resources=dict(config.resources),
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD" if config.replicas > 1 else "DEFAULT",
        )
        .remote(boot)
    )


class Unschedulable(Exception):
    """No node of the cluster has what one actor of the role asks for."""


def check_feasible(nodes: list[dict[str, Any]], wants: dict[str, float]) -> None:
    """Some live node has every resource ``wants`` asks for (else ``Unschedulable``:
    Ray would keep the actor pending without end, and the role would time out)."""
    for node in nodes:
        have = node.get("Resources", {})
        if node.get("Alive") and all(have.get(key, 0.0) >= amount for key, amount in wants.items()):
            return
    asked = ", ".join(f"{key}={amount:g}" for key, amount in wants.items()) or "nothing"
    raise Unschedulable(f"no live node of the Ray cluster has {asked}")


def describe_death(exc: BaseException) -> str:
    """Ray's reason an actor call failed, in one line (its messages run to a page)."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "Worker exit detail:" in line:
            return line.split("Worker exit detail:", 1)[1].strip().rstrip(".") or text
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"
