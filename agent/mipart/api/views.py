"""The status responses (api.contract), filled from an AgentSnapshot and a HostSnapshot: pure."""

from __future__ import annotations

from mipart import __version__
from mipart.api.contract import (
    Instance,
    InstanceCounts,
    Instances,
    Nginx,
    NginxLayer,
    PairRule,
    Partition,
    PartitionRules,
    ProfileInfo,
    Readiness,
    Reconcile,
    Repartition,
    Service,
    ServiceRouting,
    Status,
    iso_utc,
)
from mipart.api.host import HostSnapshot
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus, InstanceView, LayerState, gpu_label
from mipart.names import REPARTITION_COMMAND

METRICS_PATH = "/v1/instances/{n}/metrics"  # an instance's own /metrics, through the API (api/server.py)


def instance(view: InstanceView, host: HostSnapshot | None = None) -> Instance:
    spec = view.spec
    unit = host.units.get(spec.number) if host is not None and host.units is not None else None
    return Instance(
        number=spec.number,
        unit=spec.unit,
        service=spec.service,
        model=spec.served_model_name,
        state=view.state,
        ready=view.in_rotation,
        since=iso_utc(view.since),
        last_error=view.last_error,
        restarts=view.restarts,
        address=spec.address,
        devices=tuple(spec.devices),
        logical_gpus=tuple(spec.logical_gpus),
        physical_gpus=tuple(spec.physical_gpus),
        active_state=unit[0] if unit else None,
        sub_state=unit[1] if unit else None,
    )


def instances(snap: AgentSnapshot, host: HostSnapshot | None = None) -> Instances:
    return Instances(instances=tuple(instance(view, host) for view in snap.instances.values()))


def status(snap: AgentSnapshot, host: HostSnapshot) -> Status:
    st = snap.status
    return Status(
        version=__version__,
        profile=ProfileInfo(
            path=snap.profile_path, digest=st.profile_digest, loaded=snap.profile_loaded, override=st.profile_override
        ),
        profile_error=st.profile_error,
        partition=partition(host, st),
        repartition=Repartition(
            phase=st.repartition_phase,
            started=iso_utc(st.repartition_started),
            finished=iso_utc(st.repartition_finished),
            error=st.repartition_error,
            step=st.repartition_step,
        ),
        last_apply=host.last_apply,
        instances=InstanceCounts(total=len(snap.instances), **snap.counts()),
        services=services(snap),
        nginx=Nginx(**vars(nginx_layer(st.nginx, host.nginx_running)), front=nginx_layer(st.front, host.front_running)),
        reconcile=Reconcile(last=iso_utc(st.last_reconcile), error=st.reconcile_error),
        units_error=host.units_error,
        files_error=st.files_error,
        readiness=Readiness(
            ready=st.readiness.ready,
            reason=st.readiness.reason,
            since=iso_utc(st.readiness.since),
            drained=st.readiness.drained,
        ),
    )


def nginx_layer(layer: LayerState, running: bool | None) -> NginxLayer:
    return NginxLayer(
        config_valid=not layer.error,
        error=layer.error,
        running=running,
        generation=layer.generation,
        serving_generation=layer.serving,
        current=layer.current,
        stray_workers=layer.strays,
        problem=layer.problem,
    )


def services(snap: AgentSnapshot) -> tuple[Service, ...]:
    def members(name: str) -> list:
        return [view for view in snap.instances.values() if view.spec.service == name]

    return tuple(
        Service(
            name=s.name,
            model=s.model_name,
            listen=str(s.listen),
            routing=ServiceRouting(s.routing.policy, s.routing.header),
            instances=len(members(s.name)),
            ready=sum(view.in_rotation for view in members(s.name)),
        )
        for s in snap.services
    )


def partition(host: HostSnapshot, st: AgentStatus) -> Partition:
    drift = host.partitions_match is False
    action = ""
    if drift and not st.repartition_phase:
        action = (
            f"run `{REPARTITION_COMMAND}` to apply the profile's gpus: while serving "
            "(one GPU at a time when no driver reload is needed; `mipart plan` shows the steps)"
        )
    rules = tuple(
        PartitionRules(gpus=g.gpus, source=g.source, pairs=tuple(PairRule(c, m) for c, m in g.pairs.items()))
        for g in host.rules
    )
    return Partition(
        matches=host.partitions_match,
        error=host.partition_error,
        logical_gpus=host.logical_gpus,
        gpus=host.gpus,
        drift=drift,
        action=action,
        rules=rules,
        warnings=host.warnings,
        pending_memory=host.pending_memory,
    )


def targets(snap: AgentSnapshot, api: str) -> list[dict]:
    """Prometheus HTTP service discovery (Prometheus's own format): every instance's metrics, read through
    this API at `api` (host:port as the request reached it): instances listen only on their sockets."""
    return [
        {
            "targets": [api],
            "labels": {
                "service": view.spec.service,
                "instance_unit": view.spec.unit,
                "gpu": gpu_label(view.spec),
                "model": view.spec.served_model_name,
                "__metrics_path__": METRICS_PATH.format(n=view.spec.number),
            },
        }
        for view in snap.instances.values()
    ]
