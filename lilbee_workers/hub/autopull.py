"""``auto_pull = true``: before ``serve`` starts its roles, pull each ``hf:`` model the
config names that the local cache lacks, with progress lines in the log. A pull that
fails is logged; its role then fails at start, naming the pull to run."""

from __future__ import annotations

import functools

import structlog

from lilbee_workers.config import SupervisorConfig
from lilbee_workers.errors import ConfigError
from lilbee_workers.hub.cache import resolve
from lilbee_workers.hub.download import pull
from lilbee_workers.hub.names import HubError, is_hub_name, parse
from lilbee_workers.hub.report import LineReport

log = structlog.get_logger("lilbee_workers.hub")


def hub_names(config: SupervisorConfig) -> dict[str, str]:
    """Every ``hf:`` name the config uses, with the first role that uses it."""
    found: dict[str, str] = {}
    for role, role_config in config.roles.items():
        values = [role_config.model, role_config.mmproj or ""]
        for entry in role_config.models.values():
            values += [entry.path, entry.mmproj or ""]
        for value in values:
            if is_hub_name(value):
                found.setdefault(value, role)
    return found


def _say(model: str, role: str, text: str) -> None:
    log.info(text, model=model, role=role)


def pull_missing(config: SupervisorConfig) -> None:
    """Pull what the cache lacks (nothing without ``auto_pull``); never raises for a
    pull that fails: its role reports it."""
    if not config.auto_pull:
        return
    for name, role in hub_names(config).items():
        try:
            resolve(name)
            continue  # cached already
        except ConfigError:
            pass
        log.info("auto_pull: pulling a missing model", model=name, role=role)
        report = LineReport(functools.partial(_say, name, role))
        try:
            pull(parse(name), report)
        except HubError as exc:
            log.error("auto_pull failed", model=name, role=role, reason=exc.message)
        except OSError as exc:  # a disk error while writing or hashing: the role reports it
            log.error("auto_pull failed", model=name, role=role, reason=str(exc))
