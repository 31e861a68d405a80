"""What a host will serve once partitioned as the profile asks: the partition plan, then the
instances on the logical GPUs the host will have after it (not the ones it has now), and the
rollout from the instances that run now to those (partition.rolling).

Reads the host once, through its GPU backend; `mipart plan`, `mipart render` and
`mipart status` (when the agent is down) show this, and the agent plans its rolling
repartition with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.gpu.partitioning import Partitioning
from mipart.partition.apply import plan_host
from mipart.partition.plan import PartitionPlan
from mipart.partition.rolling import Placement, Rollout, plan_rollout
from mipart.profile.schema import Profile
from mipart.serving.instances import plan_instances
from mipart.serving.spec import InstanceSpec
from mipart.values import HostState, LogicalGpu


@dataclass(frozen=True)
class PlannedHost:
    partition: PartitionPlan
    instances: tuple[InstanceSpec, ...]
    rollout: Rollout


def plan_serving(
    profile: Profile, backend: Partitioning, sockets: Path, running: Iterable[InstanceSpec] | None = None
) -> PlannedHost:
    """sockets: the serving dir's sockets directory the instances listen in (paths.sockets_dir);
    running: the instances that run now (None: those the host's current layout gives)."""
    state, partition = plan_host(profile.gpus, backend)
    after = instances_after(profile, state, partition, sockets)
    before = tuple(running) if running is not None else _instances_now(profile, state, sockets)
    return PlannedHost(partition, after, rollout_of(profile, partition, before, after))


def instances_after(
    profile: Profile, state: HostState, partition: PartitionPlan, sockets: Path
) -> tuple[InstanceSpec, ...]:
    """The instances on the logical GPUs the plan predicts (raises InstancePlanError when they do not fit)."""
    bdf = {g.index: g.bdf for g in state.physical}
    logical = tuple(
        LogicalGpu(
            index=p.index,
            node_id=0,
            gpu_id=0,
            render_minor=p.render_minor,
            physical_index=p.physical,
            partition=p.partition,
            bdf=bdf[p.physical],
        )
        for p in partition.logical
    )
    layout = {g.index: g.compute_final for g in partition.gpus}
    return plan_instances(profile, logical, sockets, layout)


def rollout_of(
    profile: Profile, partition: PartitionPlan, before: Iterable[InstanceSpec], after: Iterable[InstanceSpec]
) -> Rollout:
    return plan_rollout(
        partition,
        placements(before),
        placements(after),
        [s.name for s in profile.services],
        profile.gpus.rollout.max_unavailable,
    )


def placements(specs: Iterable[InstanceSpec]) -> list[Placement]:
    return [Placement(s.number, s.service, s.physical_gpus) for s in specs]


def _instances_now(profile: Profile, state: HostState, sockets: Path) -> tuple[InstanceSpec, ...]:
    """What the profile gives on the layout the host has now; none when it does not fit there."""
    try:
        return plan_instances(profile, state.logical, sockets, {g.index: g.compute for g in state.physical})
    except UserError:
        return ()
