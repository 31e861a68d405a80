"""Checks of YAML nodes that know nothing of mipart: structure and plain values.

Each check records a located Problem and returns None when it fails, so validation
goes on and one run shows every problem.
"""

from __future__ import annotations

import difflib
import re

import yaml

from mipart.profile.problems import Problem

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_constructor = yaml.constructor.SafeConstructor()


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    return {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean", "null": "empty"}.get(tag, f"a {tag}")


class NodeChecker:
    """Collects problems; each method returns the checked value or None when it failed."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        self.key_nodes: dict[int, yaml.Node] = {}

    def problem(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(mark.line + 1, mark.column + 1, message))

    # -- structure ---------------------------------------------------------
    def mapping(self, node, where, allowed, required=()) -> dict[str, yaml.Node] | None:
        """Keys to value nodes; flags duplicates and unknown keys with a suggestion."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{where} must be a mapping (key: value lines), not {kind_of(node)}")
            return None
        items: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":null"):
                self.problem(key_node, f"{where} has a key that is not a name; use plain names as keys")
                continue
            key = str(key_node.value)
            if key in items:
                self.problem(key_node, f"{where}.{key} is given twice; keep one")
                continue
            if allowed is not None and key not in allowed:
                self.problem(key_node, f"unknown key {where}.{key}; {self._suggest(key, allowed)}")
                continue
            items[key] = value_node
            self.key_nodes[id(value_node)] = key_node
        for key in required:
            if key not in items:
                self.problem(node, f"{where} is missing required key '{key}'; add it")
        return items

    @staticmethod
    def _suggest(key: str, allowed) -> str:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return f"did you mean '{close[0]}'?"
        return "allowed keys are " + ", ".join(allowed)

    def scalar(self, node, where, want: str):
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{where} must be {want}, not {kind_of(node)}")
            return None
        try:
            return _constructor.construct_object(node)
        except yaml.YAMLError:
            self.problem(node, f"{where} has a tag mipart does not read ({node.tag}); write a plain value")
            return None

    # -- plain values ------------------------------------------------------
    def integer(self, node, where, low: int | None = None, high: int | None = None) -> int | None:
        value = self.scalar(node, where, "a whole number")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(node, f"{where} must be a whole number, not {kind_of(node)} {node.value!r}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.problem(node, f"{where} is {value}; use a number from {low} to {high}")
            return None
        return value

    def string(self, node, where, want="a string") -> str | None:
        value = self.scalar(node, where, want)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.problem(node, f"{where} must be {want}, not {kind_of(node)}")
            return None
        text = str(value)
        if CONTROL.search(text):
            self.problem(node, f"{where} contains a control character (newline, tab, NUL...); remove it")
            return None
        return text

    def enum(self, node, where, choices) -> str | None:
        value = self.string(node, where, "one of " + ", ".join(choices))
        if value is None:
            return None
        if value in choices:
            return value
        same = [c for c in choices if c.lower() == value.lower()]
        hint = f"did you mean '{same[0]}'?" if same else "use one of " + ", ".join(choices)
        self.problem(node, f"{where} is {value!r}; {hint}")
        return None

    def duration(self, node, where) -> float | None:
        raw = self.scalar(node, where, "a duration such as 2s or 500ms")
        if raw is None:
            return None
        match = DURATION.fullmatch(str(raw)) if isinstance(raw, str) else None
        if not match:
            self.problem(node, f"{where} is {node.value!r}; write a duration with a unit, e.g. 2s, 500ms, 5m")
            return None
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
        if seconds <= 0:
            self.problem(node, f"{where} must be longer than zero; e.g. 2s")
            return None
        return seconds

    def patterned(self, node, where, pattern: re.Pattern, what: str) -> str | None:
        value = self.string(node, where, what)
        if value is None:
            return None
        if not pattern.fullmatch(value):
            self.problem(node, f"{where} {value!r} is not {what}")
            return None
        return value
