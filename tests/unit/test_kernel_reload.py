"""What a driver reload does on the real kernel, through the real CLI on simulated hosts: the
memory request is per XGMI hive (finding 9)."""

from __future__ import annotations

import json

import pytest
from conftest import create_sim


@pytest.mark.parametrize(
    "hives, requests",
    [(2, [0, 4]), (0, list(range(8)))],
    ids=["two-hives", "no-hive"],
)
def test_the_memory_request_is_written_once_per_hive(tmp_path, hives, requests):
    """hive->requested_nps_mode: a request switches its own hive only, so each hive gets one."""
    host = create_sim(tmp_path, hives=hives)
    profile = host.profile("gpus: {compute: DPX, memory: NPS2}\n")
    plan = json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)
    memory = [w["gpu"] for w in plan["writes"] if w["attribute"] == "current_memory_partition"]
    assert memory == requests
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert [(g["compute"], g["memory"]) for g in host.state()["gpus"]] == [("DPX", "NPS2")] * 8
    assert host.counters()["reloads"] == 1


@pytest.mark.parametrize(
    "place, where",
    [
        ("etc/modprobe.d/amdgpu.conf", "{root}/etc/modprobe.d/amdgpu.conf:2"),
        ("proc/cmdline", "the kernel command line ({root}/proc/cmdline)"),
    ],
)
def test_a_reload_that_would_leave_the_gpus_out_is_refused_before_any_write(tmp_path, place, where):
    """Finding 2: the value the next load reads (modprobe.d, the kernel command line), not the loaded one."""
    host = create_sim(tmp_path)
    path = host.root / place
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# partition at boot\noptions amdgpu user_partt_mode=4\n"
        if place.endswith(".conf")
        else "amdgpu.user_partt_mode=4\n"
    )
    done = host.run("partition", "apply", "--profile", host.profile("gpus: {compute: DPX, memory: NPS2}\n"))
    assert done.returncode == 1
    assert done.stderr == (
        "mipart: a driver reload into NPS2 would leave the GPUs out: amdgpu.user_partt_mode=CPX, set in "
        f"{where.format(root=host.root)}, CPX does not run under NPS2 on GPU 0 (0000:05:00.0), so GPU init fails "
        "(gfx_v9_4_3_cp_resume) and the GPUs do not come back; set it to one that runs under NPS2 (DPX) or to -2 "
        "(AUTO), or remove it; nothing was written or reloaded\n"
    )
    assert host.counters() == {"writes": 0, "reloads": 0}


def test_a_request_whose_reload_failed_is_shown_as_pending_until_a_reload_applies_it(tmp_path):
    """The kernel cannot withdraw a memory request: mipart remembers the one it placed (finding 4)."""
    host = create_sim(tmp_path)
    profile = host.profile("gpus: {compute: DPX, memory: NPS2}\n")
    failed = host.run("partition", "apply", "--profile", profile, env={"MIPART_RELOAD_CMD": "exit 1"})
    assert failed.returncode == 1 and host.state()["pending_memory"] == {"0": "NPS2"}
    plan = host.run("partition", "plan", "--profile", profile).stdout.splitlines()
    assert plan[-1].startswith("pending: a memory request for NPS2 mipart wrote on GPU 0 (0000:05:00.0) is pending")
    assert host.run("partition", "apply", "--profile", profile).returncode == 0
    assert json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)["pending_memory"] is None
    assert not (host.run_dir / "pending-memory.json").exists()
