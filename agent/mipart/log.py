"""structlog to stderr as key=value lines, which journald keeps as they are.

Under systemd (stderr is the journal stream) each line starts with its syslog priority,
`<3>` for an error, which journald strips and stores as PRIORITY (so `journalctl -p
warning` works), and carries no timestamp of its own: journald stamps every line.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # structlog is imported when a logger is first asked for
    from structlog.types import EventDict, Processor, WrappedLogger

PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


class Log(Protocol):
    """What mipart asks of a logger: an event name and its fields, at a level. structlog's
    bound logger is one; a test may pass its own recorder."""

    def info(self, event: str, **fields: Any) -> object: ...

    def warning(self, event: str, **fields: Any) -> object: ...

    def error(self, event: str, **fields: Any) -> object: ...


def to_journal() -> bool:
    """systemd sets JOURNAL_STREAM=DEV:INODE when stderr goes to journald."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def get_logger(name: str) -> Log:
    import structlog

    if not structlog.is_configured():
        render = structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)
        if to_journal():

            def with_priority(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
                return f"<{PRIORITIES.get(event_dict.get('level', method), 6)}>" + render(logger, method, event_dict)

            processors: list[Processor] = [structlog.processors.add_log_level, with_priority]
        else:
            processors = [
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                render,
            ]
        structlog.configure(
            processors=processors,
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
    found: Log = structlog.get_logger(name)  # structlog types its loggers as Any
    return found
