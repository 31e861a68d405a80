"""The simulator holds GPUs the way the kernel does: a process with a simulated GPU's device
files open is a KFD user of it, until it closes them or exits; and a simulated root never
runs the real driver's reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import AGENT, SimRoot, mipart

from mipart.gpu import open_backend
from mipart.gpu.driver import ReloadError, reloads_real_driver
from mipart.names import DEVICE_CGROUP_VAR, DEVICES_VAR, RELOAD_CMD_VAR, RUN_DIR_VAR, SYSFS_ROOT_VAR
from mipart.sim import kernel
from mipart.sim.state import read_state


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "sys"
    kernel.create(root, compute="DPX", memory="NPS2")  # GPU k shows render minors 128+8k and 129+8k
    return root


@pytest.fixture
def seed_root(tmp_path):
    """As `root`, with seed 000's ROCm rules, under which CPX runs with NPS2 (mainline refuses it)."""
    root = tmp_path / "sys"
    kernel.create(root, compute="DPX", memory="NPS2", rules="rocm-mi300x")
    return root


def devices(root, *minors: int) -> list[str]:
    return [str(root / "dev/kfd"), *(str(root / f"dev/dri/renderD{m}") for m in minors)]


def confined(paths: list[str]) -> dict[str, str]:
    """The device cgroup a unit's DeviceAllow= gives (as the launcher declares it on a simulated host)."""
    return {DEVICE_CGROUP_VAR: ":".join(paths)}


def test_a_kfd_user_holds_the_gpus_its_device_cgroup_allows(seed_root, opener):
    root = seed_root
    proc = opener(devices(root, 136), confined(devices(root, 136)))  # GPU 1, partition 0
    backend = open_backend(root)
    state = backend.discover()
    users = backend.gpu_users(state)
    assert [(u.pid, u.physical_indices) for u in users] == [(proc.pid, (1,))]
    # The KFD tree shows it as the kernel would: one vram_<gpu_id> per partition its cgroup allows.
    entry = root / "class/kfd/kfd/proc" / str(proc.pid)
    gpu_id = next(g.gpu_id for g in state.logical if g.render_minor == 136)
    assert os.listdir(entry) == [f"vram_{gpu_id}"]
    with pytest.raises(OSError) as busy:
        kernel.kernel_write(root, state.physical[1].bdf, "current_compute_partition", "CPX")
    assert busy.value.errno == 16  # EBUSY
    kernel.kernel_write(root, state.physical[0].bdf, "current_compute_partition", "CPX")  # another GPU: free
    with pytest.raises(subprocess.CalledProcessError) as in_use:
        kernel.reload(root)
    assert "Module amdgpu is in use" in in_use.value.stderr


def test_closing_by_exit_frees_the_gpu(root, opener):
    proc = opener(devices(root, 128))
    backend = open_backend(root)
    assert backend.gpu_users(backend.discover())
    proc.kill()
    proc.wait()
    assert backend.gpu_users(backend.discover()) == []
    kernel.reload(root)
    assert read_state(root).counters["reloads"] == 1 and read_state(root).openers == {}


@pytest.mark.parametrize("minors", [(), (136,)], ids=["kfd-alone", "kfd-and-one-render-node"])
def test_an_unconfined_kfd_user_holds_every_gpu_whatever_it_opened(seed_root, opener, minors):
    """A process that opens /dev/kfd gets every GPU its device cgroup allows: unconfined, all of them."""
    root = seed_root
    proc = opener(devices(root, *minors))
    backend = open_backend(root)
    assert [(u.pid, u.physical_indices) for u in backend.gpu_users(backend.discover())] == [(proc.pid, tuple(range(8)))]
    with pytest.raises(OSError) as busy:
        kernel.kernel_write(root, backend.discover().physical[5].bdf, "current_compute_partition", "CPX")
    assert busy.value.errno == 16


@pytest.mark.parametrize("node", ["dri/renderD137", "dri/card9"])
def test_a_drm_node_opener_is_no_kfd_user_but_keeps_the_driver_in_use(seed_root, opener, node):
    """amd-smi's library and a metrics exporter open render nodes without /dev/kfd: no EBUSY, but no unload."""
    root = seed_root
    proc = opener([str(root / "dev" / node)])
    backend = open_backend(root)
    assert backend.gpu_users(backend.discover()) == []
    kernel.kernel_write(root, backend.discover().physical[1].bdf, "current_compute_partition", "CPX")
    with pytest.raises(subprocess.CalledProcessError) as in_use:
        kernel.reload(root)
    assert "Module amdgpu is in use" in in_use.value.stderr
    proc.kill()
    proc.wait()
    kernel.reload(root)


def test_another_hosts_devices_are_not_this_hosts_users(tmp_path, root, opener):
    other = tmp_path / "other"
    kernel.create(other, compute="DPX", memory="NPS2")
    opener(devices(other, 128))
    backend = open_backend(root)
    assert backend.gpu_users(backend.discover()) == []


def test_sim_show_names_openers(root, opener):
    proc = opener(devices(root, 144), confined(devices(root, 144)))  # GPU 2
    shown = mipart("sim", "show", root)
    assert shown.returncode == 0, shown.stderr
    assert f"GPU 2 0000:46:00.0 DPX NPS2; held by {proc.pid}" in shown.stdout.splitlines()


def test_the_backend_names_the_devices_for_the_launcher_under_a_simulated_root_only(root, tmp_path):
    spec_devices = ("/dev/kfd", "/dev/dri/renderD136")
    assert open_backend(root).device_env(spec_devices) == {
        DEVICES_VAR: f"{root}/dev/kfd:{root}/dev/dri/renderD136",
        DEVICE_CGROUP_VAR: f"{root}/dev/kfd:{root}/dev/dri/renderD136",  # what its unit would allow it
        SYSFS_ROOT_VAR: str(root),  # the root the fake engine enumerates GPUs from
    }
    (tmp_path / "plain").mkdir()
    assert open_backend(tmp_path / "plain").device_env(spec_devices) == {}
    assert open_backend(tmp_path.parent / "sys-not-there").device_env(spec_devices) == {}


