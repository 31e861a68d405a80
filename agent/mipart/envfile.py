"""The env-file format: what mipart writes for a container client and reads from `env_files:` (pure).

docker reads `--env-file` as one `KEY=VALUE` a line, the value verbatim after the first `=`,
skipping blank lines and lines starting with `#`; a line with no `=` takes the value from the
client's own environment. podman also strips spaces and tabs around the key, and unquotes a
value in double or single quotes, letting it run over lines. So mipart
accepts only what both read alike, and reads it the same way itself: `KEY=VALUE` lines, `#`
comments and blank lines; a value non-empty, without control characters, without whitespace
at either end, not starting with a quote. Sources: docs/security.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
CONTROL = re.compile("[\x00-\x1f\x7f]")
QUOTES = "\"'`"


class EnvFileError(ValueError):
    """A value or line that an env file cannot carry as it is."""


def value_problem(value: str) -> str:
    """Why VALUE cannot go into an env file ("" when it can), as the end of a problem line."""
    if not value:
        return "is empty; an env file cannot tell an empty value from a missing one"
    if CONTROL.search(value):
        return "contains a control character; an env file ends the value at a newline"
    if value != value.strip():
        return "starts or ends with whitespace, which the runtimes do not all keep; remove it"
    if value[0] in QUOTES:
        return f"starts with a quote ({value[0]}), which podman removes; remove it"
    return ""


def render(pairs: Iterable[tuple[str, str]]) -> str:
    """The env file for PAIRS; raises EnvFileError naming the first key it cannot carry."""
    lines = []
    for key, value in pairs:
        problem = "is not a variable name" if not KEY.fullmatch(key) else value_problem(value)
        if problem:
            raise EnvFileError(f"{key} {problem}")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def parse(text: str) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE pairs of an env file; raises EnvFileError with the line number of the first bad line."""
    pairs = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise EnvFileError(
                f"line {number} has no '='; write KEY=VALUE (docker would read a bare KEY from its own environment)"
            )
        if not KEY.fullmatch(key):
            raise EnvFileError(
                f"line {number} does not start with a variable name (letters, digits and _, not a digit first) and "
                "'='; nothing of it is shown, it may be a secret"
            )
        problem = value_problem(value)
        if problem:
            raise EnvFileError(f"line {number}: the value of {key} {problem}")
        pairs.append((key, value))
    return tuple(pairs)
