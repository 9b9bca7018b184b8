"""A throwaway Ray cluster on this machine for tests and benchmarks: a head and a second
raylet ("node") with its own custom resource, all on a loopback address.

Ray rewrites 127.0.0.1 and ``localhost`` to the machine's own network address
(``ray._private.services.resolve_ip_for_localhost``), so ``--node-ip-address=127.0.0.1``
does not keep its traffic on the loopback device; 127.0.0.2 is loopback too (all of
127.0.0.0/8 is) and Ray takes it as it is. Both raylets run ``ray start --block`` as
our children in their own session: SIGTERM drains and stops each one's processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NODE_IP = "127.0.0.2"
FAR_RESOURCE = "far_node"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((NODE_IP, 0))
        return int(probe.getsockname()[1])


@dataclass
class RayCluster:
    address: str
    temp_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    far_node: str = ""
    """The node id of the second raylet (the one with ``FAR_RESOURCE``)."""

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def environment() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # a test cluster has nothing to drain
    env.pop("RAY_ADDRESS", None)
    return env


def _ray_start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    beside = Path(sys.executable).with_name("ray")  # the venv's, even when not activated
    ray = str(beside) if beside.exists() else shutil.which("ray") or "ray"
    with open(log, "ab") as out:
        return subprocess.Popen(
            [ray, "start", "--block", f"--node-ip-address={NODE_IP}", *args],
            stdout=out,
            stderr=out,
            env=environment(),
            start_new_session=True,
        )


def start_cluster(head_cpus: int = 12, far_cpus: int = 6, timeout: float = 90) -> RayCluster:
    """Start the head and the far node and wait until both are up (or raise)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process is a Ray driver too
    temp_dir = Path(tempfile.mkdtemp(prefix="lwray", dir="/tmp"))  # short: socket paths
    port = free_port()
    cluster = RayCluster(f"{NODE_IP}:{port}", temp_dir)
    try:
        cluster.processes.append(
            _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    f"--num-cpus={head_cpus}",
                    "--include-dashboard=false",
                    f"--temp-dir={temp_dir}",
                ],
                temp_dir / "head.log",
            )
        )
        _wait_for_port(NODE_IP, port, timeout, cluster.processes[0])
        cluster.processes.append(
            _ray_start(
                [
                    f"--address={cluster.address}",
                    f"--num-cpus={far_cpus}",
                    f'--resources={{"{FAR_RESOURCE}": 4}}',
                ],
                temp_dir / "far.log",
            )
        )
        cluster.far_node = _wait_for_far_node(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"Ray's GCS did not listen on {host}:{port} within {timeout:g}s")


def _wait_for_far_node(cluster: RayCluster, timeout: float) -> str:
    """The far node's id; this process then leaves the cluster again, so the
    supervisor under test joins it itself (``ray_address``)."""
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in ray.nodes():
                if node["Alive"] and FAR_RESOURCE in node["Resources"]:
                    return str(node["NodeID"])
            time.sleep(0.2)
        raise TimeoutError(f"the second raylet did not join within {timeout:g}s")
    finally:
        ray.shutdown()
