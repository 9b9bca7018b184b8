"""Which socket a client command talks to: --socket, then LILBEE_WORKERS_SOCKET, then
the config's `socket`, then the default (also when XDG_RUNTIME_DIR is unset)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lilbee_workers.config import RoleConfig, SupervisorConfig
from lilbee_workers.service.socket_paths import socket_path_for as socket_for

CONFIG = SupervisorConfig(roles={"embed": RoleConfig(model="m")}, socket="/cfg/d.sock")


def test_flag_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LILBEE_WORKERS_SOCKET", raising=False)
    path, source = socket_for(Path("/flag.sock"), CONFIG, Path("w.toml"))
    assert path == Path("/flag.sock") and source == "--socket"


def test_env_is_named_when_it_gave_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # typer fills the --socket parameter from the environment variable
    monkeypatch.setenv("LILBEE_WORKERS_SOCKET", "/env.sock")
    path, source = socket_for(Path("/env.sock"), CONFIG, Path("w.toml"))
    assert path == Path("/env.sock") and source == "LILBEE_WORKERS_SOCKET"


def test_config_socket_when_no_flag_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LILBEE_WORKERS_SOCKET", raising=False)
    path, source = socket_for(None, CONFIG, Path("w.toml"))
    assert path == Path("/cfg/d.sock") and source == "`socket` in w.toml"
    home = SupervisorConfig(roles=CONFIG.roles, socket="~/d.sock")
    assert socket_for(None, home, Path("w.toml"))[0] == Path(os.path.expanduser("~/d.sock"))


def test_default_with_and_without_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LILBEE_WORKERS_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert socket_for(None, None, None)[0] == Path("/run/user/1000/lilbee-workers.sock")
    no_socket = SupervisorConfig(roles=CONFIG.roles)
    assert socket_for(None, no_socket, Path("w.toml"))[0] == Path(
        "/run/user/1000/lilbee-workers.sock"
    )
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    path, source = socket_for(None, None, None)
    assert path == Path(f"/tmp/lilbee-workers-{os.getuid()}/lilbee-workers.sock")
    assert "XDG_RUNTIME_DIR is unset" in source


def test_a_sticky_shared_socket_dir_is_refused_without_advising_chmod_of_it(
    tmp_path: Path,
) -> None:
    from lilbee_workers.service.socket_setup import DaemonSetupError, prepare_socket_dir

    shared = tmp_path / "tmp-like"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: chmod go-w would break every other user of it
    with pytest.raises(DaemonSetupError) as caught:
        prepare_socket_dir(shared)
    message = str(caught.value)
    assert "writable by group or others" in message and "chmod" not in message
    assert f"{shared}/lilbee-workers-{os.getuid()}/" in message
    plain = tmp_path / "group-writable"
    plain.mkdir()
    plain.chmod(0o777)
    with pytest.raises(DaemonSetupError, match="chmod go-w"):
        prepare_socket_dir(plain)
