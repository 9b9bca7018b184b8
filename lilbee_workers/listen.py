"""``HOST:PORT`` listen addresses (the HTTP face's ``http_listen``)."""

from __future__ import annotations

import ipaddress

from lilbee_workers.errors import ConfigError


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); ``ConfigError`` if malformed."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"http_listen must be HOST:PORT (e.g. 127.0.0.1:8088), got {listen!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
