"""The simulated amdgpu driver refuses and applies exactly what docs/partitioning.md says the kernel does."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
from conftest import mipart

from mipart.errors import UserError
from mipart.gpu import discover, open_backend
from mipart.gpu.modes import USER_PARTT_MODE
from mipart.sim import kernel
from mipart.sim.state import read_state

COMPUTE = "current_compute_partition"
MEMORY = "current_memory_partition"
GPU3 = "0000:65:00.0"


@pytest.fixture
def make_root(tmp_path):
    """Makes the test's simulated root in process (kernel.create), with the given layout."""

    def make(**kwargs):
        root = tmp_path / "host"
        kernel.create(root, **kwargs)
        return root

    return make


def write_errno(root, bdf, attr, value):
    with pytest.raises(OSError) as caught:
        kernel.kernel_write(root, bdf, attr, value)
    return caught.value.errno


def modes(root):
    return [(g.compute, g.memory) for g in discover(root).physical]


def test_compute_switch_is_immediate_and_case_insensitive(make_root):
    root = make_root()
    kernel.kernel_write(root, GPU3, COMPUTE, " cpx\n")
    state = discover(root)
    assert state.physical[3].compute == "CPX"
    assert len(state.logical) == 7 + 8
    assert [lg.render_minor for lg in state.logical if lg.physical_index == 3] == list(range(152, 160))
    assert [lg.render_minor for lg in state.logical if lg.physical_index == 4] == [160]


@pytest.mark.parametrize(
    "memory, value",
    [
        ("NPS1", "XPX"),  # not a mode at all
        ("NPS1", "TPX"),  # a driver mode, but not for 8 XCCs
        ("NPS2", "SPX"),  # SPX needs NPS1
        ("NPS4", "DPX"),  # DPX needs NPS1 or NPS2
        ("NPS2", "QPX"),  # QPX needs NPS1 or NPS4 (driver rule)
    ],
)
def test_invalid_compute_mode_is_einval_and_changes_nothing(make_root, memory, value):
    root = make_root(compute={"NPS1": "SPX", "NPS2": "DPX", "NPS4": "CPX"}[memory], memory=memory)
    before = discover(root)
    assert write_errno(root, GPU3, COMPUTE, value) == errno.EINVAL
    assert discover(root) == before


def test_writing_the_current_mode_succeeds_without_a_switch(make_root, live_pids):
    P = live_pids(2)
    root = make_root(compute="DPX", memory="NPS2")
    kernel.hold(root, 3, pid=P[0])  # a no-op write is not refused even while held
    before = discover(root)
    kernel.kernel_write(root, GPU3, COMPUTE, "DPX")
    kernel.kernel_write(root, GPU3, MEMORY, "nps2")
    assert discover(root) == before


def test_held_gpu_is_ebusy_until_released(make_root, live_pids):
    P = live_pids(2)
    root = make_root()
    kernel.hold(root, 3, pid=P[0])
    assert write_errno(root, GPU3, COMPUTE, "DPX") == errno.EBUSY
    kernel.kernel_write(root, "0000:85:00.0", COMPUTE, "DPX")  # GPU 4 is free
    kernel.release(root, 3)
    kernel.kernel_write(root, GPU3, COMPUTE, "DPX")
    assert [c for c, _ in modes(root)] == ["SPX"] * 3 + ["DPX", "DPX"] + ["SPX"] * 3


def test_release_by_pid_and_gpu(make_root, live_pids):
    P = live_pids(2)
    root = make_root()
    kernel.hold(root, 1, pid=P[0])
    kernel.hold(root, 2, pid=P[0])
    kernel.hold(root, 2, pid=P[1])
    kernel.release(root, 2, pid=P[0])
    assert read_state(root).holders == {P[0]: [1], P[1]: [2]}
    kernel.release(root, pid=P[1])
    assert read_state(root).holders == {P[0]: [1]}
    kernel.release(root)
    assert read_state(root).holders == {}


