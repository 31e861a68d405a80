"""What a host must do to match the profile's `gpus:` section: pure, no I/O.

The plan holds the fewest writes: one memory request per XGMI hive that needs it (the driver
applies it hive-wide), one driver reload at most, and compute writes only where the
mode after that reload (the driver resets it from user_partt_mode) is not the wanted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mipart.errors import UserError
from mipart.gpu.modes import AUTO_COMPUTE_FOR_MEMORY, COMPUTE_MODES, logical_number, render_minor
from mipart.gpu.pair_tables import FROM_KERNEL
from mipart.gpu.partitioning import COMPUTE_ATTR, MEMORY_ATTR
from mipart.partition.pending import describe
from mipart.partition.traps import hidden_partitions
from mipart.profile.fields import COMPUTE_CHOICES
from mipart.profile.indices import format_indices
from mipart.profile.schema import GpuSpec
from mipart.values import HostState, LoadMode, PendingMemory, PhysicalGpu


class PlanError(UserError):
    """The profile asks for something this host cannot do."""


@dataclass(frozen=True)
class HostRules:
    """What the host's driver allows and does, read from its GPU backend before planning."""

    pairs: dict[int, dict[str, tuple[str, ...]]]  # physical GPU -> compute mode -> memory modes it runs under
    partitions: dict[int, dict[str, int]]  # physical GPU -> compute mode -> logical GPUs it shows
    load_mode: LoadMode | None  # amdgpu.user_partt_mode the next load reads; None: no reload asked
    sources: dict[int, str] = field(default_factory=dict)  # physical GPU -> where its pairs came from (gpu.pair_tables)
    drm_conflicts: tuple[str, ...] = ()  # other DRM drivers loaded (a BMC's `ast`)


@dataclass(frozen=True)
class RuleGroup:
    """GPUs that share one pair table, as `plan`, `export` and /v1/status show it."""

    gpus: tuple[int, ...]
    source: str
    pairs: dict[str, tuple[str, ...]]

    def line(self) -> str:
        table = "; ".join(f"{c}: {', '.join(m)}" for c, m in self.pairs.items()) or "no compute modes"
        return f"partition rules for GPUs {format_indices(self.gpus)} ({self.source}): {table}"


def rule_groups(rules: HostRules) -> tuple[RuleGroup, ...]:
    groups: dict[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], list[int]] = {}
    for index, pairs in sorted(rules.pairs.items()):
        key = (rules.sources.get(index, FROM_KERNEL), tuple(pairs.items()))
        groups.setdefault(key, []).append(index)
    return tuple(RuleGroup(tuple(gpus), source, dict(pairs)) for (source, pairs), gpus in groups.items())


@dataclass(frozen=True)
class Write:
    gpu: int
    attribute: str
    value: str
    after_reload: bool


@dataclass(frozen=True)
class GpuChange:
    index: int
    bdf: str
    compute_now: str
    compute_want: str | None  # None: not managed by the profile
    compute_final: str
    memory_now: str
    memory_want: str | None

    @property
    def matches(self) -> bool:
        compute_ok = self.compute_want is None or self.compute_now == self.compute_want
        memory_ok = self.memory_want is None or self.memory_now == self.memory_want
        return compute_ok and memory_ok


@dataclass(frozen=True)
class LogicalPrediction:
    index: int
    physical: int
    partition: int
    render_minor: int


@dataclass(frozen=True)
class PartitionPlan:
    gpus: tuple[GpuChange, ...]
    writes: tuple[Write, ...]
    reload: bool
    logical: tuple[LogicalPrediction, ...] = field(default=())
    rules: tuple[RuleGroup, ...] = ()
    warnings: tuple[str, ...] = ()  # known traps on this host (partition.traps)
    pending: PendingMemory | None = None  # a memory request mipart placed that no reload applied yet

    @property
    def noop(self) -> bool:
        return not self.writes and not self.reload

    def compute_of_logical(self) -> dict[int, str]:
        """Logical GPU -> the compute mode of its physical GPU once the plan is applied."""
        final = {g.index: g.compute_final for g in self.gpus}
        return {lg.index: final[lg.physical] for lg in self.logical}

    def to_json(self) -> dict[str, Any]:
        return {
            "reload": self.reload,
            "writes": [asdict(w) for w in self.writes],
            "gpus": [
                {
                    **asdict(g),
                    "writes": [asdict(w) for w in self.writes if w.gpu == g.index],
                }
                for g in self.gpus
            ],
            "logical_gpus": [asdict(lg) for lg in self.logical],
            "rules": [asdict(group) for group in self.rules],
            "warnings": list(self.warnings),
            "pending_memory": asdict(self.pending) if self.pending else None,
        }


