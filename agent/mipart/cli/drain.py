"""`mipart drain` and `mipart undrain`: take the host out of its fleet's rotation for maintenance, and put it back.

Draining writes the drain file (drainfile) and makes the agent re-read it, the way an operator
would (bench.reload: `systemctl reload mipart-agent`, or SIGHUP to a process-runner agent).
Every service listener then answers 503 on the readiness path, while the instances serve on
whoever still sends (docs/routing.md#readiness-for-fleet-load-balancers).
"""

from __future__ import annotations

import json
import time

import click

from mipart.cli import profile_option
from mipart.drainfile import (
    DEFAULT_REASON,
    Drain,
    DrainFileError,
    checked_reason,
    read_drain,
    remove_drain,
    write_drain,
)
from mipart.errors import UserError
from mipart.names import READY_PATH

WAIT_LIMIT = 60.0  # seconds for the listeners to answer as asked (one nginx reload of the back layer)


def _tell_agent() -> str:
    """Reload the agent; what was done, or why nothing could be ("" when the agent was told)."""
    from mipart.bench.reload import find_agent, reload_agent
    from mipart.paths import run_dir

    try:
        agent = find_agent(run_dir())
    except UserError:
        return "the agent does not run; it reads the drain file when it starts"
    reload_agent(agent)
    return ""


def _profile(profile_path: str):
    from mipart.profile import load_profile

    return load_profile(profile_path)


def _write(reason: str) -> tuple[Drain, bool]:
    from mipart.paths import drain_path

    path = drain_path()
    try:
        existing = read_drain(path)
    except DrainFileError:
        existing = None  # a damaged file is replaced by a good one
    if existing is not None:
        return existing, False
    try:
        return write_drain(path, reason), True
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror}); run mipart drain as root") from None


@click.command("drain")
@profile_option
@click.option("--reason", default=DEFAULT_REASON, show_default=True, help="Why, as balancers and status show it.")
@click.option("--wait", is_flag=True, help="Return once every listener answers 503 and gpus.drain_notice has passed.")
@click.option("--json", "as_json", is_flag=True, help="Print the drain state as JSON.")
def drain(profile_path: str, reason: str, wait: bool, as_json: bool) -> int:
    """Take the host out of its fleet's rotation: the readiness path answers 503; instances keep serving."""
    profile = _profile(profile_path) if wait else None
    state, changed = _write(checked_reason(reason))
    note = _tell_agent()
    if profile is not None:
        if note:
            raise UserError(f"{note}, so no listener can answer 503 yet; start it (systemctl start mipart-agent)")
        seen = readycheck_wait(profile.services, 503)
        flipped = seen if changed else state.since  # drained before: balancers have had since then
        time.sleep(max(0.0, profile.gpus.drain_notice - (time.time() - flipped)))
    if as_json:
        click.echo(json.dumps({"drained": True, **state.to_json(), "changed": changed}))
    else:
        said = "drained" if changed else "already drained"
        click.echo(f"{said} since {state.to_json()['since']}: {state.reason}" + (f" ({note})" if note else ""))
    return 0


@click.command("undrain")
@profile_option
@click.option("--json", "as_json", is_flag=True, help="Print the drain state as JSON.")
def undrain(profile_path: str, as_json: bool) -> int:
    """Put the host back into its fleet's rotation, and wait until every listener answers 200 on the readiness path."""
    from mipart.paths import drain_path

    path = drain_path()
    profile = _profile(profile_path)
    try:
        changed = remove_drain(path)
    except OSError as exc:
        raise UserError(f"cannot remove {path} ({exc.strerror}); run mipart undrain as root") from None
    note = _tell_agent()
    if not note:
        readycheck_wait(profile.services, 200)
    if as_json:
        click.echo(json.dumps({"drained": False, "changed": changed}))
    else:
        said = "undrained" if changed else "not drained"
        click.echo(f"{said}: every listener answers 200 on {READY_PATH}" if not note else f"{said} ({note})")
    return 0


def readycheck_wait(services, want: int) -> float:
    from mipart import readycheck

    return readycheck.wait_for(tuple(services), want, WAIT_LIMIT)
