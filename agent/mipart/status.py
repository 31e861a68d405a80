"""What the agent knows, as JSON-able dicts and Prometheus text: for the status API and `mipart status`.

Everything here reads the Agent's fields and returns plain values. The parts that
touch the host (sysfs discovery, the last apply record, unit states from the runner)
are gathered by `collect_host()` into a HostSnapshot; the API caches that for about a
second and runs it in a worker thread, so no request reads sysfs or D-Bus on the
agent's event loop. Called without a snapshot, the functions collect one themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mipart import __version__

STATES = ("starting", "ready", "degraded", "unhealthy", "restarting", "failed")
IN_ROTATION = ("ready", "degraded")  # the states nginx routes to
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class HostSnapshot:
    """The host-side facts, read together (in a thread) and cached by the API."""

    taken: float = field(default_factory=time.monotonic)
    gpus: list[dict] = field(default_factory=list)
    logical_gpus: int = 0
    partition_error: str = ""
    last_apply: dict | None = None
    units: dict[int, tuple[str, str]] | None = None  # number -> (ActiveState, SubState); None: unknown
    units_error: str = ""
    nginx_running: bool | None = None


# -- instance state ------------------------------------------------------------------


def instance_state(h) -> str:
    """One word for an instance, from its InstanceHealth (None: not probed yet).

    The health state machine keeps the word itself (InstanceHealth.state); this is the
    one place the API and `mipart status` read it. For a health record without a
    `state` it is derived: failed (gave up restarting), ready / degraded (in rotation,
    degraded when recent probes failed), restarting (its process died, a restart is
    under way), unhealthy (was ready, then failed probes), else starting.
    """
    if h is None:
        return "starting"
    state = getattr(h, "state", None)
    if state in STATES:
        return state
    if getattr(h, "gave_up", False):
        return "failed"
    if getattr(h, "ready", False):
        return "degraded" if h.failures > 0 else "ready"
    if getattr(h, "restart_attempts", 0) > 0:
        return "restarting"
    if getattr(h, "failures", 0) > 0 and getattr(h, "was_ready", False):
        return "unhealthy"
    return "starting"


def in_rotation(h) -> bool:
    return instance_state(h) in IN_ROTATION


def iso_utc(timestamp: float | None) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- host side (blocking: call from a worker thread) ------------------------------------


def collect_host(agent) -> HostSnapshot:
    """Partition state per physical GPU, the last apply, unit states and nginx: never raises."""
    from mipart.errors import UserError
    from mipart.gpu.amdgpu import discover
    from mipart.partition.record import last_apply

    snap = HostSnapshot()
    gpu_spec = agent.profile.gpus if agent.profile is not None else None
    try:
        state = discover(agent.sysfs_root)
    except (UserError, OSError) as exc:
        snap.partition_error = str(exc)
    else:
        snap.logical_gpus = len(state.logical)
        for gpu in state.physical:
            compute_want = gpu_spec.compute_for(gpu.index) if gpu_spec else None
            memory_want = gpu_spec.memory if gpu_spec else None
            snap.gpus.append({
                "index": gpu.index,
                "bdf": gpu.bdf,
                "compute": gpu.compute,
                "memory": gpu.memory,
                "compute_want": compute_want,
                "memory_want": memory_want,
                "matches": (compute_want is None or gpu.compute == compute_want) and (memory_want is None or gpu.memory == memory_want),
                "logical_gpus": [lg.index for lg in state.logical if lg.physical_index == gpu.index],
            })
        if not state.physical:
            snap.partition_error = "no AMD Instinct GPU with partition support found (is amdgpu loaded? is MIPART_SYSFS_ROOT right?)"
    record = last_apply()
    if isinstance(record, dict):
        snap.last_apply = {
            "time": iso_utc(record.get("time")) if isinstance(record.get("time"), (int, float)) else None,
            "ok": bool(record.get("ok")),
            "error": str(record.get("error") or ""),
            "profile_digest": str(record.get("profile_digest") or ""),
            "result": record.get("result") if isinstance(record.get("result"), dict) else None,
        }
    try:
        snap.units = {n: (s.active_state, s.sub_state) for n, s in agent.runner.list_instances().items()}
    except Exception as exc:  # D-Bus gone, /proc unreadable: report, never fail the request
        snap.units, snap.units_error = None, str(exc) or exc.__class__.__name__
    try:
        snap.nginx_running = bool(agent.runner.nginx_running(agent.nginx))
    except Exception:
        snap.nginx_running = None
    return snap


# -- JSON ------------------------------------------------------------------------------


def snapshot_instance(agent, n: int, host: HostSnapshot | None = None) -> dict | None:
    """One instance as the API shows it; None when the profile has no instance N."""
    spec = agent.specs.get(n)
    if spec is None:
        return None
    h = agent.health.get(n)
    unit = host.units.get(n) if host is not None and host.units is not None else None
    state = instance_state(h)
    return {
        "number": spec.number,
        "unit": spec.unit,
        "service": spec.service,
        "model": spec.served_model_name,
        "state": state,
        "ready": state in IN_ROTATION,
        "since": iso_utc(h.since) if h else None,
        "last_error": h.last_error if h else "",
        "restarts": h.restarts_total if h else 0,
        "port": spec.port,
        "address": spec.address,
        "devices": list(spec.devices),
        "logical_gpus": list(spec.logical_gpus),
        "physical_gpus": list(spec.physical_gpus),
        "active_state": unit[0] if unit else None,
        "sub_state": unit[1] if unit else None,
    }


def snapshot_instances(agent, host: HostSnapshot | None = None) -> dict:
    return {"instances": [snapshot_instance(agent, n, host) for n in sorted(agent.specs)]}


def state_counts(agent) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for n in agent.specs:
        counts[instance_state(agent.health.get(n))] += 1
    return counts


def snapshot_status(agent, host: HostSnapshot | None = None) -> dict:
    host = host if host is not None else collect_host(agent)
    st = agent.status
    matches = all(g["matches"] for g in host.gpus) if host.gpus and not host.partition_error else None
    counts = state_counts(agent)
    return {
        "version": __version__,
        "profile": {
            "path": str(agent.profile_path),
            "digest": st.profile_digest,
            "loaded": agent.profile is not None,
        },
        "profile_error": st.profile_error,
        "partition": {
            "matches": matches,
            "error": host.partition_error,
            "logical_gpus": host.logical_gpus,
            "gpus": host.gpus,
        },
        "last_apply": host.last_apply,
        "instances": {"total": len(agent.specs), **counts},
        "nginx": {"config_valid": not st.nginx_error, "error": st.nginx_error, "running": host.nginx_running},
        "reconcile": {"last": iso_utc(st.last_reconcile), "error": st.reconcile_error},
        "units_error": host.units_error,
    }


def prometheus_targets(agent) -> list[dict]:
    """Prometheus HTTP service discovery: every instance's own /metrics (vLLM's)."""
    return [
        {
            "targets": [spec.address],
            "labels": {
                "service": spec.service,
                "instance_unit": spec.unit,
                "gpu": _gpu_label(spec),
                "model": spec.served_model_name,
                "__metrics_path__": "/metrics",
            },
        }
        for _, spec in sorted(agent.specs.items())
    ]


# -- Prometheus text exposition format 0.0.4 ----------------------------------------------


def _gpu_label(spec) -> str:
    return ",".join(map(str, spec.logical_gpus))


def escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def _value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Exposition:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def prometheus_metrics(agent, host: HostSnapshot | None = None) -> str:
    """The agent's own metrics; the engines' metrics are scraped from them (see /v1/targets).

    Without a host snapshot it reads nothing but the Agent; with one (the API passes its
    cached one) it adds whether the partitions match the profile and whether nginx runs.
    """
    out = _Exposition()
    out.family("mipart_agent_info", "gauge", "mipart agent build information.", [({"version": __version__}, 1)])
    out.family("mipart_profile_valid", "gauge", "1 when the profile on disk was accepted, 0 when the agent runs the last good one.",
               [({}, not agent.status.profile_error)])
    out.family("mipart_nginx_config_valid", "gauge", "1 when the last generated nginx config passed nginx -t.",
               [({}, not agent.status.nginx_error)])
    out.family("mipart_reconcile_ok", "gauge", "1 when the last reconcile succeeded.", [({}, not agent.status.reconcile_error)])
    if agent.status.last_reconcile:
        out.family("mipart_last_reconcile_timestamp_seconds", "gauge", "When the agent last reconciled instances with the profile.",
                   [({}, float(agent.status.last_reconcile))])
    if host is not None:
        if host.gpus and not host.partition_error:
            out.family("mipart_partition_matches", "gauge", "1 when every GPU is in the compute and memory mode the profile asks for.",
                       [({}, all(g["matches"] for g in host.gpus))])
        if host.nginx_running is not None:
            out.family("mipart_nginx_running", "gauge", "1 when mipart's nginx is running.", [({}, host.nginx_running)])
    counts = state_counts(agent)
    out.family("mipart_instances", "gauge", "Instances by state.", [({"state": s}, counts[s]) for s in STATES])
    specs = [spec for _, spec in sorted(agent.specs.items())]

    def labels(spec) -> dict:
        return {"service": spec.service, "instance": spec.unit, "gpu": _gpu_label(spec)}

    out.family("mipart_instance_ready", "gauge", "1 when the instance is in nginx rotation (ready or degraded).",
               [(labels(s), in_rotation(agent.health.get(s.number))) for s in specs])
    out.family("mipart_instance_restarts_total", "counter", "Restarts of the instance by the agent since the agent started.",
               [(labels(s), getattr(agent.health.get(s.number), "restarts_total", 0)) for s in specs])
    return out.text()
