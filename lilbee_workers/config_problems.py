"""Every problem in a config at once, each naming its key: a user who fixes one bad key
should not have to restart to learn of the next. msgspec stops at the first bad field,
so a table is decoded again without each key it refused, until the rest decodes."""

from __future__ import annotations

import difflib
import math
from typing import Any, TypeVar

import msgspec

from lilbee_workers.errors import ConfigError

S = TypeVar("S", bound=msgspec.Struct)


class ConfigProblems(ConfigError):
    """An invalid config: ``problems`` holds one line per bad key, each naming it; the
    message joins them (one line, as a log record or systemd's ``STATUS=`` shows it)."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__((f"{source}: " if source else "") + "; ".join(self.problems))

    def __reduce__(self) -> tuple[type[ConfigProblems], tuple[list[str], str]]:
        """Pickled (by Ray, multiprocessing) as its problems, not as its joined message."""
        return type(self), (self.problems, self.source)


def raise_all(problems: list[str], source: str = "") -> None:
    """Raise ``ConfigProblems`` if there are any: the first one found for each key (a
    negative ``kill_after_s`` is not also reported as out of range)."""
    first: dict[str, str] = {}
    for problem in problems:
        first.setdefault(problem.split(" ", 1)[0].rstrip(":"), problem)
    if first:
        raise ConfigProblems(list(first.values()), source)


def convert_all(
    table: Any, struct: type[S], where: str, refused: list[str]
) -> tuple[S | None, list[str]]:
    """``table`` as a ``struct``, and a line per bad key (``where`` + the key). The bad
    keys are left out (added to ``refused`` as ``where`` + key) so the rest is still
    read and checked; None if what is left cannot be read (a missing required key)."""
    problems: list[str] = []
    rest = dict(table) if isinstance(table, dict) else table
    while True:
        try:
            return msgspec.convert(rest, struct), problems
        except msgspec.ValidationError as exc:
            key, text = readable(str(exc), struct)
            problems.append(where + text if key else f"{where.rstrip('.')}: {text}".lstrip(": "))
            top = key.split(".")[0].split("[")[0]
            if not isinstance(rest, dict) or top not in rest:
                return None, problems
            del rest[top]
            refused.append(where + top)


def not_refused(problems: list[str], refused: list[str]) -> list[str]:
    """``problems`` less those about a key already reported and left out: a bad value
    is not also "missing" once dropped."""
    return [
        problem
        for problem in problems
        if not any(
            problem.startswith(key) and problem[len(key) : len(key) + 1] in (" ", ":", ".")
            for key in refused
        )
    ]


def readable(message: str, struct: type[msgspec.Struct]) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.n_ctx`" as ("n_ctx", "n_ctx: Expected
    ..."); an unknown key of ``struct`` with the nearest known key as a suggestion."""
    if " - at `$" in message:
        text, where = message.rsplit(" - at `$", 1)
        key = where.rstrip("`").lstrip(".")
        return key, f"{key}: {text}"
    if message.startswith("Object contains unknown field "):
        key = message.removeprefix("Object contains unknown field ").strip("`")
        near = difflib.get_close_matches(key, struct.__struct_fields__, n=1, cutoff=0.6)
        return key, f"{key}: unknown key" + (f" (did you mean `{near[0]}`?)" if near else "")
    return "", message


def ray_ask_problems(where: str, asks: dict[str, float]) -> list[str]:
    """``backend = "ray"`` resource asks: finite, not negative, CPUs and GPUs by name."""
    return [
        f"{where}.{key}: a number >= 0, and CPUs and GPUs as num_cpus and num_gpus (got {amount})"
        for key, amount in asks.items()
        if not (math.isfinite(amount) and amount >= 0) or key in ("CPU", "GPU", "memory")
    ]


MAX_PARALLEL = 64  # streams one chat worker batches


def parallel_problems(where: str, role: str, parallel: int) -> list[str]:
    """``parallel``: 1 to ``MAX_PARALLEL``, and above 1 only where streams batch (chat)."""
    if not 1 <= parallel <= MAX_PARALLEL:
        return [f"{where}.parallel must be 1 to {MAX_PARALLEL}, not {parallel}"]
    if parallel > 1 and role != "chat":
        return [f"{where}.parallel: only the chat role batches streams (set 1, or use replicas)"]
    return []


MAX_SECONDS = 7 * 24 * 3600.0  # longest *_s value (a week): past it a typo; inf breaks timers


def duration_problems(key: str, seconds: float) -> list[str]:
    """What is wrong with a duration (nothing if it is finite and in [0, a week])."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        return [f"{key} must be a finite number of seconds between 0 and {MAX_SECONDS:g}, "
                f"got {seconds}"]  # fmt: skip
    return []


def timing_problems(where: str, config: Any) -> list[str]:
    """A role's deadlines and durations: positive where zero makes no sense, each finite
    and at most a week."""
    found: list[str] = []
    times = {
        "kill_after_s": config.kill_after_s,
        "start_timeout_s": config.start_timeout_s,
        "heartbeat_interval_s": config.heartbeat_interval_s,
        "heartbeat_timeout_s": config.heartbeat_timeout_s,
        "restart_window_s": config.restart_window_s,
    }
    for key, seconds in times.items():
        if not seconds > 0:
            found.append(f"{where}.{key} must be > 0 seconds, got {seconds}")
    durations = {
        **times,
        "cancel_grace_s": config.cancel_grace_s,
        "restart_backoff_s": config.restart_backoff_s,
        "restart_backoff_max_s": config.restart_backoff_max_s,
        "failed_cooldown_s": config.failed_cooldown_s,
        **{"stall_after_s": config.stall_after_s or 0.0, "quarantine_s": config.quarantine_s},
    }
    for key, seconds in durations.items():
        found += duration_problems(f"{where}.{key}", seconds)
    return found
