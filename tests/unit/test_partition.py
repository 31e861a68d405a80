"""The partition engine through the real CLI, on simulated 8-GPU hosts of each model.

Write and reload counts come from the simulator (which counts every sysfs write and
driver reload it receives), not from mipart's own report.
"""

from __future__ import annotations

import json

import pytest
from conftest import SimRoot, create_sim, error_lines, mipart

MODELS = ["mi300x", "mi325x", "mi355x"]
ROCM_MI300X = "rocm-mi300x"  # seed 000's ROCm table: CPX runs under NPS2 (mainline refuses that pair)


def logical_count(host: SimRoot) -> int:
    plan = json.loads(host.run("partition", "plan", "--json", "--profile", host.profile("")).stdout)
    return len(plan["logical_gpus"])


@pytest.mark.parametrize("model", MODELS)
def test_spx_to_dpx_nps2_takes_one_reload_and_gives_16(tmp_path, model):
    host = create_sim(tmp_path, model=model)
    profile = host.profile("gpus: {compute: DPX, memory: NPS2}\n")
    assert host.run("partition", "assert", "--profile", profile).returncode == 1
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "applied: 1 writes, 1 reloads; 16 logical GPUs"
    assert host.counters() == {"writes": 1, "reloads": 1}  # AUTO after the reload already gives DPX
    record = json.loads((tmp_path / "run/partition.json").read_text())
    assert record["ok"] is True and record["result"]["writes"] == 1 and record["result"]["reloads"] == 1
    assert logical_count(host) == 16
    assert host.run("partition", "assert", "--profile", profile).returncode == 0


@pytest.mark.parametrize("model", MODELS)
def test_to_cpx_nps4_gives_64(tmp_path, model):
    host = create_sim(tmp_path, model=model)
    profile = host.profile("gpus: {compute: CPX, memory: NPS4}\n")
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert host.counters()["reloads"] == 1
    assert logical_count(host) == 64
    assert host.run("partition", "assert", "--profile", profile).returncode == 0


@pytest.mark.parametrize("model", MODELS)
def test_dpx_nps2_to_cpx_nps2_needs_no_reload(tmp_path, model):
    host = create_sim(tmp_path, model=model, compute="DPX", memory="NPS2", rules=ROCM_MI300X)
    profile = host.profile("gpus: {compute: CPX, memory: NPS2}\n")
    plan = json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)
    assert plan["reload"] is False
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert host.counters() == {"writes": 8, "reloads": 0}
    assert logical_count(host) == 64


@pytest.mark.parametrize("model", MODELS)
def test_second_apply_makes_no_write_and_no_reload(tmp_path, model):
    host = create_sim(tmp_path, model=model, rules=ROCM_MI300X)
    profile = host.profile("gpus:\n  compute: DPX\n  memory: NPS2\n  overrides: [{select: [6, 7], compute: CPX}]\n")
    assert host.run("partition", "apply", "--profile", profile).returncode == 0
    first = host.counters()
    assert first == {"writes": 3, "reloads": 1}  # memory request + CPX on GPUs 6 and 7
    again = host.run("partition", "apply", "--profile", profile)
    assert again.returncode == 0
    assert again.stdout.strip() == "applied: 0 writes, 0 reloads; 28 logical GPUs"
    assert host.counters() == first


def test_busy_gpu_is_refused_with_pid_and_nothing_changes(tmp_path):
    host = create_sim(tmp_path, model="mi300x")
    holder = __import__("subprocess").Popen(["sleep", "60"])
    try:
        assert host.run("sim", "hold", host.root, "3", "--pid", str(holder.pid)).returncode == 0
        before = host.state()
        done = host.run("partition", "apply", "--profile", host.profile("gpus: {compute: DPX, memory: NPS2}\n"))
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1] == (
            f"mipart: GPUs in use: PID {holder.pid} (sleep, no unit) on GPU 3 (a driver reload needs every /dev/kfd, "
            "card and render node of it closed); nothing was changed: stop these processes, or list their units in "
            "gpus.client_services, then rerun `mipart partition apply`"
        )
        assert "Traceback" not in done.stderr
        assert host.state() == before
    finally:
        holder.kill()
        holder.wait()


def test_busy_gpu_outside_the_change_does_not_block_a_compute_write(tmp_path):
    """Without a reload only the GPUs being written must be free."""
    host = create_sim(tmp_path, model="mi300x", compute="DPX", memory="NPS2", rules=ROCM_MI300X)
    assert host.run("sim", "hold", host.root, "0", "--pid", "1").returncode == 0
    profile = host.profile("gpus: {compute: DPX, memory: NPS2, overrides: [{select: [5], compute: CPX}]}\n")
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert host.counters() == {"writes": 1, "reloads": 0}


def test_invalid_mode_pair_is_caught_before_any_write(tmp_path):
    host = create_sim(tmp_path, model="mi300x")
    profile = host.profile("gpus: {compute: SPX, memory: NPS4}\n")
    assert host.run("validate", profile).returncode == 1
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"{profile}:2:17: gpus.compute SPX cannot run under memory mode NPS4 (the driver rejects it); SPX needs NPS1"
    )
    assert host.counters() == {"writes": 0, "reloads": 0}


def test_crash_between_memory_write_and_reload_is_completed_by_a_rerun(tmp_path):
    host = create_sim(tmp_path, model="mi300x")
    profile = host.profile("gpus: {compute: CPX, memory: NPS4}\n")
    # The reload command kills mipart itself: a crash right after the memory request.
    crashed = host.run("partition", "apply", "--profile", profile, env={"MIPART_RELOAD_CMD": "kill -9 $PPID"})
    assert crashed.returncode == -9
    assert host.state()["pending_memory"] == {"0": "NPS4"}
    assert host.counters() == {"writes": 1, "reloads": 0}
    assert host.run("partition", "assert", "--profile", profile).returncode == 1
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert host.run("partition", "assert", "--profile", profile).returncode == 0
    assert host.counters()["reloads"] == 1
    assert logical_count(host) == 64


