"""One exception type for mistakes a user can fix: the CLI prints it as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem the operator can correct; shown as a single line, never a traceback."""

    exit_code = 1
    prefix = True  # print as 'mipart: ...'; False when the message carries its own location
