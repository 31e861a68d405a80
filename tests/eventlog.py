"""A stand-in for mipart's logger that keeps every event it is given, for tests to read back."""

from __future__ import annotations


class Log:
    """`log.warning("files.missing", specs="2")` appends ("warning", "files.missing", {"specs": "2"})."""

    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((level, event, fields))
