"""Carry out a partition plan on a host, through its GPU backend: writes, at most one
reload, verify.

Order is AMD's own: memory request, one driver reload, compute modes, read back.
Every step re-reads the host, so a rerun after any crash finishes the job. Whoever would
make it fail is named, by PID and unit, before anything is written: the holders of the GPUs
a compute write touches, and for a reload everyone with a device file of the driver open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from mipart.errors import UserError
from mipart.gpu.partitioning import Partitioning
from mipart.log import Log
from mipart.names import REPARTITION_COMMAND, instance_name
from mipart.partition import pending, writes
from mipart.partition.clients import GpuBusyError, Holder, SystemdClients, describe_holders, named
from mipart.partition.host_rules import read_rules
from mipart.partition.pending import describe
from mipart.partition.plan import PartitionPlan, PlanError, Write, assert_lines, plan_partitions
from mipart.partition.writes import ApplyBackend
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


def plan_host(spec: GpuSpec, backend: Partitioning) -> tuple[HostState, PartitionPlan]:
    """The plan for this host, with the memory request mipart placed that is still pending."""
    state = backend.discover()
    plan = plan_partitions(spec, state, read_rules(backend, state, spec.memory))
    return state, replace(plan, pending=pending.current(state))


def apply(spec: GpuSpec, backend: ApplyBackend, log: Log, instances_stopped: bool = False) -> ApplyResult:
    """`instances_stopped`: the agent has just stopped mipart's own instances for this apply
    (their servers may still be exiting). Otherwise an instance holding a GPU refuses the
    apply, with the command that repartitions while serving. A failure after a change ends
    with the layout the host is in now, per GPU, and what to run next."""
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
        try:
            _change(spec, backend, state, plan, result, log)
        except UserError as exc:
            if not (result.writes or result.reloads):
                raise
            raise type(exc)(f"{exc}\n{host_now(spec, backend)}") from None
    finally:
        result.not_restarted = clients.start(result.stopped)
        for unit in result.stopped:
            log.info("partition.client_started", unit=unit, ok=unit not in result.not_restarted)
    return result


def _change(
    spec: GpuSpec, backend: ApplyBackend, state: HostState, plan: PartitionPlan, result: ApplyResult, log: Log
) -> None:
    """Memory requests, the reload right after them (a request is never left for someone else's
    reload), compute writes, then the read-back."""
    requests = [w for w in plan.writes if not w.after_reload]
    _write_all(backend, state, requests, result, log)
    if plan.reload:
        pending.place(spec.memory or "", tuple(g.bdf for g in state.physical if g.index in {w.gpu for w in requests}))
        log.info("partition.reload", command=backend.reload_command())
        backend.reload(lambda: _gpus_back(backend, len(state.physical)))
        result.reloads += 1
        pending.clear()
        state, plan = plan_host(spec, backend)
        _write_all(backend, state, list(plan.writes), result, log)
    final_state, final_plan = plan_host(spec, backend)
    diff = assert_lines(final_plan)
    if diff:
        raise PlanError(f"read-back does not match the profile after apply: {diff[0]}; rerun `mipart partition apply`")
    result.logical_gpus = len(final_state.logical)
    _report_traps(result, final_plan, log)


def host_now(spec: GpuSpec, backend: Partitioning) -> str:
    """The layout the host is in now, one line per GPU, then what to run next."""
    try:
        _, plan = plan_host(spec, backend)
    except UserError as exc:
        return f"the host cannot be read now ({exc}); check `journalctl -k`, then rerun `mipart partition apply`"
    lines = ["the host now:"]
    for gpu in plan.gpus:
        want = f"{gpu.compute_want or gpu.compute_now}/{gpu.memory_want or gpu.memory_now}"
        state = "as the profile wants" if gpu.matches else f"the profile wants {want}"
        lines.append(f"  GPU {gpu.index} ({gpu.bdf}): {gpu.compute_now}/{gpu.memory_now}, {state}")
    if plan.pending:
        lines.append("  " + describe(plan.pending, {g.bdf: g.index for g in plan.gpus}))
    lines.append(
        "next: do what the first line says, then rerun `mipart partition apply` (while mipart-agent serves: "
        f"`{REPARTITION_COMMAND}`); it does only what is left"
    )
    return "\n".join(lines)


def _report_traps(result: ApplyResult, plan: PartitionPlan, log: Log) -> None:
    result.warnings = list(plan.warnings)
    for warning in result.warnings:
        log.warning("partition.trap", problem=warning)


def _users_in_the_way(backend: ApplyBackend, state: HostState, plan: PartitionPlan) -> list[GpuUser]:
    """A compute write needs its own GPU free of KFD users (else EBUSY); a reload needs every
    device file of the driver closed, KFD users and card/render node openers alike (else the
    module is in use)."""
    if plan.reload:
        users = backend.gpu_users(state)
        kfd = {u.pid for u in users}
        return users + [u for u in backend.device_openers(state) if u.pid not in kfd]
    touched = {w.gpu for w in plan.writes}
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
            f"GPUs in use by processes mipart does not manage: {named(unmanaged)}; "
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
        why = " (a driver reload needs every /dev/kfd, card and render node of it closed)" if plan.reload else ""
        raise GpuBusyError(
            f"GPUs in use: {named(describe_holders(users))}{why}; nothing was changed: stop these processes, "
            "or list their units in gpus.client_services, then rerun `mipart partition apply`"
        )


def _write_all(backend: ApplyBackend, state: HostState, changes: list[Write], result: ApplyResult, log: Log) -> None:
    by_index = {g.index: g for g in state.physical}
    for change in changes:
        gpu = by_index[change.gpu]
        writes.write(backend, state, gpu, change, log)
        result.writes += 1
        log.info("partition.write", gpu=gpu.index, bdf=gpu.bdf, attribute=change.attribute, value=change.value)
        writes.read_back(backend, gpu, change)


def _gpus_back(backend: ApplyBackend, expected: int) -> bool:
    try:
        return len(backend.discover().physical) == expected
    except UserError:
        return False
