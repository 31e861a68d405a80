"""Who holds a GPU as the kernel counts it, through the real CLI on simulated hosts (findings 3, 4, 8):
EBUSY after a holder exits, the older global KFD lock, render-node openers blocking a reload,
and a change that fails midway saying the layout the host is in and who holds the GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import create_sim, error_lines

from mipart.names import DEVICE_CGROUP_VAR


def comm(proc: subprocess.Popen) -> str:
    with open(f"/proc/{proc.pid}/comm") as name:
        return name.read().strip()


def test_ebusy_just_after_a_holder_exits_is_retried_within_a_bound(tmp_path, opener):
    """6.17-stable: EBUSY for a while after the process exits, its proc/<pid> already gone."""
    host = create_sim(tmp_path, busy_after_exit=3)
    gpu2 = [str(host.root / "dev/kfd"), str(host.root / "dev/dri/renderD144")]
    holder = opener(gpu2, {DEVICE_CGROUP_VAR: ":".join(gpu2)})
    assert f"held by {holder.pid}" in host.run("sim", "show", host.root).stdout  # the kernel knows its user
    holder.kill()
    holder.wait()
    done = host.run("partition", "apply", "--profile", host.profile("gpus: {select: [2], compute: DPX}\n"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("event='partition.busy_retry'") == 3
    assert [g["compute"] for g in host.state()["gpus"]][2] == "DPX"


def test_an_older_kernels_global_kfd_lock_is_named_with_its_holders(tmp_path, opener):
    """Before the 2025 per-device check any KFD process refuses every compute switch."""
    host = create_sim(tmp_path, kfd_lock="global")
    gpu0 = [str(host.root / "dev/kfd"), str(host.root / "dev/dri/renderD128")]
    holder = opener(gpu0, {DEVICE_CGROUP_VAR: ":".join(gpu0)})
    done = host.run("partition", "apply", "--profile", host.profile("gpus: {select: [5], compute: DPX}\n"))
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        "mipart: GPU 5 (0000:a6:00.0): current_compute_partition busy although no process holds this GPU: this kernel "
        "refuses a compute switch while any KFD process runs (kernels before the 2025 per-device check): "
        f"PID {holder.pid} ({comm(holder)}, no unit) on GPU 0; stop them, then rerun"
    ]
    assert host.counters()["reloads"] == 0 and [g["compute"] for g in host.state()["gpus"]] == ["SPX"] * 8


@pytest.mark.parametrize("node", ["renderD137", "card9"])
def test_a_drm_node_opener_is_named_before_the_memory_request_is_written(tmp_path, opener, node):
    """amd-smi's library opens every render node without /dev/kfd: the unload would fail, so nothing is written."""
    host = create_sim(tmp_path)
    holder = opener([str(host.root / "dev/dri" / node)])
    done = host.run("partition", "apply", "--profile", host.profile("gpus: {compute: DPX, memory: NPS2}\n"))
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"mipart: GPUs in use: PID {holder.pid} ({comm(holder)}, no unit) on GPU 0-7 (a driver reload needs every /dev/kfd, "
        "card and render node of it closed); nothing was changed: stop these processes, or list their units in "
        "gpus.client_services, then rerun `mipart partition apply`"
    ]
    assert host.counters() == {"writes": 0, "reloads": 0}
    assert host.state()["pending_memory"] == {}


def test_a_change_that_fails_midway_ends_with_the_layout_now_and_who_holds_the_gpu(tmp_path):
    """A GPU user appears after the check (here: while the driver reloads) and GPU 3 refuses its write."""
    host = create_sim(tmp_path)
    late = subprocess.Popen(["sleep", "300"])
    try:
        reload = f"{sys.executable} -m mipart sim reload {host.root} && {sys.executable} -m mipart sim hold {host.root} 3 --pid {late.pid}"
        profile = host.profile("gpus: {compute: QPX, memory: NPS4}\n")
        done = host.run("partition", "apply", "--profile", profile, env={"MIPART_RELOAD_CMD": reload})
    finally:
        late.kill()
        late.wait()
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert lines[0] == (
        f"mipart: GPU 3 (0000:65:00.0): current_compute_partition busy: PID {late.pid} (sleep, no unit) on GPU 3 "
        "holds the GPU; stop it, then rerun"
    )
    assert lines[1:] == [
        "the host now:",
        *(f"  GPU {k} ({bdf}): QPX/NPS4, as the profile wants" for k, bdf in enumerate(BDFS[:3])),
        *(f"  GPU {k} ({bdf}): CPX/NPS4, the profile wants QPX/NPS4" for k, bdf in enumerate(BDFS[3:], 3)),
        "next: do what the first line says, then rerun `mipart partition apply` (while mipart-agent serves: "
        "`systemctl reload mipart-agent`); it does only what is left",
    ]


BDFS = [f"0000:{bus}:00.0" for bus in ("05", "26", "46", "65", "85", "a6", "c6", "e5")]
