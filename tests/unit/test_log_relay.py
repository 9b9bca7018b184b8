"""A worker's log record at a non-standard level must not break the health monitor."""

from __future__ import annotations

import io
import logging

import pytest
import structlog

from lilbee_workers.parent.monitor import standard_level


def test_standard_level_maps_custom_levels_down() -> None:
    assert standard_level(25) == logging.INFO
    assert standard_level(5) == logging.DEBUG
    assert standard_level(45) == logging.ERROR
    assert standard_level(99) == logging.CRITICAL
    assert standard_level(logging.WARNING) == logging.WARNING


def test_structlog_rejects_level_25_but_accepts_its_standard_level() -> None:
    """Why the mapping exists: structlog's filtering logger raises for unknown levels."""
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        processors=[structlog.processors.KeyValueRenderer()],
    )
    with pytest.raises(KeyError):
        logger.log(25, "custom")
    logger.log(standard_level(25), "mapped")
    assert "mapped" in out.getvalue()
