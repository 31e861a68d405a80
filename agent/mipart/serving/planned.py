"""What a host will serve once partitioned as the profile asks: the partition plan, then the
instances on the logical GPUs the host will have after it (not the ones it has now).

Reads the host once, through its GPU backend; `mipart plan`, `mipart render` and
`mipart status` (when the agent is down) show this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mipart.gpu.partitioning import Partitioning
from mipart.partition.apply import plan_host
from mipart.partition.plan import PartitionPlan
from mipart.profile.schema import Profile
from mipart.serving.instances import plan_instances
from mipart.serving.spec import InstanceSpec
from mipart.values import LogicalGpu


@dataclass(frozen=True)
class PlannedHost:
    partition: PartitionPlan
    instances: tuple[InstanceSpec, ...]


def plan_serving(profile: Profile, backend: Partitioning, sockets: Path) -> PlannedHost:
    """sockets: the serving dir's sockets directory the instances listen in (paths.sockets_dir)."""
    state, partition = plan_host(profile.gpus, backend)
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
    return PlannedHost(partition, plan_instances(profile, logical, sockets, layout))
