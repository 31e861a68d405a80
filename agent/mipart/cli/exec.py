"""`mipart exec N`: the ExecStart of mipart-vllm@N (the launcher); `mipart exec-nginx`, mipart-nginx's."""

from __future__ import annotations

import click


@click.command("exec")
@click.argument("number", type=click.IntRange(0, 1023))
@click.option("--cleanup", is_flag=True, help="Remove the instance's container (ExecStopPost).")
def exec_instance(number: int, cleanup: bool) -> int:
    """Run the server of instance NUMBER in the foreground (used by mipart-vllm@.service)."""
    from mipart.serving.launcher import launch

    return launch(number, cleanup)


@click.command("exec-nginx")
def exec_nginx() -> None:
    """Run mipart's nginx in the foreground, taking over a killed master's sockets (used by mipart-nginx.service)."""
    from mipart.nginx.launcher import exec_nginx as run

    run()
