"""A stand-in program (a `docker` client) that records the environment execve(2) gave it
(/proc/$$/environ: not what a shell adds, such as PWD) and its argv, one call after another."""

from __future__ import annotations

SCRIPT = """#!/bin/sh
{{ echo "who={who}"; for a in "$@"; do echo "arg=$a"; done; /usr/bin/tr '\\0' '\\n' < /proc/$$/environ | /usr/bin/sed 's/^/env=/'; echo end; }} >> {log}
{then}
"""


def script(who: str, log: str, then: str = "exit 0") -> str:
    """The recorder's text: WHO names it in the log; THEN runs after recording."""
    return SCRIPT.format(who=who, log=log, then=then)


def calls(text: str) -> list[dict]:
    """Each recorded call: {"who", "argv", "env"}."""
    found, call = [], None
    for line in text.splitlines():
        kind, _, value = line.partition("=")
        if kind == "who":
            call = {"who": value, "argv": [], "env": {}}
        elif kind == "arg":
            call["argv"].append(value)
        elif kind == "env":
            key, _, val = value.partition("=")
            call["env"][key] = val
        elif line == "end":
            found.append(call)
    return found
