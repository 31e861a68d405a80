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


class ProfileError(UserError):
    """All problems of one profile; str() is one line per problem, each already located."""

    prefix = False

    def __init__(self, path: str, problems: list[Problem]):
        self.path = path
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        super().__init__("\n".join(p.format(path) for p in self.problems))
