"""docs/profile.md's key table, written from the key table in profile/keys.py: pure but for main.

`python -m mipart.profile.keydoc docs/profile.md` rewrites what lies between the markers;
tests/unit/test_profile_keys.py fails when the page and the table differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mipart.profile.durations import format_ms
from mipart.profile.keys import KINDS, ROWS, Key

BEGIN = "<!-- key table: written by `python -m mipart.profile.keydoc docs/profile.md` from profile/keys.py -->"
END = "<!-- end of key table -->"


def _default(row: Key) -> str:
    if row.required:
        return "required"
    return "—" if row.default is None else f"`{row.default}`"


def _bounds(row: Key) -> str:
    if row.choices:
        return " ".join(f"`{choice}`" for choice in row.choices)
    shown = format_ms if row.kind == "duration" else str
    if row.low is None or row.high is None:
        return "" if row.low is None else f"at least {shown(row.low)}"
    return shown(row.low) if row.low == row.high else f"{shown(row.low)}..{shown(row.high)}"


def tables() -> str:
    """The keys, then the kinds of value they take: what goes between the markers."""
    lines = ["| key | type | default | bounds | what it is |", "|---|---|---|---|---|"]
    lines += [f"| `{r.path}` | {r.kind} | {_default(r)} | {_bounds(r)} | {r.doc} |" for r in ROWS]
    lines += ["", "| type | how it is written |", "|---|---|"]
    lines += [f"| {kind} | {how} |" for kind, how in KINDS.items()]
    return "\n".join(lines)


def with_tables(page: str) -> str:
    """The page with the tables between its markers rewritten; ValueError when a marker is missing."""
    head, begin, rest = page.partition(BEGIN + "\n")
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page lacks the markers {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n{tables()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mipart.profile.keydoc docs/profile.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        path.write_text(with_tables(path.read_text()))
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
