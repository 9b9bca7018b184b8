"""What the command line prints: the status table, restart lines, chat results, and
errors (text for people, ``{"error": ...}`` for scripts)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.table import Table

from lilbee_workers.config_problems import ConfigProblems
from lilbee_workers.errors import ConfigError, DaemonUnreachable, WorkerError
from lilbee_workers.transport.frames import ChatResult
from lilbee_workers.types import RoleStatus

if TYPE_CHECKING:
    from lilbee_workers.api import ChatStream
    from lilbee_workers.cli.doctor import Finding

QUIET_KINDS = ("invalid_request", "cancelled")
"""Errors about the request itself: the worker's log has nothing to add."""


def status_table(statuses: list[RoleStatus]) -> Table:
    table = Table(
        title="lilbee-workers", box=None, pad_edge=False, padding=(0, 1, 0, 0), show_header=True
    )
    columns = ("role", "state", "pid", "model", "up", "restarts", "run+q", "ok/err/cancel")
    for column in columns:
        if column == "model":  # the column that gives way on a narrow terminal
            table.add_column(column, no_wrap=True, overflow="ellipsis", min_width=6, max_width=12)
        else:
            table.add_column(column, no_wrap=True, min_width=len(column))
    table.add_column("p50/p99ms", no_wrap=True)
    table.add_column("RSS", no_wrap=True)
    rows = [s for status in statuses for s in (status, *status.replicas)]
    batched = any(s.slots > 1 for s in rows)  # an 80-column table has no room otherwise
    extra = {  # columns only some setups need, each with what a row shows in it
        "tok/s": _stream_rate if batched else None,
        "KV": _kv_cache if batched else None,
        "node": _node if any(s.node for s in rows) else None,  # backend = "ray"
    }
    shown = [cell for column, cell in extra.items() if cell is not None]
    for column, cell in extra.items():
        if cell is not None:
            table.add_column(column, no_wrap=True)
    exits = []
    for s in statuses:
        for name, row in ((s.role, s), *((f"  #{r.replica}", r) for r in s.replicas)):
            table.add_row(*_status_row(name, row), *(cell(row) for cell in shown))
        if s.last_exit:
            exits.append(f"{s.role}: {s.last_exit}")
    if exits:
        table.caption = "last exit - " + "; ".join(exits)
    return table


def _status_row(name: str, s: RoleStatus) -> tuple[str, ...]:
    p50 = "-" if s.p50_ms is None else f"{s.p50_ms:.0f}"
    p99 = "-" if s.p99_ms is None else f"{s.p99_ms:.0f}"
    return (
        name,
        state_text(s),
        str(s.pid or "-"),
        s.model_name or Path(s.model).stem,
        _duration(s.uptime_s) if s.pid else "-",
        str(s.restarts),
        f"{s.in_flight}/{s.slots}+{s.queued}" if s.slots > 1 else f"{s.in_flight}+{s.queued}",
        f"{s.served}/{s.errors}/{s.cancelled}",
        f"{p50}/{p99}",
        _size(s.rss_bytes),
    )


def _stream_rate(s: RoleStatus) -> str:
    """The running streams' mean generation rate, tokens per second each."""
    rates = s.stream_tokens_per_s
    return f"{sum(rates) / len(rates):.1f}" if rates else "-"


def _kv_cache(s: RoleStatus) -> str:
    return _size(s.kv_cache_bytes) if s.kv_cache_bytes else "-"


def _node(s: RoleStatus) -> str:
    return s.node[:8] or "-"


def state_text(status: RoleStatus) -> str:
    """The state, or ``loading 43%`` while a worker loads the role's model."""
    fraction = status.loading
    return status.state if fraction is None else f"loading {percent(fraction)}%"


def percent(fraction: float) -> int:
    """Whole percent, rounded down (99.9% is not done)."""
    return min(100, max(0, int(fraction * 100)))


def _size(n_bytes: int) -> str:
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f}G"
    return f"{n_bytes / 2**20:.0f}M"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def statuses_json(statuses: list[RoleStatus], **extra: Any) -> str:
    return json.dumps({**extra, "roles": msgspec.to_builtins(statuses)}, indent=2)


def restart_lines(statuses: list[RoleStatus], waited: bool) -> list[str]:
    """One line per role, as things really are: without waiting, only that a restart
    was requested (the state shown is from before it); after waiting, the new pid, or
    the reason the role did not come back."""
    lines = []
    for s in statuses:
        if not waited:
            was = f"was {s.state}" + (f", pid {s.pid}" if s.pid else "")
            lines.append(f"{s.role}: restart requested ({was})")
        elif s.state in ("ready", "busy"):
            lines.append(f"{s.role}: {s.state} (pid {s.pid})")
        else:
            reason = f": {s.last_exit}" if s.last_exit else ""
            log = existing_log(s.log_path)
            lines.append(f"{s.role}: {s.state}{reason}" + (f" (worker log: {log})" if log else ""))
    return lines


