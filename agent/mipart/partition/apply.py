"""Carry out a partition plan on a host, through its GPU backend: writes, at most one
reload, verify.

Order is AMD's own: memory request, one driver reload, compute modes, read back.
Every step re-reads the host, so a rerun after any crash finishes the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mipart.errors import UserError
from mipart.gpu.backend import GpuBackend
from mipart.values import HostState
from mipart.partition.clients import SystemdClients, describe_holders
from mipart.partition.plan import HostRules, PartitionPlan, PlanError, Write, assert_lines, plan_partitions
from mipart.profile.schema import GpuSpec

USERS_GONE_TIMEOUT = 10.0


@dataclass
class ApplyResult:
    writes: int = 0
    reloads: int = 0
    logical_gpus: int = 0
    stopped: list[str] = field(default_factory=list)
    not_restarted: list[str] = field(default_factory=list)


class GpuBusyError(UserError):
    pass


def plan_host(spec: GpuSpec, backend: GpuBackend) -> tuple[HostState, PartitionPlan]:
    state = backend.discover()
    return state, plan_partitions(spec, state, read_rules(spec, backend, state))


def read_rules(spec: GpuSpec, backend: GpuBackend, state: HostState) -> HostRules:
    pairs = {g.index: backend.pair_table(g) for g in state.physical}
    return HostRules(
        pairs=pairs,
        partitions={g.index: {c: backend.partitions(g, c) for c in pairs[g.index]} for g in state.physical},
        compute_after_reload=backend.compute_after_reload(spec.memory) if spec.memory else None,
    )


def apply(spec: GpuSpec, backend: GpuBackend, log) -> ApplyResult:
    state, plan = plan_host(spec, backend)
    result = ApplyResult(logical_gpus=len(state.logical))
    if plan.noop:
        log.info("partition.unchanged", gpus=len(state.physical), logical_gpus=len(state.logical))
        return result
    clients = SystemdClients(spec.client_services)
    result.stopped = clients.stop_active()
    for unit in result.stopped:
        log.info("partition.client_stopped", unit=unit)
    try:
        _refuse_while_busy(backend, state, plan, wait=bool(result.stopped))
        _write_all(backend, state, [w for w in plan.writes if not w.after_reload], result, log)
        if plan.reload:
            log.info("partition.reload", command=backend.reload_command())
            backend.reload(lambda: _gpus_back(backend, len(state.physical)))
            result.reloads += 1
            state, plan = plan_host(spec, backend)
            _write_all(backend, state, list(plan.writes), result, log)
        final_state, final_plan = plan_host(spec, backend)
        diff = assert_lines(final_plan)
        if diff:
            raise PlanError(f"read-back does not match the profile after apply: {diff[0]}; rerun `mipart partition apply`")
        result.logical_gpus = len(final_state.logical)
    finally:
        result.not_restarted = clients.start(result.stopped)
        for unit in result.stopped:
            log.info("partition.client_started", unit=unit, ok=unit not in result.not_restarted)
    return result


def _refuse_while_busy(backend: GpuBackend, state: HostState, plan: PartitionPlan, wait: bool) -> None:
    """A reload needs every GPU free; a compute write needs its own GPU free (else EBUSY).

    With `wait`, stopped client units get a moment to release /dev/kfd.
    """
    touched = {g.index for g in state.physical} if plan.reload else {w.gpu for w in plan.writes}
    deadline = time.monotonic() + (USERS_GONE_TIMEOUT if wait else 0)
    while True:
        users = [u for u in backend.gpu_users(state) if touched & set(u.physical_indices)]
        if not users or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if users:
        holders = "; ".join(h.describe() for h in describe_holders(users))
        raise GpuBusyError(
            f"GPUs in use: {holders}; nothing was changed: stop these processes, "
            "or list their units in gpus.client_services, then rerun `mipart partition apply`"
        )


def _write_all(backend: GpuBackend, state: HostState, writes: list[Write], result: ApplyResult, log) -> None:
    by_index = {g.index: g for g in state.physical}
    for write in writes:
        gpu = by_index[write.gpu]
        try:
            backend.write_attribute(gpu, write.attribute, write.value)
        except OSError as exc:
            raise UserError(backend.describe_write_error(exc, gpu, write.attribute, write.value))
        result.writes += 1
        log.info("partition.write", gpu=gpu.index, bdf=gpu.bdf, attribute=write.attribute, value=write.value)


def _gpus_back(backend: GpuBackend, expected: int) -> bool:
    try:
        return len(backend.discover().physical) == expected
    except UserError:
        return False
