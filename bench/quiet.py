"""Other work's share of this machine's CPU, for benchmarks on a shared machine.

The machine's busy CPU time (``/proc/stat``) less the CPU time of this process and all
its descendants (the servers under test and their workers): what other work took while
a figure was measured. A benchmark waits for it to drop before each load, and reports
it next to each figure, so a reader can tell a slow server from a busy machine.
Linux only (``/proc``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core spent not idle since boot (user .. steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def own_cpu_s() -> float:
    """CPU seconds of this process and its descendants, with those already reaped."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # gone while we looked
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(v) for v in fields[11:15])  # utime .. cstime
    ours, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return sum(times.get(pid, 0) for pid in ours) / TICK


class CpuShare:
    """From construction on: the fraction of the machine (0..1) other work used."""

    def __init__(self) -> None:
        self.began, self.busy, self.ours = time.monotonic(), machine_busy_s(), own_cpu_s()

    def others(self) -> float:
        elapsed = time.monotonic() - self.began
        busy, ours = machine_busy_s() - self.busy, own_cpu_s() - self.ours
        return max(0.0, busy - ours) / (elapsed * (os.cpu_count() or 1))


def wait_for_quiet(threshold: float, max_wait_s: float, window_s: float = 3.0) -> float:
    """Wait until other work used under ``threshold`` of the machine over ``window_s``,
    at most ``max_wait_s``; other work's share over the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        share = CpuShare()
        time.sleep(window_s)
        others = share.others()
        if others < threshold or time.monotonic() > deadline:
            return others
