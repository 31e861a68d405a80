"""Carry out a partition plan on a host, through its GPU backend: writes, at most one
reload, verify.

Order is AMD's own: memory request, one driver reload, compute modes, read back.
Every step re-reads the host, so a rerun after any crash finishes the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from mipart.errors import UserError
from mipart.gpu.holders import GpuHolders
from mipart.gpu.partitioning import Partitioning
from mipart.log import Log
from mipart.names import REPARTITION_COMMAND, instance_name
from mipart.partition.clients import Holder, SystemdClients, describe_holders
from mipart.partition.host_rules import read_rules
from mipart.partition.plan import PartitionPlan, PlanError, Write, assert_lines, plan_partitions
from mipart.profile.schema import GpuSpec
from mipart.values import GpuUser, HostState

USERS_GONE_TIMEOUT = 10.0


@dataclass
class ApplyResult:
    writes: int = 0
    reloads: int = 0
    logical_gpus: int = 0
    warnings: list[str] = field(default_factory=list)  # known traps seen on the host after the apply
    stopped: list[str] = field(default_factory=list)
    not_restarted: list[str] = field(default_factory=list)


class GpuBusyError(UserError):
    pass


class ApplyBackend(Partitioning, GpuHolders, Protocol):
    """What an apply asks of a GPU backend: partition its GPUs, and who holds them."""


def plan_host(spec: GpuSpec, backend: Partitioning) -> tuple[HostState, PartitionPlan]:
    state = backend.discover()
    return state, plan_partitions(spec, state, read_rules(backend, state, spec.memory))


def apply(spec: GpuSpec, backend: ApplyBackend, log: Log, instances_stopped: bool = False) -> ApplyResult:
    """`instances_stopped`: the agent has just stopped mipart's own instances for this apply
    (their servers may still be exiting). Otherwise an instance holding a GPU refuses the
    apply, with the command that repartitions while serving."""
    state, plan = plan_host(spec, backend)
    result = ApplyResult(logical_gpus=len(state.logical))
    if plan.noop:
        log.info("partition.unchanged", gpus=len(state.physical), logical_gpus=len(state.logical))
        _report_traps(result, plan, log)
        return result
    if plan.reload:
        backend.reload_command()  # a command the backend refuses fails before anything changed
    if not instances_stopped:
        _refuse_while_serving(busy_holders(backend, state, plan))
    clients = SystemdClients(spec.client_services)
    result.stopped = clients.stop_active()
    for unit in result.stopped:
        log.info("partition.client_stopped", unit=unit)
    try:
        _refuse_while_busy(backend, state, plan, wait=bool(result.stopped) or instances_stopped)
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
            raise PlanError(
                f"read-back does not match the profile after apply: {diff[0]}; rerun `mipart partition apply`"
            )
        result.logical_gpus = len(final_state.logical)
        _report_traps(result, final_plan, log)
    finally:
        result.not_restarted = clients.start(result.stopped)
        for unit in result.stopped:
            log.info("partition.client_started", unit=unit, ok=unit not in result.not_restarted)
    return result


def _report_traps(result: ApplyResult, plan: PartitionPlan, log: Log) -> None:
    result.warnings = list(plan.warnings)
    for warning in result.warnings:
        log.warning("partition.trap", problem=warning)


def _users_in_the_way(backend: ApplyBackend, state: HostState, plan: PartitionPlan) -> list[GpuUser]:
    """A reload needs every GPU free; a compute write needs its own GPU free (else EBUSY)."""
    touched = {g.index for g in state.physical} if plan.reload else {w.gpu for w in plan.writes}
    return [u for u in backend.gpu_users(state) if touched & set(u.physical_indices)]


def busy_holders(backend: ApplyBackend, state: HostState, plan: PartitionPlan) -> list[Holder]:
    """The processes that would make this plan fail, named."""
    return describe_holders(_users_in_the_way(backend, state, plan))


def refuse_unmanaged(holders: list[Holder], client_services: tuple[str, ...]) -> None:
    """The agent's check before it stops anything: a holder it cannot stop (neither one of its
    instances nor a client service) would fail the apply after serving went down."""
    unmanaged = [h for h in holders if h.instance is None and h.unit not in client_services]
    if unmanaged:
        raise GpuBusyError(
            f"GPUs in use by processes mipart does not manage: {'; '.join(h.describe() for h in unmanaged)}; "
            "nothing was stopped or changed: stop these processes, or list their units in gpus.client_services, "
            f"then run `{REPARTITION_COMMAND}` again"
        )


def _refuse_while_serving(holders: list[Holder]) -> None:
    instances = sorted({h.instance for h in holders if h.instance is not None})
    if instances:
        names = ", ".join(instance_name(n) for n in instances[:3]) + (
            f" and {len(instances) - 3} more" if len(instances) > 3 else ""
        )
        raise GpuBusyError(
            f"mipart's own instances hold these GPUs ({names}), so the agent is serving on them; "
            f"apply gpus: while serving with `{REPARTITION_COMMAND}` (it drains and stops them, applies the layout "
            "and starts them on it); nothing was changed"
        )


def _refuse_while_busy(backend: ApplyBackend, state: HostState, plan: PartitionPlan, wait: bool) -> None:
    """With `wait`, stopped units get a moment to release /dev/kfd."""
    deadline = time.monotonic() + (USERS_GONE_TIMEOUT if wait else 0)
    while True:
        users = _users_in_the_way(backend, state, plan)
        if not users or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if users:
        holders = "; ".join(h.describe() for h in describe_holders(users))
        raise GpuBusyError(
            f"GPUs in use: {holders}; nothing was changed: stop these processes, "
            "or list their units in gpus.client_services, then rerun `mipart partition apply`"
        )


def _write_all(backend: ApplyBackend, state: HostState, writes: list[Write], result: ApplyResult, log: Log) -> None:
    by_index = {g.index: g for g in state.physical}
    for write in writes:
        gpu = by_index[write.gpu]
        try:
            backend.write_attribute(gpu, write.attribute, write.value)
        except OSError as exc:
            raise UserError(backend.describe_write_error(exc, gpu, write.attribute, write.value)) from None
        result.writes += 1
        log.info("partition.write", gpu=gpu.index, bdf=gpu.bdf, attribute=write.attribute, value=write.value)


def _gpus_back(backend: ApplyBackend, expected: int) -> bool:
    try:
        return len(backend.discover().physical) == expected
    except UserError:
        return False
