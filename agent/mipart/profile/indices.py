"""GPU index sets (`all | 3 | [0, 1] | "0-7,12"`) and the per-GPU overrides, checked on their nodes."""

from __future__ import annotations

import re
from collections.abc import Iterable

import yaml

from mipart.gpu import modes
from mipart.profile.keys import KEYS, MAX_INDEX, children, required
from mipart.profile.nodes import INT, NodeChecker, shown
from mipart.profile.schema import GpuOverride

RANGE_TEXT = re.compile(r"\s*[0-9]{1,4}\s*(-\s*[0-9]{1,4}\s*)?(,\s*[0-9]{1,4}\s*(-\s*[0-9]{1,4}\s*)?)*", re.ASCII)
ALL = "all"  # index_set's answer for 'all', kept apart from None (= invalid)


def format_indices(indices: Iterable[int]) -> str:
    """[0,1,2,5] -> '0-2,5': compact and the same syntax the profile accepts."""
    out: list[str] = []
    ordered = sorted(indices)
    start = prev = None
    for i in ordered + [None]:
        if start is not None and (i is None or i != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(out)


class IndexChecker(NodeChecker):
    """Index sets of physical or logical GPUs, and the overrides that pick GPUs by them."""

    def index_set(self, node, where, noun: str, high: int = MAX_INDEX) -> tuple[int, ...] | None:
        """ALL for 'all', None when the value was bad (and reported)."""
        want = f'all, a list like [0, 1], or a range like "0-7" of {noun} indices'
        hint = "use " + want
        if isinstance(node, yaml.SequenceNode):
            if len(node.value) > high + 1:
                self.problem(
                    node,
                    f"{where} lists {len(node.value)} indices, more than the {high + 1} {noun}s there can be; list "
                    "each once",
                )
                return None
            values = [self.integer(item, f"{where}[{i}]", 0, high) for i, item in enumerate(node.value)]
            if any(v is None for v in values):
                return None
        elif isinstance(node, yaml.ScalarNode) and node.tag == INT:
            value = self.integer(node, where, 0, high)
            if value is None:
                return None
            values = [value]
        else:
            raw = self.text(node, where, want)
            if raw is None:
                return None
            if raw == "all":
                return ALL
            if not RANGE_TEXT.fullmatch(raw):
                self.problem(node, f"{where} is {shown(raw)}; {hint}")
                return None
            values = self._expand_ranges(node, where, raw, noun, high)
            if values is None:
                return None
        if not values:
            self.problem(node, f"{where} is empty; {hint}")
            return None
        seen: set[int] = set()
        duplicates = sorted({v for v in values if v in seen or seen.add(v)})
        if duplicates:
            self.problem(node, f"{where} lists {format_indices(duplicates)} more than once; list each index once")
            return None
        return tuple(sorted(values))

    def _expand_ranges(self, node, where, text: str, noun: str, high: int) -> list[int] | None:
        bounds = []
        for part in text.replace(" ", "").split(","):
            low, _, top = part.partition("-")
            start, end = int(low), int(top or low)
            if end < start:
                self.problem(node, f'{where} range {part!r} runs backwards; write it low-high, e.g. "{end}-{start}"')
                return None
            if end > high:
                self.problem(node, f"{where} range {part!r} goes past {high}; use real {noun} indices (0-{high})")
                return None
            bounds.append((start, end))
        if sum(end - start + 1 for start, end in bounds) > high + 1:
            self.problem(node, f"{where} names more than the {high + 1} {noun}s there can be; list each index once")
            return None
        return [i for start, end in bounds for i in range(start, end + 1)]

    # -- cross-field rules that need the node ------------------------------
    def compute_memory_pair(self, node, compute: str, memory: str, where: str) -> bool:
        if modes.compatible(compute, memory):
            return True
        fits = ", ".join(modes.memory_modes_for(compute)) or "none"
        self.problem(
            node,
            f"{where} {compute} cannot run under memory mode {memory} (the driver rejects it); {compute} needs {fits}",
        )
        return False

    def overrides(self, node, memory: str | None, select: tuple[int, ...] | None) -> tuple[GpuOverride, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, "gpus.overrides must be a list, e.g. [{select: [6, 7], compute: CPX}]")
            return ()
        if len(node.value) > MAX_INDEX + 1:
            self.problem(
                node,
                f"gpus.overrides has {len(node.value)} entries, more than there can be GPUs; give each GPU one "
                "override",
            )
            return ()
        selected = set(select) if select is not None else None
        result: list[GpuOverride] = []
        claimed: dict[int, int] = {}
        for i, item in enumerate(node.value):
            where = f"gpus.overrides[{i}]"
            items = self.mapping(item, where, children("gpus.overrides[]"), required=required("gpus.overrides[]"))
            if not items or "select" not in items or "compute" not in items:
                continue
            chosen = self.index_set(items["select"], f"{where}.select", "physical GPU")
            compute = self.enum(items["compute"], f"{where}.compute", KEYS["gpus.overrides[].compute"].choices)
            if chosen == ALL:
                self.problem(
                    items["select"], f"{where}.select must name GPUs, not all; set gpus.compute for every GPU instead"
                )
                continue
            if chosen is None or compute is None:
                continue
            if memory and not modes.compatible(compute, memory):
                fits = ", ".join(modes.memory_modes_for(compute))
                self.problem(
                    items["compute"],
                    f"{where}.compute {compute} conflicts with the hive-wide gpus.memory {memory}; {compute} needs "
                    f"{fits}, and memory mode is the same for every GPU",
                )
            outside = [g for g in chosen if selected is not None and g not in selected]
            if outside:
                self.problem(
                    items["select"],
                    f"{where}.select {format_indices(outside)} is not in gpus.select; override only selected GPUs",
                )
            overlap = [g for g in chosen if g in claimed]
            if overlap:
                self.problem(
                    items["select"],
                    f"{where}.select {format_indices(overlap)} is already overridden by "
                    f"gpus.overrides[{claimed[overlap[0]]}]; give each GPU one override",
                )
            for g in chosen:
                claimed.setdefault(g, i)
            result.append(GpuOverride(select=chosen, compute=compute))
        return tuple(result)
