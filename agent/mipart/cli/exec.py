"""`mipart exec N`: the ExecStart of mipart-vllm@N (the launcher); `mipart exec-nginx [--front]`, mipart-nginx's
and mipart-nginx-front's."""

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
@click.option("--front", is_flag=True, help="The front layer, which holds clients' connections (mipart-nginx-front).")
def exec_nginx(front: bool) -> None:
    """Run mipart's nginx in the foreground, taking over a killed master's sockets (used by mipart-nginx.service)."""
    from mipart.nginx.files import BACK, FRONT
    from mipart.nginx.launcher import exec_nginx as run

    run(FRONT if front else BACK)
