"""Checks of YAML nodes that know nothing of mipart: structure and plain values.

Each check records a located Problem and returns None when it fails, so validation
goes on and one run shows every problem. A check never raises: any value YAML cannot
build (a 5,000-digit number, the date 2001-13-45, `!!int abc`) is a problem, not an error.

YAML 1.1 reads some unquoted words as other types (`3.10` -> 3.1, `010` -> 8, `yes` ->
true, `1:30` -> 90). Where mipart wants a string, a plain scalar that YAML would turn into
something that does not print back as written is refused with the quoted form to write;
where it wants a number, only plain decimal digits are taken.
"""

from __future__ import annotations

import difflib
import re

import yaml

from mipart.profile import durations
from mipart.profile.problems import Problem

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
DECIMAL = re.compile(r"-?(0|[1-9][0-9]{0,17})")
SHOWN = 60  # characters of a bad value quoted back in a message
_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_READ_AS = {INT: "a number", FLOAT: "a number", BOOL: "a boolean", NULL: "empty", _TAG + "timestamp": "a date"}

_constructor = yaml.constructor.SafeConstructor()


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == STR:
        return "a string"
    return _READ_AS.get(node.tag, f"a value tagged {shown(node.tag)}")


def cut(text) -> str:
    """A value for a message, cut short: a problem stays one readable line."""
    text = CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


def shown(text) -> str:
    """repr() of a value for a message, cut short."""
    text = str(text)
    return repr(text) if len(text) <= SHOWN else repr(text[:SHOWN]) + f"... ({len(text)} characters)"


def is_plain(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and not node.style  # libyaml says '', PyYAML None


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
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == NULL or not key_node.value:
                self.problem(key_node, f"{where} has a key that is not a name; use plain names as keys")
                continue
            key = key_node.value
            if key in items:
                self.problem(key_node, f"{where}.{cut(key)} is given twice; keep one")
                continue
            if allowed is not None and key not in allowed:
                self.problem(key_node, f"unknown key {where}.{cut(key)}; {self._suggest(key, allowed)}")
                continue
            items[key] = value_node
            self.key_nodes[id(value_node)] = key_node
        for key in required:
            if key not in items:
                self.problem(node, f"{where} is missing required key '{key}'; add it")
        return items

    @staticmethod
    def _suggest(key: str, allowed) -> str:
        close = difflib.get_close_matches(key[:SHOWN], allowed, n=1, cutoff=0.6)
        if close:
            return f"did you mean '{close[0]}'?"
        return "allowed keys are " + ", ".join(allowed)

    def text(self, node, where, want: str) -> str | None:
        """The scalar as written, for values read by a grammar of their own (modes, durations,
        addresses, ranges): YAML's idea of its type does not matter there."""
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{where} must be {want}, not {kind_of(node)}")
            return None
        if node.tag == NULL or node.value == "":
            self.problem(node, f"{where} is empty; give {want}")
            return None
        if not node.tag.startswith(_TAG):
            self.problem(node, f"{where} has a tag mipart does not read ({shown(node.tag)}); write a plain value")
            return None
        return node.value

    def _built(self, node, where, hint: str):
        """(ok, value) of YAML's own reading of a scalar; a value it cannot build is a problem."""
        try:
            return True, _constructor.construct_object(node)
        except Exception:  # noqa: BLE001 - yaml raises ValueError, OverflowError, ConstructorError...
            what = node.tag.rsplit(":", 1)[-1]
            self.problem(node, f"{where} {shown(node.value)} is not a valid {what} for YAML; {hint}")
            return False, None

    # -- plain values ------------------------------------------------------
    def integer(self, node, where, low: int | None = None, high: int | None = None) -> int | None:
        if self.text(node, where, "a whole number") is None:
            return None
        if node.tag == FLOAT:
            self.problem(node, f"{where} is {cut(node.value)}, not a whole number; write it without a fraction")
            return None
        if node.tag != INT:
            self.problem(node, f"{where} must be a whole number, not {kind_of(node)} {shown(node.value)}")
            return None
        if not DECIMAL.fullmatch(node.value):
            if sum(ch.isdigit() for ch in node.value) > 18:
                self.problem(node, f"{where} {shown(node.value)} is far too large; use a number from {low} to {high}")
                return None
            ok, value = self._built(node, where, "write a whole number in plain decimal digits")
            if ok:
                self.problem(
                    node,
                    f"{where} {shown(node.value)} would be read by YAML as {value}; write the number in plain decimal "
                    "digits",
                )
            return None
        value = int(node.value)
        if (low is not None and value < low) or (high is not None and value > high):
            self.problem(node, f"{where} is {value}; use a number from {low} to {high}")
            return None
        return value

    def string(self, node, where, want="a string") -> str | None:
        """A non-empty string without control characters, taken as written only when YAML reads it so."""
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{where} must be {want}, not {kind_of(node)}")
            return None
        if node.tag == NULL:
            self.problem(node, f"{where} is empty; give {want}")
            return None
        if node.tag != STR and not self._reads_back(node, where):
            return None
        text = node.value
        if not text:
            self.problem(node, f"{where} is empty; give {want}")
            return None
        if CONTROL.search(text):
            self.problem(node, f"{where} contains a control character (newline, tab, NUL...); remove it")
            return None
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.problem(node, f"{where} contains a lone surrogate escape, which is not text; remove it")
            return None
        return text

    def _reads_back(self, node, where) -> bool:
        """A plain number that prints back as written (512, 0.9) is the same text either way."""
        if not is_plain(node) or node.tag not in _READ_AS:
            self.problem(node, f"{where} is tagged {shown(node.tag)}; write a plain string, in quotes")
            return False
        ok, value = self._built(node, where, "write it in quotes if it is text")
        if not ok:
            return False
        if node.tag in (INT, FLOAT) and str(value) == node.value:
            return True
        read = "true" if value is True else "false" if value is False else str(value)
        written = cut(node.value)
        self.problem(
            node,
            f"{where} {written} would be read by YAML as {kind_of(node)} ({cut(read)}); write it in quotes: "
            f'"{written}"',
        )
        return False

    def enum(self, node, where, choices) -> str | None:
        value = self.text(node, where, "one of " + ", ".join(choices))
        if value is None:
            return None
        if value in choices:
            return value
        same = [c for c in choices if c.lower() == value.lower()]
        hint = f"did you mean '{same[0]}'?" if same else "use one of " + ", ".join(choices)
        self.problem(node, f"{where} is {shown(value)}; {hint}")
        return None

    def duration(self, node, where, bounds: durations.Bounds = durations.DEFAULT) -> float | None:
        """Seconds, from a whole number of milliseconds within `bounds` (so it renders exactly)."""
        raw = self.text(node, where, "a duration such as 2s or 500ms")
        if raw is None:
            return None
        millis, error = durations.parse_ms(raw, bounds)
        if error:
            self.problem(node, f"{where} {error}")
            return None
        return millis / 1000

    def patterned(self, node, where, pattern: re.Pattern, what: str) -> str | None:
        value = self.string(node, where, what)
        if value is None:
            return None
        if not pattern.fullmatch(value):
            self.problem(node, f"{where} {shown(value)} is not {what}")
            return None
        return value