def model_lines(statuses: list[RoleStatus]) -> list[str]:
    """Per role: its model names, the default first, the one loaded marked."""
    lines = []
    for s in statuses:
        loaded = s.model_name if s.pid else ""
        names = [f"{name} (loaded, {_size(s.model_bytes)})" if name == loaded else name
                 for name in s.models]  # fmt: skip
        idle = f"; idle {_duration(s.idle_s)}" if s.pid and not s.in_flight else ""
        lines.append(f"{s.role}: {', '.join(names) or '-'} [{s.state}{idle}]")
    return lines


def print_stream(stream: ChatStream, as_json: bool) -> None:
    """Print a chat/vision stream as it comes, or its result as one JSON document."""
    if as_json:
        print(json.dumps(chat_document(stream.collect())))
        return
    for chunk in stream:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    print()


def chat_document(result: ChatResult) -> dict[str, Any]:
    """A chat or vision result for ``--json``: the answer and its token counts."""
    return {
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }


def existing_log(path: str) -> str:
    """``path`` if a log file is there (or we may not look), else ``""``: a role that
    never started has no log yet, and pointing to it sends people looking for nothing."""
    if not path:
        return ""
    try:
        os.stat(path)
    except FileNotFoundError:
        return ""
    except OSError:
        return path  # not ours to read (another user's daemon): it may well exist
    return path


def error_kind(error: Exception) -> str:
    if isinstance(error, DaemonUnreachable):
        return "unreachable"
    if isinstance(error, ConfigError):
        return "config"
    if isinstance(error, WorkerError):
        return error.kind
    return "error"


def error_text(error: Exception, socket_source: str = "") -> str:
    """The message for a person: the worker log only where it can help."""
    if isinstance(error, ConfigProblems) and len(error.problems) > 1:
        where = f" {error.source}" if error.source else ""
        return f"invalid config{where}, {len(error.problems)} problems:\n  " + "\n  ".join(
            error.problems
        )
    if isinstance(error, ConfigError):
        return f"invalid config: {error}"
    if not isinstance(error, WorkerError):
        return str(error)
    text = error.message
    if isinstance(error, DaemonUnreachable) and socket_source:
        text += f"\n  (socket path from {socket_source})"
    if error.kind in QUIET_KINDS:
        return text
    log = existing_log(error.log_path)
    if log:
        text += f" (worker log: {log})"
    if error.log_tail:
        text += "\n--- last lines of the worker log ---\n" + error.log_tail.rstrip("\n")
    return text


def error_json(error: Exception, socket_source: str = "") -> str:
    """``{"error": {"kind": ..., "message": ...}}`` plus role, log and socket details."""
    kind = error_kind(error)
    document: dict[str, Any] = {"kind": kind, "message": str(error)}
    if isinstance(error, WorkerError):
        document["message"] = error.message
        if error.role:
            document["role"] = error.role
        log = existing_log(error.log_path)
        if log and error.kind not in QUIET_KINDS:
            document["log_path"] = log
            if error.log_tail:
                document["log_tail"] = error.log_tail
    if isinstance(error, ConfigProblems):
        document["problems"] = error.problems
    if kind == "unreachable" and socket_source:
        document["socket_from"] = socket_source
    return json.dumps({"error": document})


def doctor_text(findings: list[Finding]) -> str:
    """One line per check, a `fix:` line under each one that is not ok, then a count."""
    width = max(len(f.check) for f in findings)
    lines = []
    for f in findings:
        lines.append(f"{f.level:<5}  {f.check:<{width}}  {f.message}")
        if f.level != "ok" and f.fix:
            lines.append(f"{'':<5}  {'':<{width}}  fix: {f.fix}")
    problems = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    lines.append(f"{_count(problems, 'problem')}, {_count(warnings, 'warning')}")
    return "\n".join(lines)


def doctor_json(findings: list[Finding]) -> str:
    """``doctor --json``: whether all is well, the counts, and every check."""
    problems = sum(f.level == "error" for f in findings)
    return json.dumps(
        {
            "ok": problems == 0,
            "problems": problems,
            "warnings": sum(f.level == "warn" for f in findings),
            "checks": [asdict(f) for f in findings],
        },
        indent=2,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
