"""A problem found in a profile, located at its line and column, and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass

from mipart.errors import UserError


@dataclass(frozen=True)
class Problem:
    line: int
    column: int
    message: str

    def format(self, path: str) -> str:
        if self.line == 0:  # about the file as a whole: there is no line to point at
            return f"{path}: {self.message}"
        return f"{path}:{self.line}:{self.column}: {self.message}"


MAX_SHOWN = 100  # a file of a million bad lines is answered in a page, not a million lines


class ProfileError(UserError):
    """All problems of one profile, the first MAX_SHOWN of them; str() is one located line each."""

    prefix = False

    def __init__(self, path: str, problems: list[Problem]):
        self.path = path
        ordered = sorted(problems, key=lambda p: (p.line, p.column))
        if len(ordered) > MAX_SHOWN:
            first_left = ordered[MAX_SHOWN]
            more = Problem(
                first_left.line,
                first_left.column,
                f"and {len(ordered) - MAX_SHOWN} more problems from here on; fix the ones above first",
            )
            ordered = ordered[:MAX_SHOWN] + [more]
        self.problems = ordered
        super().__init__("\n".join(p.format(path) for p in self.problems))