def test_fake_engine_holds_its_devices_and_refuses_a_missing_one(root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(AGENT), DEVICES_VAR: ":".join(devices(root, 137))}
    env.update(confined(devices(root, 137)))
    argv = [sys.executable, "-m", "mipart.sim.engine", "--port", "9", "--startup-delay", "60"]
    engine = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "holding 2 GPU device files" in engine.stderr.readline()
        backend = open_backend(root)
        assert [(u.pid, u.physical_indices) for u in backend.gpu_users(backend.discover())] == [(engine.pid, (1,))]
    finally:
        engine.kill()
        engine.wait()
    missing = subprocess.run(
        argv, env={**env, DEVICES_VAR: str(root / "dev/dri/renderD999")}, capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 1
    assert f"cannot open GPU device {root}/dev/dri/renderD999: No such file or directory" in missing.stderr


@pytest.mark.parametrize(
    "command, real",
    [
        ("modprobe -r amdgpu && modprobe amdgpu", True),
        ("/sbin/modprobe -r amdgpu", True),
        ("sudo rmmod amdgpu;insmod x.ko", True),
        ("sh -c 'modprobe amdgpu'", True),
        ("mipart sim reload /var/lib/mipart-sim", False),
        ("echo modprobe-free && true", False),
    ],
)
def test_real_driver_reload_commands_are_recognised(command, real):
    assert reloads_real_driver(command) is real


def test_a_simulated_root_refuses_the_real_reload_before_any_write(root, monkeypatch):
    monkeypatch.setenv("MIPART_RELOAD_CMD", "modprobe -r amdgpu && modprobe amdgpu")
    with pytest.raises(ReloadError):
        open_backend(root).reload_command()
    sim = SimRoot(root.parent)
    profile = sim.profile("gpus: {compute: CPX, memory: NPS4}\n")  # needs a reload
    done = sim.run("partition", "apply", "--profile", profile, env={RELOAD_CMD_VAR: "/sbin/modprobe -r amdgpu"})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"mipart: MIPART_RELOAD_CMD='/sbin/modprobe -r amdgpu' would reload the real amdgpu driver, but {root} is a simulated host; "
        f"unset MIPART_RELOAD_CMD (the simulator reloads itself) or set it to `mipart sim reload {root}`"
    ]
    assert read_state(root).counters == {"writes": 0, "reloads": 0}


def test_partition_apply_refuses_while_mipart_instances_hold_the_gpus(seed_root, opener, tmp_path):
    """The agent serves on them: the one line says what repartitions while serving."""
    root = seed_root
    for number, minor in ((0, 128), (1, 129), (2, 136), (3, 137), (4, 144)):
        opener(devices(root, minor), instance=number)
    sim = SimRoot(root.parent)
    done = sim.run("partition", "apply", "--profile", sim.profile("gpus: {compute: CPX, memory: NPS2}\n"))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "mipart: mipart's own instances hold these GPUs (mipart-vllm@0, mipart-vllm@1, mipart-vllm@2 and 2 more), "
        "so the agent is serving on them; apply gpus: while serving with `systemctl reload mipart-agent` "
        "(it drains and stops them, applies the layout and starts them on it); nothing was changed"
    ]
    assert read_state(root).counters == {"writes": 0, "reloads": 0}
    record = json.loads((tmp_path / "run/partition.json").read_text())
    assert record["ok"] is False and "systemctl reload mipart-agent" in record["error"]


def test_a_process_that_only_carries_an_instances_tags_is_not_one(seed_root, opener, tmp_path):
    """Any user can put MIPART_INSTANCE in an environment; only the launcher's record makes an instance."""
    root = seed_root
    tags = {"MIPART_INSTANCE": "0", RUN_DIR_VAR: str(tmp_path / "run")}
    proc = opener(devices(root, 128), {**confined(devices(root, 128)), **tags})
    sim = SimRoot(root.parent)
    done = sim.run("partition", "apply", "--profile", sim.profile("gpus: {compute: CPX, memory: NPS2}\n"))
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"mipart: GPUs in use: PID {proc.pid} (python, no unit) on GPU 0; nothing was changed"
    )


def test_a_process_holding_a_gpu_it_opened_is_waited_for_once_stopped(seed_root, opener, tmp_path):
    """apply(instances_stopped=True), as the agent calls it: servers still exiting get a moment."""
    root = seed_root
    from mipart.log import get_logger
    from mipart.partition.apply import apply
    from mipart.profile.schema import GpuSpec

    proc = opener(devices(root, 128), instance=0)
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill {proc.pid}"])  # a server that takes a moment to exit
    try:
        result = apply(
            GpuSpec(compute="CPX", memory="NPS2"), open_backend(root), get_logger("test"), instances_stopped=True
        )
    finally:
        killer.wait(timeout=5)
    assert result.logical_gpus == 64 and read_state(root).counters["writes"] == 8


def test_any_change_of_the_host_forgets_users_that_exited(root, opener):
    """Even one that re-renders nothing of its own (a reset): the KFD tree must not keep a dead user."""
    proc = opener(devices(root, 128))
    backend = open_backend(root)
    assert backend.gpu_users(backend.discover())  # the KFD tree shows it
    proc.kill()
    proc.wait()
    kernel.set_resetting(root, 5, True)
    assert os.listdir(root / "class/kfd/kfd/proc") == []