def test_resetting_gpu_is_eperm_even_for_the_current_mode(make_root):
    root = make_root()
    kernel.set_resetting(root, 3, True)
    assert write_errno(root, GPU3, COMPUTE, "DPX") == errno.EPERM
    assert write_errno(root, GPU3, COMPUTE, "SPX") == errno.EPERM  # reset check comes first
    assert write_errno(root, GPU3, COMPUTE, "bogus") == errno.EINVAL  # parsing comes before it
    kernel.set_resetting(root, 3, False)
    kernel.kernel_write(root, GPU3, COMPUTE, "DPX")


def test_read_only_and_missing_attributes(make_root):
    root = make_root()
    assert write_errno(root, GPU3, "available_compute_partition", "SPX") == errno.EACCES
    assert write_errno(root, GPU3, "vendor", "0x1002") == errno.EACCES
    assert write_errno(root, GPU3, "no_such_attribute", "1") == errno.ENOENT
    assert write_errno(root, "0000:99:00.0", COMPUTE, "SPX") == errno.ENOENT


def test_memory_request_is_hive_wide_and_waits_for_reload(make_root):
    root = make_root()
    assert write_errno(root, GPU3, MEMORY, "NPS3") == errno.EINVAL
    kernel.kernel_write(root, GPU3, MEMORY, "NPS4")
    assert modes(root) == [("SPX", "NPS1")] * 8  # still reads the old mode
    assert read_state(root).pending_memory == {"0": "NPS4"}  # the request of hive 0, all 8 GPUs
    kernel.kernel_write(root, GPU3, MEMORY, "NPS1")  # the current mode: skipped, the request stays
    assert read_state(root).pending_memory == {"0": "NPS4"}

    kernel.reload(root)
    assert modes(root) == [("CPX", "NPS4")] * 8  # AUTO: NPS4 -> CPX, on every GPU
    assert len(discover(root).logical) == 64
    assert read_state(root).pending_memory == {}


def test_reload_resets_compute_from_nps_in_auto_mode(make_root):
    root = make_root(compute="DPX", memory="NPS1")
    kernel.kernel_write(root, GPU3, COMPUTE, "CPX")
    kernel.reload(root)
    assert modes(root) == [("SPX", "NPS1")] * 8


@pytest.mark.parametrize(
    "partt, pending, expected",
    [
        ("QPX", "NPS4", "QPX"),
        ("DPX", None, "DPX"),
    ],
)
def test_reload_takes_compute_from_user_partt_mode(make_root, partt, pending, expected):
    root = make_root(compute="SPX", memory="NPS1")
    kernel.set_user_partt_mode(root, USER_PARTT_MODE[partt])
    if pending:
        kernel.kernel_write(root, GPU3, MEMORY, pending)
    kernel.reload(root)
    assert [c for c, _ in modes(root)] == [expected] * 8


def test_a_user_partt_mode_the_new_memory_mode_refuses_fails_gpu_init(make_root):
    """gfx_v9_4_3_cp_resume returns -EINVAL: the GPUs do not come back until a load with a mode that runs."""
    root = make_root(compute="SPX", memory="NPS1")
    kernel.set_user_partt_mode(root, USER_PARTT_MODE["SPX"])
    kernel.kernel_write(root, GPU3, MEMORY, "NPS2")
    kernel.reload(root)
    state = discover(root)
    assert state.physical == () and state.logical == ()
    kernel.set_user_partt_mode(root, USER_PARTT_MODE["AUTO"])
    kernel.reload(root)
    assert modes(root) == [("DPX", "NPS2")] * 8


def test_module_parameter_shows_the_loaded_value_as_on_a_real_host(make_root):
    root = make_root()
    param = root / "module/amdgpu/parameters/user_partt_mode"
    assert param.read_text() == "4294967294\n"  # AUTO (-2) through the kernel's uint
    kernel.set_user_partt_mode(root, USER_PARTT_MODE["CPX"])
    assert param.read_text() == "4294967294\n"  # configured for the next load only
    kernel.reload(root)
    assert param.read_text() == "4\n"
    with pytest.raises(UserError):
        kernel.set_user_partt_mode(root, 7)


