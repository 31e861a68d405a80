"""The agent's own metrics, from an AgentSnapshot: pure. The engines' metrics are scraped
from the engines themselves (see /v1/targets)."""

from __future__ import annotations

from mipart import __version__
from mipart.api.host import HostSnapshot
from mipart.daemon.snapshot import AgentSnapshot, gpu_label
from mipart.health.states import STATES
from mipart.names import REPARTITION_COMMAND
from mipart.prometheus import Exposition


def prometheus_metrics(snap: AgentSnapshot, host: HostSnapshot | None = None) -> str:
    """With a host snapshot (the API passes its cached one) it adds whether the partitions
    match the profile and whether nginx runs."""
    st = snap.status
    out = Exposition()
    out.family("mipart_agent_info", "gauge", "mipart agent build information.", [({"version": __version__}, 1)])
    out.family(
        "mipart_profile_valid",
        "gauge",
        "1 when the profile on disk was accepted, 0 when the agent runs the last good one.",
        [({}, not st.profile_error)],
    )
    layers = {"back": st.nginx, "front": st.front}
    out.family(
        "mipart_nginx_config_valid",
        "gauge",
        "1 when the last generated nginx config passed nginx -t, per layer (back, front).",
        [({"layer": name}, not layer.error) for name, layer in layers.items()],
    )
    out.family("mipart_reconcile_ok", "gauge", "1 when the last reconcile succeeded.", [({}, not st.reconcile_error)])
    out.family(
        "mipart_nginx_config_current",
        "gauge",
        "1 when nginx serves the config installed last (0 while a reload takes), per layer.",
        [({"layer": name}, layer.current) for name, layer in layers.items()],
    )
    out.family(
        "mipart_nginx_stray_workers",
        "gauge",
        "nginx workers of mipart's serving a frozen config without their master, per layer.",
        [({"layer": name}, layer.strays) for name, layer in layers.items()],
    )
    out.family(
        "mipart_files_ok",
        "gauge",
        "1 when the agent could write every file it keeps under its run dir.",
        [({}, not st.files_error)],
    )
    if st.last_reconcile:
        out.family(
            "mipart_last_reconcile_timestamp_seconds",
            "gauge",
            "When the agent last reconciled instances with the profile.",
            [({}, float(st.last_reconcile))],
        )
    if host is not None:
        if host.partitions_match is not None:
            out.family(
                "mipart_partition_matches",
                "gauge",
                "1 when every GPU is in the compute and memory mode the profile asks for.",
                [({}, host.partitions_match)],
            )
            out.family(
                "mipart_partition_drift",
                "gauge",
                f"1 when the host's layout differs from the profile's gpus: (repartition with {REPARTITION_COMMAND}).",
                [({}, not host.partitions_match)],
            )
        running = {"back": host.nginx_running, "front": host.front_running}
        if any(up is not None for up in running.values()):
            out.family(
                "mipart_nginx_running",
                "gauge",
                "1 when mipart's nginx is running, per layer (back, front).",
                [({"layer": name}, up) for name, up in running.items() if up is not None],
            )
        gpu_metrics(out, host)
    out.family(
        "mipart_repartition_running",
        "gauge",
        "1 while the agent repartitions (drains, stops, applies gpus:, starts).",
        [({}, bool(st.repartition_phase))],
    )
    if st.repartition_finished:
        out.family(
            "mipart_repartition_last_ok",
            "gauge",
            "1 when the agent's last repartition applied the profile's gpus:.",
            [({}, not st.repartition_error)],
        )
    counts = snap.counts()
    out.family("mipart_instances", "gauge", "Instances by state.", [({"state": s}, counts[s]) for s in STATES])
    views = list(snap.instances.values())

    def labels(view) -> dict:
        return {"service": view.spec.service, "instance": view.spec.unit, "gpu": gpu_label(view.spec)}

    out.family(
        "mipart_instance_ready",
        "gauge",
        "1 when the instance is in nginx rotation (ready or degraded).",
        [(labels(v), v.in_rotation) for v in views],
    )
    out.family(
        "mipart_instance_restarts_total",
        "counter",
        "Restarts of the instance by the agent since the agent started.",
        [(labels(v), v.restarts) for v in views],
    )
    return out.text()


def gpu_metrics(out: Exposition, host: HostSnapshot) -> None:
    """Per physical GPU: its partition modes, RAS counters and hwmon sensors; per logical GPU
    (partition) the GPU it is on, so a partition's series join its GPU's by the gpu label."""
    if not host.gpus:
        return
    out.family(
        "mipart_gpu_partition_info",
        "gauge",
        "The GPU's compute and memory partition modes (always 1).",
        [({"gpu": str(g.index), "bdf": g.bdf, "compute": g.compute, "memory": g.memory}, 1) for g in host.gpus],
    )
    out.family(
        "mipart_logical_gpu_info",
        "gauge",
        "Which physical GPU a logical GPU (partition) is on (always 1).",
        [
            ({"logical_gpu": str(lg), "gpu": str(g.index), "partition": str(p)}, 1)
            for g in host.gpus
            for p, lg in enumerate(g.logical_gpus)
        ],
    )

    def gpu(s, **more) -> dict:
        return {"gpu": str(s.index), "bdf": s.bdf, **more}

    signals = host.signals
    out.family(
        "mipart_gpu_ras_uncorrectable_errors_total",
        "counter",
        "Uncorrectable RAS errors the driver counted, per block (a rise takes the GPU's instances out of rotation).",
        [(gpu(s, block=block), ue) for s in signals for block, ue, _ in s.errors],
    )
    out.family(
        "mipart_gpu_ras_correctable_errors_total",
        "counter",
        "Correctable RAS errors the driver counted, per block.",
        [(gpu(s, block=block), ce) for s in signals for block, _, ce in s.errors],
    )
    out.family(
        "mipart_gpu_temperature_celsius",
        "gauge",
        "The GPU's hwmon temperatures, per sensor.",
        [(gpu(s, sensor=sensor), float(c)) for s in signals for sensor, c in s.temperatures],
    )
    out.family(
        "mipart_gpu_power_watts",
        "gauge",
        "The GPU's average power draw (hwmon).",
        [(gpu(s), float(s.power_w)) for s in signals if s.power_w is not None],
    )
