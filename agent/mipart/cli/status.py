"""`mipart status`: what the agent reports, or what the units report when it does not answer.

Exit status follows `systemctl status`: 0 when every instance is ready (degraded counts:
it is still in rotation), 3 when some are not or the agent is not answering, 1 on user errors,
among them something other than mipart's status API answering where the agent should.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import click

from mipart.api.client import AgentDown, Api, NotStatusApi
from mipart.api.contract import Instance, Instances, NginxLayer, Status, to_json
from mipart.cli import profile_option, units
from mipart.errors import UserError
from mipart.health.states import READY, STATES
from mipart.listeners import printable
from mipart.names import DEFAULT_API_LISTEN, READY_PATH
from mipart.profile.schema import Routing

EXIT_NOT_READY = 3
ERROR_WIDTH = 80


def _default_api(profile_path: str) -> str:
    from mipart.profile import load_profile
    from mipart.profile.load import ProfileError

    try:
        return load_profile(profile_path).api.listen
    except ProfileError:
        return DEFAULT_API_LISTEN


# -- formatting -----------------------------------------------------------------------------


def relative(when: float | None, now: float | None = None) -> str:
    """Seconds since `when` as systemctl puts it: '12s ago', '3min ago', '2h 5min ago'."""
    if when is None:
        return "-"
    seconds = max(0, int((now if now is not None else time.time()) - when))
    if seconds < 60:
        return f"{seconds}s ago"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}min ago"
    hours = minutes // 60
    if hours < 24:
        return f"{hours}h {minutes % 60}min ago" if minutes % 60 else f"{hours}h ago"
    days = hours // 24
    return f"{days}d {hours % 24}h ago" if hours % 24 else f"{days}d ago"


def _parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _short(text: str) -> str:
    text = " ".join((text or "").split())
    if not text:
        return "-"
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 3] + "..."


def _layer(layer: NginxLayer) -> str:
    """One nginx layer in a few words: whether it runs, and the config generation it serves."""
    running = {True: "running", False: "NOT RUNNING", None: "state unknown"}[layer.running]
    serving = layer.serving_generation or "unknown"
    if layer.current or serving == layer.generation:
        return f"{running} (config {serving})"
    return f"{running} (config {serving}, installed {layer.generation or 'none'})"


HEADER = ("UNIT", "SERVICE", "GPU", "STATE", "SINCE", "RESTARTS", "LAST ERROR")


def _indented(error: str) -> str:
    """An error that says the host's layout on further lines, those lines under it."""
    return error.replace("\n", "\n    ")


def format_live(status: Status, instances: tuple[Instance, ...], api: str) -> list[str]:
    counts, partition, profile = status.instances, status.partition, status.profile
    if partition.matches is True:
        match = f"partitions match ({len(partition.gpus)} GPUs, {partition.logical_gpus} logical)"
    elif partition.matches is False:
        wrong = [g for g in partition.gpus if not g.matches]
        match = f"partitions DO NOT match on {len(wrong)} of {len(partition.gpus)} GPUs"
    else:
        match = "partitions unknown"
    others = ", ".join(f"{getattr(counts, s)} {s}" for s in STATES if s != READY and getattr(counts, s))
    lines = [
        f"mipart-agent {status.version} on {api}: profile {profile.path} (digest {profile.digest[:12] or 'none'}), "
        f"{match}, {counts.in_rotation}/{counts.total} instances ready" + (f" ({others})" if others else "")
    ]
    if profile.override:
        lines.append(
            f"  profile override by mipart bench sweep: {profile.override} (in force instead of "
            f"{profile.path}; if no sweep runs, remove it with `mipart bench sweep --restore`)"
        )
    if status.profile_error:
        lines.append(f"  profile rejected, running the last good one: {status.profile_error}")
    if partition.error:
        lines.append(f"  partition: {partition.error}")
    if partition.pending_memory:
        lines.append(f"  pending: {partition.pending_memory}")
    for gpu in partition.gpus:
        if not gpu.matches:
            lines.append(
                f"  GPU {gpu.index} ({gpu.bdf}): compute {gpu.compute}, memory {gpu.memory}; "
                f"want {gpu.compute_want or gpu.compute}, {gpu.memory_want or gpu.memory}"
            )
    if partition.action:
        lines.append(f"  partition drift: {partition.action}")
    lines.extend(f"  warning: {warning}" for warning in partition.warnings)  # known traps (partition/traps.py)
    ready = status.readiness
    if not ready.ready:
        lines.append(
            f"  readiness: 503 on {READY_PATH} since {ready.since or 'unknown'} ({ready.reason}); instances serve on"
            + ("; `mipart undrain` puts the host back" if ready.drained else "")
        )
    repartition, last = status.repartition, status.last_apply
    if repartition.step:
        lines.append(f"  rolling repartition: {repartition.step}")
    elif repartition.phase:
        lines.append(f"  repartitioning: {repartition.phase}")
    if last and not last.ok:
        lines.append(f"  last partition apply failed: {_indented(last.error)}")
    elif repartition.error:
        lines.append(f"  last repartition failed: {_indented(repartition.error)}")
    if status.reconcile.error:
        lines.append(f"  reconcile: {status.reconcile.error}")
    layers = (("front", status.nginx.front), ("back", status.nginx))
    lines.append("  nginx: " + ", ".join(f"{name} {_layer(layer)}" for name, layer in layers))
    for name, layer in layers:
        if layer.error:
            lines.append(f"  nginx {name} config rejected (the previous one still serves): {layer.error}")
        if layer.problem:
            lines.append(f"  nginx {name}: {layer.problem}")
    if status.files_error:
        lines.append(f"  files: {status.files_error} (the agent retries)")
    for service in status.services:
        lines.append(
            f"  service {service.name} ({service.model}) on {service.listen}: "
            f"{service.ready}/{service.instances} ready, "
            f"routing {Routing(service.routing.policy, service.routing.header)}"
        )
    rows = [HEADER]
    now = time.time()
    for i in instances:
        rows.append(
            (
                i.unit,
                i.service,
                ",".join(map(str, i.logical_gpus)),
                i.state,
                relative(_parse_iso(i.since), now),
                str(i.restarts),
                _short(i.last_error),
            )
        )
    return lines + ([""] + _table(rows) if instances else ["no instances"])