def test_reload_refused_while_a_gpu_is_held(make_root, live_pids):
    P = live_pids(2)
    root = make_root()
    kernel.kernel_write(root, GPU3, MEMORY, "NPS2")
    kernel.hold(root, 6, pid=P[0])
    with pytest.raises(subprocess.CalledProcessError) as caught:
        kernel.reload(root)
    assert caught.value.returncode == 1
    assert caught.value.stderr == "modprobe: FATAL: Module amdgpu is in use.\n"
    state = read_state(root)
    assert (state.pending_memory, state.counters["reloads"]) == ({"0": "NPS2"}, 0)
    assert modes(root) == [("SPX", "NPS1")] * 8


def test_counters_count_every_write_and_each_reload(make_root):
    root = make_root()
    kernel.kernel_write(root, GPU3, COMPUTE, "SPX")  # no-op
    write_errno(root, GPU3, COMPUTE, "XPX")  # refused
    kernel.kernel_write(root, GPU3, COMPUTE, "DPX")
    kernel.reload(root)
    kernel.reload(root)
    assert read_state(root).counters == {"writes": 3, "reloads": 2}
    kernel.create(root)  # starting afresh resets them
    assert read_state(root).counters == {"writes": 0, "reloads": 0}


def test_gpu_ids_are_stable_for_a_layout(make_root, live_pids):
    P = live_pids(2)
    root = make_root(compute="CPX", memory="NPS4")
    ids = [lg.gpu_id for lg in discover(root).logical]
    kernel.hold(root, 1, pid=P[0])  # rebuilds the tree
    kernel.release(root)
    assert [lg.gpu_id for lg in discover(root).logical] == ids


def generation(root) -> int:
    return int((root / "class/kfd/kfd/topology/generation_id").read_text())


def test_a_runtime_switch_moves_that_gpus_kfd_nodes_last_and_changes_the_generation(make_root, live_pids):
    """kfd_topology_update_device_list: ROCm's order follows; mipart's numbers do not (finding 6)."""
    root = make_root(compute="DPX", memory="NPS1")
    before, first = discover(root), generation(root)
    kernel.kernel_write(root, "0000:46:00.0", COMPUTE, "QPX")  # GPU 2
    after = discover(root)
    assert (switched := generation(root)) > first
    gpu2 = [lg for lg in after.logical if lg.physical_index == 2]
    assert [lg.node_id for lg in gpu2] == [16, 17, 18, 19]  # after the 2 CPU nodes and the 7 other GPUs' 14
    assert [lg.index for lg in gpu2] == [16, 17, 18, 19]  # 8 x 2 + partition
    others = [(lg.index, lg.render_minor, lg.gpu_id) for lg in after.logical if lg.physical_index != 2]
    assert others == [(lg.index, lg.render_minor, lg.gpu_id) for lg in before.logical if lg.physical_index != 2]
    order = [minor for minor in open_backend(root).rocm_devices({})]
    assert order[-4:] == [f"/dev/dri/renderD{m}" for m in (144, 145, 146, 147)]  # ROCm's order: GPU 2 last
    P = live_pids(1)
    kernel.hold(root, 5, pid=P[0])  # who holds a GPU is proc/, no topology change
    assert generation(root) == switched and not (root / "class/kfd/kfd").is_symlink()
    kernel.release(root)
    kernel.reload(root)  # a fresh load lists the GPUs in PCI order again
    by_node = sorted(discover(root).logical, key=lambda lg: lg.node_id)
    assert [lg.physical_index for lg in by_node] == list(range(8))


