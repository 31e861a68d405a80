"""`mipart exec N`: the ExecStart of mipart-vllm@N (the launcher)."""

from __future__ import annotations

import click


@click.command("exec")
@click.argument("number", type=click.IntRange(0, 1023))
@click.option("--cleanup", is_flag=True, help="Remove the instance's container (ExecStopPost).")
def exec_instance(number: int, cleanup: bool) -> int:
    """Run the server of instance NUMBER in the foreground (used by mipart-vllm@.service)."""
    from mipart.serving.launcher import launch

    return launch(number, cleanup)