# -- the agent is down: ask the units -----------------------------------------------------


def format_down(api: str, reason: str, specs, states: dict[str, dict]) -> tuple[list[str], list[dict]]:
    lines = [f"mipart-agent is not answering on {api} ({reason}); showing what the units report"]
    rows, report = [HEADER], []
    now = time.time()
    errors = units.last_errors(specs, states)
    for spec in specs:
        props = states.get(spec.unit)
        state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}" if props else "unknown"
        started = units.started(props) if props else None
        since = relative(started, now) if started else "-"
        rows.append(
            (
                spec.unit,
                spec.service,
                ",".join(map(str, spec.logical_gpus)),
                state,
                since,
                "-",
                _short(errors.get(spec.number, "")),
            )
        )
        report.append(
            {
                "number": spec.number,
                "unit": spec.unit,
                "service": spec.service,
                "model": spec.served_model_name,
                "address": spec.address,
                "logical_gpus": list(spec.logical_gpus),
                "physical_gpus": list(spec.physical_gpus),
                "active_state": props.get("ActiveState") if props else None,
                "sub_state": props.get("SubState") if props else None,
                "started": units.iso(started),
                "last_error": errors.get(spec.number, ""),
            }
        )
    if not states and specs:
        lines.append("unit states unknown: systemctl is missing or cannot reach systemd")
    return lines + ([""] + _table(rows) if specs else ["no instances"]), report


@click.command("status")
@profile_option
@click.option("--json", "as_json", is_flag=True, help="Print what the agent reports as JSON.")
@click.option(
    "--api",
    "api",
    default=None,
    metavar="URL|PATH",
    help="Where the agent answers: host:port, http://host:port or a unix socket path [default: the profile's "
    "api.listen].",
)
def status(profile_path: str, as_json: bool, api: str | None) -> int:
    """Show partitions and instances as the agent sees them (exit 3 when some are not ready)."""
    target = Api(api or _default_api(profile_path))
    try:
        st = target.read(Status)
        instances = target.read(Instances).instances
    except AgentDown as exc:
        return _down(profile_path, target.label, str(exc), as_json)
    except NotStatusApi as exc:
        raise NotStatusApi(f"{exc}; check {'--api' if api else f'api.listen in {profile_path}'}") from None
    if as_json:
        answer = {"answering": True, "api": target.label}
        click.echo(json.dumps({"agent": answer, "status": to_json(st), "instances": to_json(instances)}, indent=2))
    else:
        click.echo("\n".join(map(printable, format_live(st, instances, target.label))))
    return 0 if st.instances.in_rotation == st.instances.total else EXIT_NOT_READY  # degraded still serves


def _down(profile_path: str, api: str, reason: str, as_json: bool) -> int:
    from mipart.profile.problems import ProfileError

    first = f"mipart-agent is not answering on {api} ({reason})"
    try:
        specs, unplanned = _planned_instances(profile_path)
    except ProfileError:
        if not as_json:
            click.echo(f"{first}; showing what the units report")  # then the profile's problems, on stderr
        raise
    if unplanned:
        if as_json:
            click.echo(
                json.dumps(
                    {"agent": {"answering": False, "api": api, "reason": reason}, "instances": [], "error": unplanned},
                    indent=2,
                )
            )
        else:
            click.echo(
                f"{first}, and {unplanned}: no instances to show; start it (systemctl start mipart-agent), or pass "
                "--profile PATH"
            )
        return EXIT_NOT_READY
    states = units.unit_states([s.unit for s in specs])
    lines, report = format_down(api, reason, specs, states)
    if as_json:
        click.echo(
            json.dumps({"agent": {"answering": False, "api": api, "reason": reason}, "instances": report}, indent=2)
        )
    else:
        click.echo("\n".join(map(printable, lines)))  # the last errors are the servers' own log lines
    return EXIT_NOT_READY


def _planned_instances(profile_path: str):
    """(the instances the profile plans on this host, "") or ((), what could not be read).

    A profile with problems in it is the user's to fix (ProfileError, exit 1); a profile
    that is not there, or a host whose GPUs cannot be read, only limits what is shown.
    """
    from mipart.cli.serving import planned
    from mipart.profile.problems import ProfileError

    try:
        return planned(profile_path)[1].instances, ""
    except ProfileError as exc:
        if exc.problems and exc.problems[0].line == 0:  # about the file as a whole: missing, unreadable
            return (), f"the profile {profile_path} cannot be read either ({exc.problems[0].message.split(';')[0]})"
        raise
    except (UserError, LookupError, OSError) as exc:
        return (), f"the instances the profile plans cannot be worked out ({exc})"
