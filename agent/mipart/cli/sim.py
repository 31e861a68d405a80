"""`mipart sim ...`: create and poke a simulated host, so tests and demos can run the agent
against it (MIPART_SYSFS_ROOT=DIR) and play the parts of GPU users, resets and reloads."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import click

from mipart.cli import Choice
from mipart.gpu.modes import COMPUTE_MODES, MEMORY_MODES, USER_PARTT_MODE
from mipart.gpu.pair_tables import MAINLINE, RULE_SETS
from mipart.gpu.parts import MODELS
from mipart.sim import kernel, users
from mipart.sim.state import read_state
from mipart.sim.users import KFD_LOCKS

sim_dir = click.argument("root", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
gpu_index = click.argument("gpu", type=int)


@click.group()
def sim() -> None:
    """Simulated AMD Instinct host: a sysfs tree plus the driver's partitioning rules."""


@sim.command()
@sim_dir
@click.option("--model", type=click.Choice(sorted(MODELS), case_sensitive=False), default="mi300x", show_default=True)
@click.option("--gpus", type=int, default=8, show_default=True)
@click.option("--compute", type=click.Choice(COMPUTE_MODES, case_sensitive=False), default="SPX", show_default=True)
@click.option("--memory", type=click.Choice(MEMORY_MODES, case_sensitive=False), default="NPS1", show_default=True)
@click.option(
    "--rules",
    type=Choice(sorted(RULE_SETS), aliases={"rocm-seed000": "rocm-mi300x"}),
    default=MAINLINE,
    show_default=True,
    help="The kernel's compute/memory pair table: mainline amdgpu, or a ROCm (amdgpu-dkms) MI300X host's, where QPX "
    "and CPX run under NPS2.",
)
@click.option(
    "--partition-config/--no-partition-config",
    default=True,
    show_default=True,
    help="Whether the kernel has compute_partition_config/ (older kernels do not).",
)
@click.option("--bmc-ast", is_flag=True, help="A BMC's `ast` DRM driver is loaded and takes a DRM minor.")
@click.option("--sriov-vf", is_flag=True, help="The GPUs are SR-IOV VFs: a compute write succeeds and changes nothing.")
@click.option(
    "--hives",
    type=int,
    default=1,
    show_default=True,
    help="XGMI hives the GPUs form (split evenly in PCI order); a memory request switches its hive only. 0: none.",
)
@click.option(
    "--kfd-lock",
    type=click.Choice(KFD_LOCKS),
    default=KFD_LOCKS[0],
    show_default=True,
    help="global: an older kernel's, where any KFD process refuses every compute switch.",
)
@click.option(
    "--busy-after-exit",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Compute switches of a GPU refused with EBUSY after its KFD user exits (6.17-stable's teardown).",
)
def create(root: Path, model: str, gpus: int, compute: str, memory: str, **kernel_options: object) -> None:
    """Make DIR a simulated host; point the agent at it with MIPART_SYSFS_ROOT=DIR."""
    kernel.create(root, model, gpus, compute, memory, **kernel_options)


@sim.command()
@sim_dir
@click.pass_context
def reload(ctx: click.Context, root: Path) -> None:
    """Unload and load amdgpu: apply a pending memory mode, reset compute modes."""
    try:
        kernel.reload(root)
    except subprocess.CalledProcessError as exc:
        click.echo(exc.stderr, nl=False, err=True)
        ctx.exit(exc.returncode)


@sim.command()
@sim_dir
@gpu_index
@click.option("--pid", type=int, default=None, help="Holder's PID [default: the calling shell].")
def hold(root: Path, gpu: int, pid: int | None) -> None:
    """Make a process a ROCm user of physical GPU GPU (one that opens no device files under DIR)."""
    kernel.hold(root, gpu, os.getppid() if pid is None else pid)


@sim.command()
@sim_dir
@click.argument("gpu", type=int, required=False)
@click.option("--pid", type=int, default=None)
def release(root: Path, gpu: int | None, pid: int | None) -> None:
    """Drop holds (on GPU and/or by --pid; all holds when neither is given)."""
    kernel.release(root, gpu, pid)


@sim.command()
@sim_dir
@gpu_index
@click.option("--on/--off", "on", required=True, help="Start or finish a GPU reset.")
def reset(root: Path, gpu: int, on: bool) -> None:
    """Mark GPU as resetting (compute writes fail with EPERM) or done."""
    kernel.set_resetting(root, gpu, on)


@sim.command()
@sim_dir
@click.option("--json", "as_json", is_flag=True, help="Print the whole state as JSON.")
def show(root: Path, as_json: bool) -> None:
    """Print the simulated host: GPUs, pending memory mode, holders, counters."""
    kernel.refresh_users(root)
    state = read_state(root)
    if as_json:
        click.echo(json.dumps(asdict(state), indent=2))
        return
    partt = {number: name for name, number in USER_PARTT_MODE.items()}[state.user_partt_mode]
    click.echo(
        f"model {state.model}, {len(state.gpus)} GPUs, user_partt_mode {state.user_partt_mode} ({partt}), rules "
        f"{state.rules}"
    )
    for i, gpu in enumerate(state.gpus):
        line = f"GPU {i} {gpu['bdf']} {gpu['compute']} {gpu['memory']}"
        holders = users.holders_of(state, i)
        if holders:
            line += f"; held by {', '.join(map(str, holders))}"
        if i in state.resetting:
            line += "; resetting"
        click.echo(line)
    pending = ", ".join(f"{mode} (hive {hive})" for hive, mode in sorted(state.pending_memory.items()))
    click.echo(f"pending memory: {pending or 'none'}")
    click.echo(f"counters: writes={state.counters['writes']} reloads={state.counters['reloads']}")


@sim.command(context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def engine(args: tuple[str, ...]) -> int:
    """Fake vLLM-like engine, a test double (`mipart sim engine --help` for its flags)."""
    from mipart.sim.engine.server import main

    return main(list(args))


@sim.command(name="gpu-signals")
@sim_dir
@gpu_index
@click.option("--uncorrectable", type=click.IntRange(0), default=0, help="Add this many uncorrectable RAS errors.")
@click.option("--correctable", type=click.IntRange(0), default=0, help="Add this many correctable RAS errors.")
@click.option("--block", default="umc", show_default=True, help="RAS block the errors are counted in.")
@click.option("--temperature", type=float, default=None, help="Set the junction temperature (degrees Celsius).")
@click.option("--power", type=float, default=None, help="Set the average power (watts).")
def gpu_signals(
    root: Path,
    gpu: int,
    uncorrectable: int,
    correctable: int,
    block: str,
    temperature: float | None,
    power: float | None,
) -> None:
    """Make physical GPU GPU report RAS errors, a temperature or a power draw."""
    from mipart.sim import gpu_signals as signals

    if uncorrectable or correctable:
        ue, ce = signals.add_errors(root, gpu, block, uncorrectable, correctable)
        click.echo(f"GPU {gpu} {block}: ue {ue}, ce {ce}")
    signals.set_sensors(root, gpu, temperature, power)
