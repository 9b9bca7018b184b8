"""The Ray backend's pure pieces, without a cluster: Ray's errors in one line, a clear
error where Ray is missing, config keys, the status table's node column."""

from __future__ import annotations

import importlib.util
import socket
import sys

import pytest
from rich.console import Console

from lilbee_workers import Supervisor
from lilbee_workers.cli.output import status_table
from lilbee_workers.cluster import connect
from lilbee_workers.cluster.actor import Outbox
from lilbee_workers.config import RoleConfig, SupervisorConfig, parse_config
from lilbee_workers.errors import ConfigError, InvalidRequest
from lilbee_workers.transport import codec
from lilbee_workers.transport.frames import LoadProgress, LogRecord
from lilbee_workers.types import RoleStatus

RAY_DEATH = """The actor died unexpectedly before finishing this task.
\tclass_name: RoleActor
\tpid: 25508
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the process was killed by the OOM killer"""  # noqa: E501


def test_a_dead_actor_is_described_by_rays_exit_detail_in_one_line() -> None:
    text = connect.describe_death(RuntimeError(RAY_DEATH))
    assert text.startswith("Worker unexpectedly exits with a connection error code 2")
    assert "\n" not in text and "OOM" in text  # the detail's own sentence, kept whole
    other = connect.describe_death(ValueError("first line\nsecond line"))
    assert other == "ValueError: first line"


def test_backend_ray_without_ray_installed_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"lilbee-workers\[ray\]"):
        connect.ray_module()


def test_ray_placement_keys_parse_and_bad_amounts_name_the_key() -> None:
    config = parse_config(
        'backend = "ray"\nray_address = "127.0.0.2:6379"\n[roles.embed]\nmodel = "m.gguf"\n'
        "num_cpus = 2\nnum_gpus = 0.5\nresources = { far = 1 }\n"
    )
    assert config.backend == "ray" and config.ray_address == "127.0.0.2:6379"
    embed = config.roles["embed"]
    assert (embed.num_cpus, embed.num_gpus, embed.resources) == (2.0, 0.5, {"far": 1.0})
    for key, value in (("num_cpus", "-1"), ("num_gpus", "nan"), ("resources", "{ far = -2 }")):
        with pytest.raises(ConfigError, match=r"roles\.embed\.(num_cpus|num_gpus|far)"):
            parse_config(f'[roles.embed]\nmodel = "m.gguf"\n{key} = {value}\n')
    with pytest.raises(ConfigError, match="backend"):
        parse_config('backend = "k8s"\n[roles.embed]\nmodel = "m.gguf"\n')


def test_ray_rejects_standby_and_cpus_given_as_custom_resources() -> None:
    with pytest.raises(ConfigError, match=r"roles\.embed\.standby.*use replicas"):
        parse_config('backend = "ray"\n[roles.embed]\nmodel = "m.gguf"\nstandby = true\n')
    assert parse_config('[roles.embed]\nmodel = "m.gguf"\nstandby = true\n')  # local: fine
    with pytest.raises(ConfigError, match=r"roles\.embed\.GPU.*num_gpus"):
        parse_config('[roles.embed]\nmodel = "m.gguf"\nresources = { GPU = 1 }\n')


def test_an_actor_no_live_node_could_hold_is_refused_with_what_it_asked() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0, "gpu_box": 1.0}},
        {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
    ]
    connect.check_feasible(nodes, {"CPU": 4.0, "GPU": 1.0})  # the third node
    connect.check_feasible(nodes, {})
    with pytest.raises(connect.Unschedulable, match=r"has CPU=1, gpu_box=1$"):
        connect.check_feasible(nodes, {"CPU": 1.0, "gpu_box": 1.0})  # only on a dead node
    with pytest.raises(connect.Unschedulable, match="CPU=16"):
        connect.check_feasible(nodes, {"CPU": 16.0})


def test_reload_cannot_move_roles_to_another_backend() -> None:
    roles = {"embed": RoleConfig(model="m.gguf")}
    sup = Supervisor(SupervisorConfig(roles=roles))
    with pytest.raises(InvalidRequest, match="backend"):
        sup.reload(SupervisorConfig(roles=roles, backend="ray"))


def test_outbox_hands_each_frame_to_one_beat_and_keeps_the_newest() -> None:
    outbox = Outbox(1 << 20)
    outbox.send(LoadProgress(fraction=0.5))
    outbox.send(LogRecord(level=20, logger="x", message="hello", created=0.0))
    frames = [codec.FROM_HEARTBEAT.decode(data) for data in outbox.drain()]
    assert frames == [
        LoadProgress(fraction=0.5),
        LogRecord(level=20, logger="x", message="hello", created=0.0),
    ]
    assert outbox.drain() == []
    for n in range(1500):  # a flood between two beats: bounded, newest kept
        outbox.send(LogRecord(level=20, logger="x", message=str(n), created=0.0))
    kept = [codec.FROM_HEARTBEAT.decode(data) for data in outbox.drain()]
    assert len(kept) == 1000 and kept[-1].message == "1499"  # type: ignore[union-attr]


def test_status_table_shows_the_node_column_only_for_ray_actors() -> None:
    console = Console(width=140, record=True)
    replicas = [
        RoleStatus(role="embed", state="ready", replica=0, pid=11, node="a1b2c3d4e5f6"),
        RoleStatus(role="embed", state="ready", replica=1, pid=12, node="ffee0099aabb"),
    ]
    console.print(status_table([RoleStatus(role="embed", state="ready", replicas=replicas)]))
    text = console.export_text()
    assert "node" in text and "a1b2c3d4" in text and "ffee0099" in text
    console.print(status_table([RoleStatus(role="chat", state="ready", pid=5)]))
    assert "node" not in console.export_text()


def test_doctor_checks_ray_is_installed_for_the_ray_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lilbee_workers.cli.doctor import check_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    missing = check_ray("auto")
    assert missing.level == "error" and "lilbee-workers[ray]" in missing.fix
    monkeypatch.undo()
    if importlib.util.find_spec("ray") is not None:
        with socket.socket() as head:  # something listening: ok
            head.bind(("127.0.0.2", 0))
            head.listen(1)
            address = f"127.0.0.2:{head.getsockname()[1]}"
            found = check_ray(address)
            assert found.level == "ok" and address in found.message
        refused = check_ray(address)  # nothing there any more
        assert refused.level == "error" and "nothing answers at" in refused.message
        assert check_ray("auto").level == "ok"  # Ray's own to resolve at start