def plan_partitions(spec: GpuSpec, state: HostState, rules: HostRules) -> PartitionPlan:
    """Raises PlanError (one line) when the host cannot reach what the profile asks."""
    gpus = state.physical
    if not gpus:
        raise PlanError(
            "no AMD Instinct GPU with partition support found (is amdgpu loaded? is MIPART_SYSFS_ROOT right?)"
        )
    _check_selection(spec, gpus)
    if spec.memory:
        _check_memory(spec.memory, gpus)
    reload = spec.memory is not None and any(g.memory != spec.memory for g in gpus)
    memory_final = spec.memory or gpus[0].memory
    writes: list[Write] = []
    if reload:
        writes += [
            Write(gpu.index, MEMORY_ATTR, memory_final, after_reload=False)
            for gpu in _hives_to_switch(gpus, memory_final)
        ]
    changes = []
    for gpu in gpus:
        want = spec.compute_for(gpu.index)
        start = _mode_before_writes(gpu, rules, reload, memory_final)
        if want is not None:
            _check_compute(gpu, want, memory_final, rules.pairs[gpu.index], rules.sources.get(gpu.index, FROM_KERNEL))
            if start != want:
                writes.append(Write(gpu.index, COMPUTE_ATTR, want, after_reload=reload))
        changes.append(
            GpuChange(
                index=gpu.index,
                bdf=gpu.bdf,
                compute_now=gpu.compute,
                compute_want=want,
                compute_final=want or start,
                memory_now=gpu.memory,
                memory_want=spec.memory,
            )
        )
    logical = _predict_logical(changes, rules.partitions)
    return PartitionPlan(
        gpus=tuple(changes),
        writes=tuple(writes),
        reload=reload,
        logical=logical,
        rules=rule_groups(rules),
        warnings=tuple(hidden_partitions(state, rules.partitions, rules.drm_conflicts)),
    )


def _hives_to_switch(gpus: tuple[PhysicalGpu, ...], memory: str) -> list[PhysicalGpu]:
    """Per XGMI hive not yet in `memory`, the GPU to write its request on: the kernel keeps one
    request per hive (hive->requested_nps_mode; KFD's hive_id, 0: a GPU in no hive, its own),
    and skips a write of the mode a GPU is in."""
    hives: dict[tuple[int, int], list[PhysicalGpu]] = {}
    for gpu in gpus:
        hives.setdefault((gpu.hive_id, gpu.index if gpu.hive_id == 0 else -1), []).append(gpu)
    return [
        next(g for g in members if g.memory != memory)
        for members in hives.values()
        if any(g.memory != memory for g in members)
    ]


def _check_selection(spec: GpuSpec, gpus: tuple[PhysicalGpu, ...]) -> None:
    present = {g.index for g in gpus}
    wanted = set(spec.select or ()) | {i for o in spec.overrides for i in o.select}
    missing = sorted(wanted - present)
    if missing:
        raise PlanError(
            f"gpus.select/overrides name GPU {format_indices(missing)}, but this host has GPUs "
            f"{format_indices(present)}; "
            "select only GPUs that exist"
        )


def _check_memory(memory: str, gpus: tuple[PhysicalGpu, ...]) -> None:
    for gpu in gpus:
        if memory not in gpu.memory_available:
            offered = ", ".join(gpu.memory_available) or "none"
            raise PlanError(
                f"GPU {gpu.index} ({gpu.bdf}) does not offer memory mode {memory} (available: {offered}); "
                "choose one of those in gpus.memory"
            )


def _check_compute(gpu: PhysicalGpu, want: str, memory: str, pairs: dict[str, tuple[str, ...]], source: str) -> None:
    """Against the host's own table, before anything is written (a reload costs minutes)."""
    where = "the kernel's table" if source == FROM_KERNEL else f"the {source}"
    if want not in pairs:
        offered = ", ".join(pairs) or "none"
        raise PlanError(
            f"GPU {gpu.index} ({gpu.bdf}) does not offer compute mode {want} (available: {offered}, per {where}); "
            "choose one of those"
        )
    if memory not in pairs[want]:
        fits = " or ".join(pairs[want])
        raise PlanError(
            f"GPU {gpu.index} ({gpu.bdf}): compute {want} cannot run under memory {memory}; set gpus.memory to {fits}: "
            f"{want} takes {fits} on this host (per {where}); nothing was written or reloaded"
        )


