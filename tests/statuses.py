"""Whole status responses (mipart.api.contract types), every field filled, for the tests of their readers.

Every nested type appears at least once (a service, a pair table, a last apply with its result,
a warning), so a round trip through JSON exercises all of them.
"""

from __future__ import annotations

from mipart.api import contract
from mipart.api.contract import Instance, InstanceCounts, Instances, PartitionGpu, Repartition, Status

DIGEST = "d" * 64

# Either nginx layer, serving the config installed last.
NGINX = contract.NginxLayer(
    config_valid=True,
    error="",
    running=True,
    generation="g1",
    serving_generation="g1",
    current=True,
    stray_workers=0,
    problem="",
)


def gpu(index: int, compute: str = "DPX", memory: str = "NPS2", want: tuple[str, str] | None = None) -> PartitionGpu:
    """GPU `index` in compute/memory; it matches unless `want` names other modes."""
    compute_want, memory_want = want or (compute, memory)
    return PartitionGpu(
        index=index,
        bdf=f"0000:0{index}:00.0",
        compute=compute,
        memory=memory,
        compute_want=compute_want,
        memory_want=memory_want,
        matches=(compute, memory) == (compute_want, memory_want),
        logical_gpus=(2 * index, 2 * index + 1),
    )


def counts(total: int = 4, ready: int = 4, degraded: int = 0, starting: int = 0) -> InstanceCounts:
    return InstanceCounts(
        total=total,
        ready=ready,
        degraded=degraded,
        starting=starting,
        unhealthy=0,
        restarting=0,
        draining=0,
        failed=total - ready - degraded - starting,
    )


def status(
    digest: str = DIGEST,
    *,
    gpus: tuple[PartitionGpu, ...] = (gpu(0), gpu(1)),
    drift: bool = False,
    repartition: Repartition = Repartition(phase="", started=None, finished=None, error=""),
    instances: InstanceCounts = counts(),
    profile_error: str = "",
    override: str = "",
    reconcile_error: str = "",
    readiness: contract.Readiness = contract.Readiness(ready=True, reason=None, since=None, drained=False),
) -> Status:
    matches = all(g.matches for g in gpus)
    return Status(
        version="0.1.0",
        profile=contract.ProfileInfo(path="/etc/mipart/profile.yaml", digest=digest, loaded=True, override=override),
        profile_error=profile_error,
        partition=contract.Partition(
            matches=matches,
            error="",
            logical_gpus=2 * len(gpus),
            gpus=gpus,
            drift=drift,
            action="",
            rules=(
                contract.PartitionRules(
                    gpus=(0, 1), source="kernel", pairs=(contract.PairRule("DPX", ("NPS1", "NPS2")),)
                ),
            ),
            warnings=("a known trap, in one line",),
            pending_memory="",
        ),
        repartition=repartition,
        last_apply=contract.LastApply(
            time="2024-01-01T00:00:00Z", ok=True, error="", profile_digest=digest, result={"writes": 2, "reloads": 1}
        ),
        instances=instances,
        services=(
            contract.Service(
                name="chat",
                model="org/m",
                listen="127.0.0.1:8040",
                routing=contract.ServiceRouting(policy="least_conn", header=None),
                instances=instances.total,
                ready=instances.in_rotation,
            ),
        ),
        nginx=contract.Nginx(**vars(NGINX), front=NGINX),
        reconcile=contract.Reconcile(last="2024-01-01T00:00:01Z", error=reconcile_error),
        units_error="",
        files_error="",
        readiness=readiness,
    )


def instance(number: int, state: str = "ready") -> Instance:
    return Instance(
        number=number,
        unit=f"mipart-vllm@{number}.service",
        service="chat",
        model="org/m",
        state=state,
        ready=state in ("ready", "degraded"),
        since="2024-01-01T00:00:00Z",
        last_error="",
        restarts=0,
        address=f"unix:/run/mipart-vllm/sockets/{number}/http.sock",
        devices=("/dev/kfd", f"/dev/dri/renderD{128 + number}"),
        logical_gpus=(number,),
        physical_gpus=(number // 2,),
        active_state=None,
        sub_state=None,
    )


def instances(count: int = 4) -> Instances:
    return Instances(instances=tuple(instance(n) for n in range(count)))
