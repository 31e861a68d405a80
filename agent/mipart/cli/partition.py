"""`mipart partition plan|apply|assert|export`: the verbs of mig-parted, for AMD Instinct GPUs."""

from __future__ import annotations

import json

import click

from mipart.cli import profile_option


def _load(profile_path: str):
    from mipart.profile import load_profile

    return load_profile(profile_path)


def _backend():
    from mipart.gpu import open_backend

    return open_backend()


@click.group()
def partition() -> None:
    """Put every GPU into the profile's compute and memory partition."""


@partition.command("plan")
@profile_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(profile_path: str, as_json: bool) -> int:
    """Show current -> desired per GPU, the writes, the reload and the resulting logical GPUs."""
    from mipart.partition.apply import plan_host
    from mipart.partition.plan import format_plan

    profile = _load(profile_path)
    _, plan = plan_host(profile.gpus, _backend())
    click.echo(json.dumps(plan.to_json(), indent=2) if as_json else format_plan(plan))
    return 0


@partition.command("apply")
@profile_option
def apply_cmd(profile_path: str) -> int:
    """Apply the layout: memory first, one driver reload at most, then compute; verify."""
    from mipart.errors import UserError
    from mipart.log import get_logger
    from mipart.partition.apply import apply
    from mipart.partition.record import record_apply

    profile = _load(profile_path)
    try:
        result = apply(profile.gpus, _backend(), get_logger("mipart.partition"))
    except UserError as exc:
        record_apply(ok=False, error=str(exc), profile_digest=profile.digest)
        raise
    record_apply(ok=not result.not_restarted, result=result, profile_digest=profile.digest)
    click.echo(f"applied: {result.writes} writes, {result.reloads} reloads; {result.logical_gpus} logical GPUs")
    for warning in result.warnings:
        click.echo(f"mipart: warning: {warning}", err=True)
    if result.not_restarted:
        click.echo(
            f"mipart: client services did not start again: {', '.join(result.not_restarted)}; see `systemctl status`",
            err=True,
        )
        return 1
    return 0


@partition.command("assert")
@profile_option
def assert_cmd(profile_path: str) -> int:
    """Exit 0 when the host matches the profile; else 1 with one line per differing GPU."""
    from mipart.partition.apply import plan_host
    from mipart.partition.plan import assert_lines

    profile = _load(profile_path)
    _, plan = plan_host(profile.gpus, _backend())
    lines = assert_lines(plan)
    for line in lines:
        click.echo(line)
    for warning in plan.warnings:
        click.echo(f"mipart: warning: {warning}", err=True)
    return 1 if lines else 0


@partition.command("export")
def export_cmd() -> int:
    """Print the host's current layout as a profile `gpus:` section, with the kernel's pair table as comments."""
    from mipart.partition.host_rules import read_rules
    from mipart.partition.plan import PlanError, export_gpus_yaml, rule_groups

    backend = _backend()
    state = backend.discover()
    if not state.physical:
        raise PlanError(
            "no AMD Instinct GPU with partition support found (is amdgpu loaded? is MIPART_SYSFS_ROOT right?)"
        )
    click.echo(export_gpus_yaml(state, rule_groups(read_rules(backend, state))), nl=False)
    return 0