def test_failed_reload_says_what_happened_and_a_rerun_finishes(tmp_path):
    host = create_sim(tmp_path, model="mi300x")
    profile = host.profile("gpus: {compute: DPX, memory: NPS2}\n")
    done = host.run(
        "partition",
        "apply",
        "--profile",
        profile,
        env={"MIPART_RELOAD_CMD": "echo 'modprobe: FATAL: Module amdgpu is in use.' >&2; exit 1"},
    )
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert lines[0] == (
        "mipart: driver reload `echo 'modprobe: FATAL: Module amdgpu is in use.' >&2; exit 1` failed (exit 1): "
        "modprobe: FATAL: Module amdgpu is in use.; the memory mode request stays pending: free the GPUs and rerun `mipart partition apply`"
    )
    assert lines[1:3] == ["the host now:", "  GPU 0 (0000:05:00.0): SPX/NPS1, the profile wants DPX/NPS2"]
    assert lines[-2].startswith("  a memory request for NPS2 mipart wrote on GPU 0 (0000:05:00.0) is pending")
    pending = json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)["pending_memory"]
    assert pending["memory"] == "NPS2" and pending["bdfs"] == ["0000:05:00.0"]
    assert host.run("partition", "apply", "--profile", profile).returncode == 0
    assert host.run("partition", "assert", "--profile", profile).returncode == 0


def test_gpu_reset_in_progress_is_reported_as_the_kernel_says(tmp_path):
    host = create_sim(tmp_path, model="mi300x", compute="DPX", memory="NPS2", rules=ROCM_MI300X)
    assert host.run("sim", "reset", host.root, "2", "--on").returncode == 0
    done = host.run("partition", "apply", "--profile", host.profile("gpus: {compute: CPX, memory: NPS2}\n"))
    assert done.returncode == 1
    # During a reset the kernel refuses the GPU's partition attributes, reads included (finding 12).
    assert done.stderr == (
        f"mipart: {host.root}/bus/pci/devices/0000:46:00.0/current_compute_partition: cannot read: GPU reset in "
        "progress (the kernel refuses it until the reset is done); retry after it finishes\n"
    )
    assert host.counters() == {"writes": 0, "reloads": 0}


def test_assert_prints_one_line_per_differing_gpu(tmp_path):
    host = create_sim(tmp_path, model="mi300x", compute="DPX", memory="NPS2", rules=ROCM_MI300X)
    profile = host.profile("gpus: {compute: DPX, memory: NPS2, overrides: [{select: [1, 4], compute: CPX}]}\n")
    done = host.run("partition", "assert", "--profile", profile)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "GPU 1 (0000:26:00.0): compute DPX, want CPX",
        "GPU 4 (0000:85:00.0): compute DPX, want CPX",
    ]


def test_export_is_a_valid_profile_that_asserts(tmp_path):
    host = create_sim(tmp_path, model="mi325x", compute="DPX", memory="NPS2", rules=ROCM_MI300X)
    assert (
        host.run(
            "partition",
            "apply",
            "--profile",
            host.profile("gpus: {compute: DPX, memory: NPS2, overrides: [{select: [7], compute: CPX}]}\n"),
        ).returncode
        == 0
    )
    exported = host.run("partition", "export")
    assert exported.returncode == 0
    path = tmp_path / "exported.yaml"
    path.write_text(exported.stdout)
    assert host.run("validate", path).returncode == 0
    assert host.run("partition", "assert", "--profile", path).returncode == 0
    assert "overrides:\n    - {select: [7], compute: CPX}" in exported.stdout


def test_plan_lists_writes_reload_and_logical_gpus(tmp_path):
    host = create_sim(tmp_path, model="mi300x")
    done = host.run("partition", "plan", "--profile", host.profile("gpus: {compute: QPX, memory: NPS4}\n"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[0]
        == "partition rules for GPUs 0-7 (kernel): SPX: NPS1; DPX: NPS1, NPS2; QPX: NPS1, NPS4; CPX: NPS1, NPS4"
    )
    assert lines[2].split() == [
        "0",
        "0000:05:00.0",
        "SPX",
        "->",
        "QPX",
        "NPS1",
        "->",
        "NPS4",
        "current_memory_partition=NPS4,",
        "after",
        "reload:",
        "current_compute_partition=QPX",
    ]
    assert lines[-2] == "9 writes, 1 driver reload (memory mode is applied hive-wide at reload)"
    assert lines[-1] == "result: 32 logical GPUs (0-3,8-11,16-19,24-27,32-35,40-43,48-51,56-59)"


def test_selecting_a_missing_gpu_is_one_clear_line(tmp_path):
    host = create_sim(tmp_path, model="mi300x")
    done = host.run(
        "partition", "plan", "--profile", host.profile("gpus: {compute: DPX, memory: NPS2, select: [0, 9]}\n")
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "mipart: gpus.select/overrides name GPU 9, but this host has GPUs 0-7; select only GPUs that exist"
    )


def test_no_gpus_is_one_clear_line(tmp_path):
    done = mipart(
        "partition",
        "plan",
        "--profile",
        create_sim(tmp_path, model="mi300x").profile(""),
        env={"MIPART_SYSFS_ROOT": str(tmp_path / "empty")},
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "mipart: no AMD Instinct GPU with partition support found (is amdgpu loaded? is MIPART_SYSFS_ROOT right?)"
    )
