"""Reading a host's partition rules through its GPU backend, before any plan is made.

The pair table comes from the kernel (a preview write per compute mode: gpu/kernel_table),
so a reader that asks every second, the status API, keeps it for a while; a table only
changes with the driver, and the GPUs are seen again after a reload.
"""

from __future__ import annotations

import threading
import time

from mipart.gpu.partitioning import Partitioning
from mipart.partition.plan import HostRules, RuleGroup, rule_groups
from mipart.values import HostState

KEEP_SECONDS = 300.0
# (backend root, each GPU's bdf and device id) -> (when read, the groups)
_kept: dict[tuple[str, tuple[tuple[str, int], ...]], tuple[float, tuple[RuleGroup, ...]]] = {}
_lock = threading.Lock()


def read_rules(backend: Partitioning, state: HostState, memory: str | None = None) -> HostRules:
    """The host's rules; `memory`: the mode a reload would go to (None: no reload asked)."""
    tables = {g.index: backend.pair_table(g) for g in state.physical}
    return HostRules(
        pairs={index: table.pairs for index, table in tables.items()},
        partitions={g.index: {c: backend.partitions(g, c) for c in tables[g.index].pairs} for g in state.physical},
        load_mode=backend.load_mode() if memory else None,
        sources={index: table.source for index, table in tables.items()},
        drm_conflicts=backend.drm_conflicts(),
    )


def kept_rule_groups(backend: Partitioning, state: HostState) -> tuple[RuleGroup, ...]:
    """The host's pair tables, read at most once per KEEP_SECONDS for the same GPUs."""
    key = (str(backend.root), tuple((g.bdf, g.device_id) for g in state.physical))
    now = time.monotonic()
    with _lock:
        found = _kept.get(key)
        if found and now - found[0] < KEEP_SECONDS:
            return found[1]
        groups = rule_groups(read_rules(backend, state))
        _kept.clear()
        _kept[key] = (now, groups)
        return groups
