"""`mipart plan` and `mipart render`: what the host will run, shown or written out, changing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mipart.cli import profile_option


def planned(profile_path: str, serving: Path | None = None):
    """The profile, and what the host will serve under it (serving.planned.PlannedHost), its instances
    listening under serving dir `serving` (default: MIPART_SERVING_DIR, else /run/mipart-vllm)."""
    from mipart.gpu import open_backend
    from mipart.paths import sockets_dir
    from mipart.profile import load_profile
    from mipart.serving.planned import plan_serving

    profile = load_profile(profile_path)
    return profile, plan_serving(profile, open_backend(), sockets_dir(serving))


def _upstreams(profile, specs) -> list[dict]:
    return [
        {
            "service": s.name,
            "listen": str(s.listen),
            "model": s.model_name,
            "routing": str(s.routing),
            "servers": [x.address for x in specs if x.service == s.name],
        }
        for s in profile.services
    ]


@click.command("plan")
@profile_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(profile_path: str, as_json: bool) -> int:
    """Show partitions, instances and upstreams the profile asks of this host."""
    from mipart.partition.plan import format_plan
    from mipart.partition.traps import tensor_parallel_on_cpx

    profile, host = planned(profile_path)
    partition_plan, specs = host.partition, host.instances
    for warning in tensor_parallel_on_cpx(
        partition_plan.compute_of_logical(), ((s.service, tuple(s.logical_gpus)) for s in specs)
    ):
        click.echo(f"mipart: warning: {warning}", err=True)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "partition": partition_plan.to_json(),
                    "instances": [s.to_json() for s in specs],
                    "upstreams": _upstreams(profile, specs),
                },
                indent=2,
            )
        )
        return 0
    click.echo("partitions:\n" + format_plan(partition_plan))
    rows = [("UNIT", "SERVICE", "GPUS", "DEVICES", "RUNTIME", "SOCKET")]
    for s in specs:
        rows.append((s.unit, s.service, ",".join(map(str, s.logical_gpus)), ",".join(s.devices), s.runtime, s.socket))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo(f"instances: {len(specs)}")
    for row in rows:
        click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    click.echo("upstreams:")
    for up in _upstreams(profile, specs):
        click.echo(
            f"  {up['service']}: listen {up['listen']}, model {up['model']}, {up['routing']} over "
            f"{len(up['servers'])} instances"
        )
    return 0


@click.command("render")
@profile_option
@click.option(
    "--root",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write files under this directory.",
)
@click.option(
    "--ready",
    type=click.Choice(["all", "none"]),
    default="all",
    show_default=True,
    help="Which instances the nginx config marks as up.",
)
def render(profile_path: str, root: Path, ready: str) -> int:
    """Write every generated file (instance specs, both layers' nginx.conf) under ROOT at its host path."""
    from mipart.daemon.specfiles import SPEC_MODE, instance_files
    from mipart.fsutil import write_atomic
    from mipart.names import DEFAULT_RUN_DIR, DEFAULT_SERVING_DIR
    from mipart.nginx.conf import render_nginx
    from mipart.nginx.files import BACK, FRONT, NginxFiles
    from mipart.nginx.front import render_front

    host_run = Path(DEFAULT_RUN_DIR)
    profile, host = planned(profile_path, Path(DEFAULT_SERVING_DIR))
    specs = host.instances
    up = frozenset(s.number for s in specs) if ready == "all" else frozenset()
    files = {path: (text, SPEC_MODE) for s in specs for path, text in instance_files(host_run, s).items()}
    back, front = NginxFiles.of(BACK, host_run), NginxFiles.of(FRONT, host_run)
    files[back.conf] = (render_nginx(profile, specs, up, back.prefix), 0o644)
    files[front.conf] = (render_front(profile, specs, back.prefix, front.prefix), 0o644)
    for path, (text, mode) in sorted(files.items()):
        target = root / path.relative_to("/")
        write_atomic(target, text, mode)
        click.echo(str(target))
    return 0
