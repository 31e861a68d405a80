"""structlog to stderr as key=value lines, which journald keeps as they are."""

from __future__ import annotations

import sys


def get_logger(name: str):
    import structlog

    if not structlog.is_configured():
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], drop_missing=True),
            ],
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
    return structlog.get_logger(name)