def _mode_before_writes(gpu: PhysicalGpu, rules: HostRules, reload: bool, memory: str) -> str:
    """A GPU's compute mode when the compute writes come: after a reload, the one the driver sets
    from amdgpu.user_partt_mode (AUTO: by the memory mode); refused before any write when that
    mode does not run under `memory`: GPU init fails and the GPUs do not come back."""
    if not reload:
        return gpu.compute
    load = rules.load_mode
    if load is None:
        raise ValueError("a reload is planned, but the host's rules were read without gpus.memory")
    if load.mode == "AUTO":
        return AUTO_COMPUTE_FOR_MEMORY[memory]
    pairs = rules.pairs[gpu.index]
    if memory not in pairs.get(load.mode, ()):
        where = f", set in {load.where}," if load.where else ""
        why = (
            f"{load.mode} does not run under {memory} on GPU {gpu.index} ({gpu.bdf})"
            if load.mode in COMPUTE_MODES
            else "is no mode the driver knows (-2 AUTO, 0 SPX, 1 DPX, 2 TPX, 3 QPX, 4 CPX)"
        )
        fits = [m for m, modes in pairs.items() if memory in modes]
        raise PlanError(
            f"a driver reload into {memory} would leave the GPUs out: amdgpu.user_partt_mode={load.mode}{where} "
            f"{why}, so GPU init fails (gfx_v9_4_3_cp_resume) and the GPUs do not come back; set it to one that runs "
            f"under {memory} ({', '.join(fits) or 'none'}) or to -2 (AUTO), or remove it; "
            "nothing was written or reloaded"
        )
    return load.mode


def _predict_logical(changes: list[GpuChange], partitions: dict[int, dict[str, int]]) -> tuple[LogicalPrediction, ...]:
    """mipart's logical GPUs: physical GPUs in PCI order, partitions within each, numbered by slot
    (gpu.modes.logical_number); render minors as amdgpu gives them (docs/partitioning.md)."""
    return tuple(
        LogicalPrediction(number, gpu.index, part, render_minor(number))
        for gpu in changes
        for part in range(partitions[gpu.index][gpu.compute_final])
        for number in (logical_number(gpu.index, part),)
    )


def assert_lines(plan: PartitionPlan) -> list[str]:
    """One line per GPU that differs from the profile; empty when the host matches."""
    lines = []
    for gpu in plan.gpus:
        if gpu.matches:
            continue
        parts = []
        if gpu.compute_want is not None and gpu.compute_now != gpu.compute_want:
            parts.append(f"compute {gpu.compute_now}, want {gpu.compute_want}")
        if gpu.memory_want is not None and gpu.memory_now != gpu.memory_want:
            parts.append(f"memory {gpu.memory_now}, want {gpu.memory_want}")
        lines.append(f"GPU {gpu.index} ({gpu.bdf}): " + "; ".join(parts))
    return lines


def export_gpus_yaml(state: HostState, rules: tuple[RuleGroup, ...] = ()) -> str:
    """The current layout as a profile that `validate` accepts and `assert` passes; the host's
    pair tables ride along as comments."""
    gpus = state.physical
    counts: dict[str, int] = {}
    for gpu in gpus:
        counts[gpu.compute] = counts.get(gpu.compute, 0) + 1
    common = max(counts, key=lambda mode: (counts[mode], -COMPUTE_CHOICES.index(mode)))
    lines = [f"# {group.line()}" for group in rules]
    lines += ["version: 1", "gpus:", f"  compute: {common}", f"  memory: {gpus[0].memory}", "  select: all"]
    others: dict[str, list[int]] = {}
    for gpu in gpus:
        if gpu.compute != common:
            others.setdefault(gpu.compute, []).append(gpu.index)
    if others:
        lines.append("  overrides:")
        for mode, indices in others.items():
            lines.append(f"    - {{select: [{', '.join(map(str, indices))}], compute: {mode}}}")
    else:
        lines.append("  overrides: []")
    return "\n".join(lines) + "\n"


def format_plan(plan: PartitionPlan) -> str:
    """Human table: current -> desired per GPU, the writes, the reload, the result."""
    rows = [("GPU", "BDF", "COMPUTE", "MEMORY", "WRITES")]
    for gpu in plan.gpus:
        compute = (
            gpu.compute_now if gpu.compute_final == gpu.compute_now else f"{gpu.compute_now} -> {gpu.compute_final}"
        )
        if gpu.compute_want is None:
            compute += " (unmanaged)"
        memory_want = gpu.memory_want or gpu.memory_now
        memory = gpu.memory_now if memory_want == gpu.memory_now else f"{gpu.memory_now} -> {memory_want}"
        writes = [
            f"{'after reload: ' if w.after_reload else ''}{w.attribute}={w.value}"
            for w in plan.writes
            if w.gpu == gpu.index
        ]
        rows.append((str(gpu.index), gpu.bdf, compute, memory, ", ".join(writes) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = [group.line() for group in plan.rules]
    out += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    if plan.noop:
        out.append("nothing to do: the host already matches the profile (0 writes, 0 reloads)")
    else:
        reload = "1 driver reload (memory mode is applied hive-wide at reload)" if plan.reload else "no driver reload"
        out.append(f"{len(plan.writes)} writes, {reload}")
    count = len(plan.logical)
    numbers = format_indices(lg.index for lg in plan.logical)
    out.append(f"result: {count} logical GPUs ({numbers})" if count else "result: no logical GPUs")
    out += [f"warning: {w}" for w in plan.warnings]
    if plan.pending:
        out.append("pending: " + describe(plan.pending, {g.bdf: g.index for g in plan.gpus}))
    return "\n".join(out)