def test_more_than_eight_gpus_continue_in_the_next_pci_domain_up_to_nine(make_root):
    root = make_root(gpus=9, compute="DPX")
    state = discover(root)
    assert [g.bdf for g in state.physical[7:]] == ["0000:e5:00.0", "0001:05:00.0"]
    assert [(lg.index, lg.physical_index, lg.render_minor) for lg in state.logical[-2:]] == [(64, 8, 192), (65, 8, 193)]
    platform = sorted((p.name for p in (root / "devices/platform").iterdir()), key=lambda n: int(n.rsplit("_", 1)[1]))
    assert len(platform) == 63 and platform[0] == "amdgpu_xcp_0"  # mainline's name, 7 per GPU, at most 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"compute": "SPX", "memory": "NPS4"}, "compute mode SPX is not valid under memory mode NPS4"),
        ({"model": "mi250"}, "unknown model 'mi250'"),
        ({"gpus": 10}, "--gpus must be 1..9, not 10: amdgpu creates at most 64 partition platform devices, 7 per GPU"),
        ({"compute": "TPX"}, "mi300x has no compute mode TPX"),
    ],
)
def test_create_rejects_impossible_hosts(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        kernel.create(tmp_path / "host", **kwargs)
    assert not (tmp_path / "host").exists()


def test_create_refuses_a_directory_that_is_not_a_simulator(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an empty directory or a simulated host"):
        kernel.create(tmp_path)
    assert os.listdir(tmp_path) == ["precious.txt"]


def test_operations_on_a_plain_directory_fail_cleanly(tmp_path):
    with pytest.raises(UserError, match="not a simulated host"):
        kernel.reload(tmp_path)
    kernel.create(tmp_path / "h")
    with pytest.raises(UserError, match="no GPU 8"):
        kernel.hold(tmp_path / "h", 8, pid=1)


def test_cli_drives_a_simulated_host(tmp_path, live_pids):
    root = tmp_path / "host"
    assert (
        mipart(
            "sim", "create", root, "--model", "mi325x", "--gpus", "4", "--compute", "cpx", "--memory", "NPS4"
        ).returncode
        == 0
    )
    assert len(discover(root).logical) == 32
    holder = str(live_pids(1)[0])
    assert mipart("sim", "hold", root, "2", "--pid", holder).returncode == 0
    assert mipart("sim", "reset", root, "1", "--on").returncode == 0

    refused = mipart("sim", "reload", root)
    assert (refused.returncode, refused.stderr) == (1, "modprobe: FATAL: Module amdgpu is in use.\n")

    shown = mipart("sim", "show", root)
    assert f"GPU 2 0000:46:00.0 CPX NPS4; held by {holder}" in shown.stdout
    assert "GPU 1 0000:26:00.0 CPX NPS4; resetting" in shown.stdout
    assert "counters: writes=0 reloads=0" in shown.stdout

    assert mipart("sim", "release", root, "--pid", holder).returncode == 0
    assert mipart("sim", "reset", root, "1", "--off").returncode == 0
    assert mipart("sim", "reload", root).returncode == 0
    state = json.loads(mipart("sim", "show", root, "--json").stdout)
    assert state["model"] == "mi325x"
    assert state["counters"] == {"writes": 0, "reloads": 1}
    assert state["holders"] == {} and state["resetting"] == []


def test_cli_hold_defaults_to_the_calling_process(tmp_path):
    root = tmp_path / "host"
    assert mipart("sim", "create", root).returncode == 0
    assert mipart("sim", "hold", root, "0").returncode == 0
    assert read_state(root).holders == {os.getpid(): [0]}


@pytest.mark.parametrize(
    "args",
    [
        ["sim", "create", "{root}", "--compute", "SPX", "--memory", "NPS2"],
        ["sim", "hold", "{root}", "0"],
        ["sim", "show", "{root}"],
    ],
)
def test_cli_mistakes_are_one_line_without_traceback(tmp_path, args):
    (tmp_path / "host").mkdir()
    if args[1] != "create":
        (tmp_path / "host" / "file").write_text("")
    result = mipart(*[a.format(root=tmp_path / "host") for a in args])
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("mipart: ")
    assert "Traceback" not in result.stderr


def test_a_holder_that_exits_is_forgotten_like_the_kernel_does(make_root):
    import subprocess

    root = make_root()
    holder = subprocess.Popen(["sleep", "300"])
    kernel.hold(root, 0, pid=holder.pid)
    with pytest.raises(subprocess.CalledProcessError):
        kernel.reload(root)
    holder.kill()
    holder.wait()
    kernel.reload(root)  # no KFD user left
    assert read_state(root).holders == {}
