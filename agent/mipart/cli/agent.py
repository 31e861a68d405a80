"""`mipart agent`: the daemon behind mipart-agent.service."""

from __future__ import annotations

import click

from mipart.cli import profile_option
from mipart.runners import RUNNERS


@click.command("agent")
@profile_option
@click.option(
    "--runner",
    "runner_kind",
    type=click.Choice(sorted(RUNNERS)),
    default="systemd",
    show_default=True,
    help="Who runs instances: systemd units, or local processes (demo, tests).",
)
@click.option(
    "--stop-on-exit", is_flag=True, help="Stop instances and nginx when the agent exits (process runner only)."
)
def agent(profile_path: str, runner_kind: str, stop_on_exit: bool) -> int:
    """Run the mipart agent: instances, nginx and readiness for the profile."""
    from mipart.lean import refuse_unused_modules

    refuse_unused_modules()  # first: asyncio would load OpenSSL
    import asyncio

    from mipart.daemon import loop
    from mipart.daemon.agent import Agent
    from mipart.gpu import sysfs_root
    from mipart.log import get_logger
    from mipart.paths import run_dir
    from mipart.runners import make_runner

    if stop_on_exit and runner_kind != "process":
        from mipart.runners.systemd import UNITS_OUTLIVE_THE_AGENT

        raise click.UsageError(f"--stop-on-exit works with --runner process only: {UNITS_OUTLIVE_THE_AGENT}")
    base = run_dir()
    base.mkdir(parents=True, exist_ok=True)
    runner = make_runner(runner_kind, base)
    instance = Agent(profile_path, runner, base, sysfs_root(), get_logger("mipart.agent"), stops_instances=stop_on_exit)
    try:
        asyncio.run(loop.run(instance))
    finally:
        if stop_on_exit:
            runner.shutdown(instance.nginx)
    return 0
