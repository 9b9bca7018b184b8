"""The daemon's socket on disk: a directory only its user controls, a socket file with
the configured mode and group, and clear errors when that cannot be done safely."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from pathlib import Path

from lilbee_workers.config import SupervisorConfig
from lilbee_workers.errors import ConfigError


class DaemonSetupError(RuntimeError):
    """The daemon cannot set up its socket safely; the message says what to fix."""


def bind_socket(path: Path, config: SupervisorConfig, gid: int | None) -> socket.socket:
    """A listening Unix socket at ``path``, mode ``socket_mode``, given to ``gid``.
    A stale socket from a dead daemon is replaced; a live one is an error."""
    prepare_socket_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise DaemonSetupError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale, from a daemon that died
        else:
            raise DaemonSetupError(f"another daemon is already listening on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)  # never world-accessible, even for an instant
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    try:
        # The directory is ours and not writable by others (checked above), so the
        # socket cannot have been swapped for a link: chown/chmod act on our socket.
        if gid is not None:
            give_to_group(path, gid, config.socket_group)
        os.chmod(path, config.socket_mode)
    except BaseException:
        listener.close()
        path.unlink(missing_ok=True)
        raise
    listener.listen(128)
    return listener


def socket_group_id(group: str) -> int | None:
    """The gid of ``socket_group`` (a name, or a number); None when unset. An unknown
    group is a ``ConfigError`` naming the key."""
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(
            f"socket_group: no group named {group!r} on this system "
            f"(create it: sudo groupadd --system {group}; or unset socket_group)"
        ) from None


def give_to_group(path: Path, gid: int, group: str) -> None:
    """``chown :group path``, with a clear error when we may not."""
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        user = pwd.getpwuid(os.getuid()).pw_name if _has_passwd_entry() else str(os.getuid())
        raise DaemonSetupError(
            f"cannot give the socket {path} to group {group!r} (socket_group): the daemon's "
            f"user {user!r} must be a member of that group (sudo usermod -aG {group} {user},"
            " then restart the service) or the daemon must run as root"
        ) from None


def _has_passwd_entry() -> bool:
    try:
        pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    return True


def prepare_socket_dir(directory: Path) -> None:
    """Create the socket's directory (mode 0700) if it is missing; refuse one that
    another user owns or that group/others may write (they could replace the socket
    and receive the texts sent to it)."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # someone made it meanwhile: the checks below judge it
        info = os.lstat(directory)
    me = os.getuid()
    if stat.S_ISLNK(info.st_mode):
        if info.st_uid not in (me, 0):
            raise DaemonSetupError(
                f"socket directory {directory} is a symlink owned by uid {info.st_uid}, not "
                f"by you (uid {me}); remove it, or set `socket` (--socket, "
                "LILBEE_WORKERS_SOCKET) to a path in a directory you own"
            )
        info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise DaemonSetupError(f"socket directory {directory} is not a directory")
    if info.st_uid not in (me, 0):
        raise DaemonSetupError(
            f"socket directory {directory} is owned by uid {info.st_uid}, not by you "
            f"(uid {me}): another user could replace the socket and read what clients "
            "send. Remove that directory, or set `socket` (--socket, LILBEE_WORKERS_SOCKET)"
            " to a path in a directory you own, such as $XDG_RUNTIME_DIR"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        shared = info.st_mode & stat.S_ISVTX  # /tmp and its like: never chmod those
        fix = (
            f"use a directory of your own in it, such as {directory}/lilbee-workers-{me}/"
            if shared
            else f"run `chmod go-w {directory}`, or use a directory only you can write"
        )
        raise DaemonSetupError(
            f"socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):#o}): another user could replace the socket;"
            f" {fix}"
        )
