"""``doctor``'s checks of the machine against the config: each role's memory (weights
and KV cache, from GGUF metadata, as the daemon judges them at start) and the workers'
threads against the cores."""

from __future__ import annotations

from lilbee_workers import memory
from lilbee_workers.cli.findings import Finding
from lilbee_workers.config import SupervisorConfig

EVERYTHING = 2**62  # an amount of memory any config fits in: the figures without a verdict


def check_memory(config: SupervisorConfig) -> list[Finding]:
    """Per role with a readable model: its KV cache (``parallel`` x ``n_ctx``) and
    weights; an error for the role that makes ``serve`` refuse the config."""
    try:
        memory.check_fits(config)
        refused = None
    except memory.DoesNotFit as exc:
        refused = exc
    findings = []
    for need in memory.check_fits(config, available=EVERYTHING):
        if refused is not None and need.role == refused.role:
            fix = "lower parallel or n_ctx (the KV cache grows with both), or free memory"
            findings.append(Finding(f"{need.role}.memory", "error", str(refused), fix))
        else:
            findings.append(Finding(f"{need.role}.memory", "ok", need.describe()))
    return findings


def check_threads(config: SupervisorConfig) -> list[Finding]:
    """The workers' threads at most the cores (with Ray: nothing to judge here)."""
    load = memory.thread_load(config)
    if load is None:
        return []
    if not load.over:
        return [Finding("threads", "ok", load.describe())]
    return [
        Finding(
            "threads",
            "warn",
            f"{load.describe()}: llama.cpp's threads spin against each other and every "
            "worker slows down (two chat replicas x 2 threads on 2 cores: 16-33 tok/s; "
            "x 1 thread: 90-95)",
            f"{memory.THREADS_FIX} {load.cores}",
        )
    ]
