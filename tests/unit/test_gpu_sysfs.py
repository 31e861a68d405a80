"""The amdgpu backend (discovery and writes through sysfs) and the backend registry, on
simulated and hand-made trees."""

from __future__ import annotations

import errno
import os
import shlex
import sys
from pathlib import Path

import pytest

from mipart.errors import UserError
from mipart.gpu import BACKENDS, discover, open_backend, sysfs_root
from mipart.gpu.amdgpu import AmdgpuBackend
from mipart.gpu.backend import GpuBackend
from mipart.names import BACKEND_MARKER
from mipart.sim import kernel
from mipart.sim.backend import SimBackend
from mipart.sim.state import read_state
from mipart.values import GpuUser, HostState, LoadMode

NODES = "class/kfd/kfd/topology/nodes"
BDFS = [
    "0000:05:00.0",
    "0000:26:00.0",
    "0000:46:00.0",
    "0000:65:00.0",
    "0000:85:00.0",
    "0000:a6:00.0",
    "0000:c6:00.0",
    "0000:e5:00.0",
]


def sim(tmp_path: Path, **kwargs) -> Path:
    root = tmp_path / "host"
    kernel.create(root, **kwargs)
    return root


def test_spx_nps1_host_shows_one_logical_gpu_per_physical(tmp_path):
    state = discover(sim(tmp_path, compute="SPX", memory="NPS1"))

    assert [g.bdf for g in state.physical] == BDFS
    assert [g.index for g in state.physical] == list(range(8))
    gpu = state.physical[0]
    assert (gpu.device_id, gpu.compute, gpu.memory) == (0x74A1, "SPX", "NPS1")
    assert gpu.compute_available == ("SPX", "DPX", "QPX", "CPX")
    assert gpu.memory_available == ("NPS1", "NPS2", "NPS4")
    assert [(lg.index, lg.physical_index, lg.partition, lg.render_minor) for lg in state.logical] == [
        (8 * k, k, 0, 128 + 8 * k) for k in range(8)
    ]  # mipart's numbers are slots: 8 x GPU + partition
    assert [lg.node_id for lg in state.logical] == list(range(2, 10))  # after the 2 CPU nodes


def test_cpx_nps4_host_shows_64_logical_gpus_in_render_order(tmp_path):
    state = discover(sim(tmp_path, compute="CPX", memory="NPS4"))

    assert len(state.logical) == 64
    gpu1_first = state.logical[8]
    assert (gpu1_first.physical_index, gpu1_first.partition) == (1, 0)
    assert gpu1_first.render_node == "/dev/dri/renderD136"
    assert gpu1_first.bdf == "0000:26:00.0"
    for lg in state.logical:
        assert lg.physical_index == lg.index // 8
        assert lg.partition == lg.index % 8
        assert lg.render_minor == 128 + lg.index
        assert lg.bdf == state.physical[lg.physical_index].bdf
    assert len({lg.gpu_id for lg in state.logical}) == 64
    assert all(lg.gpu_id for lg in state.logical)


def test_partition_number_in_location_id_high_bits_still_maps(tmp_path):
    """Some kernels put the partition in location_id[31:28] instead of the function bits."""
    root = sim(tmp_path, compute="DPX", memory="NPS2")
    for node in (root / NODES).iterdir():
        props = node / "properties"
        lines = props.read_text().splitlines()
        for i, line in enumerate(lines):
            key, value = line.split()
            if key == "location_id" and int(value):
                value = int(value)
                lines[i] = f"location_id {(value & ~7) | (value & 7) << 28}"
        props.write_text("\n".join(lines) + "\n")

    state = discover(root)
    assert [(lg.physical_index, lg.partition) for lg in state.logical] == [(k, p) for k in range(8) for p in range(2)]


def test_kfd_gpu_without_partition_attributes_is_no_logical_gpu_and_moves_no_number(tmp_path):
    root = sim(tmp_path, gpus=2)
    props = root / NODES / "2" / "properties"
    props.write_text(props.read_text().replace("location_id 1280", "location_id 1024"))  # 04:00.0

    assert [(lg.index, lg.physical_index) for lg in discover(root).logical] == [(8, 1)]


def test_other_pci_devices_are_not_gpus(tmp_path):
    root = sim(tmp_path)
    devices = root / "bus/pci/devices"
    # The simulator's decoys: an AMD host bridge, and an AMD/ATI function with no partitions.
    assert {"0000:00:00.0", "0000:04:00.0"} <= set(os.listdir(devices))
    nic = devices / "0000:0c:00.0"
    nic.mkdir()
    (nic / "vendor").write_text("0x15b3\n")
    (nic / "current_compute_partition").write_text("SPX\n")

    assert [g.bdf for g in discover(root).physical] == BDFS


def test_host_without_partitionable_gpus_is_empty(tmp_path):
    assert discover(tmp_path) == HostState((), ())
    (tmp_path / "bus/pci/devices/0000:00:00.0").mkdir(parents=True)
    (tmp_path / "bus/pci/devices/0000:00:00.0/vendor").write_text("0x1022\n")
    assert discover(tmp_path) == HostState((), ())


def test_single_memory_mode_and_unsupported_compute(tmp_path):
    root = sim(tmp_path, gpus=1)
    dev = root / "bus/pci/devices" / BDFS[0]
    (dev / "available_memory_partition").unlink()  # only there with more than one mode
    (dev / "available_compute_partition").write_text("Not supported\n")

    gpu = discover(root).physical[0]
    assert gpu.memory_available == ("NPS1",)
    assert gpu.compute_available == ()


@pytest.mark.parametrize(
    "relative, text",
    [
        (f"bus/pci/devices/{BDFS[2]}/current_compute_partition", "S P X\n"),
        (f"bus/pci/devices/{BDFS[2]}/device", "zz\n"),
        (f"{NODES}/4/properties", "location_id twelve\n"),
        (f"{NODES}/4/properties", "simd_count 4\n"),
        (f"{NODES}/4/gpu_id", "\n"),
    ],
)
def test_corrupt_attribute_is_one_error_naming_the_file(tmp_path, relative, text):
    root = sim(tmp_path)
    (root / relative).write_text(text)
    with pytest.raises(UserError) as caught:
        discover(root)
    assert str(root / relative) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_kfd_users_map_to_physical_gpus(tmp_path, live_pids):
    P = live_pids(2)
    root = sim(tmp_path, compute="CPX", memory="NPS4")
    kernel.hold(root, 2, pid=P[1])
    kernel.hold(root, 5, pid=P[1])
    kernel.hold(root, 0, pid=P[0])
    state = discover(root)
    assert open_backend(root).gpu_users(state) == [GpuUser(P[0], (0,)), GpuUser(P[1], (2, 5))]

    (root / "class/kfd/kfd/proc/9999").mkdir()  # KFD open, no GPU memory yet: could be any
    assert GpuUser(9999, tuple(range(8))) in open_backend(root).gpu_users(state)


def test_write_on_real_sysfs_writes_value_and_newline(tmp_path):
    dev = tmp_path / "bus/pci/devices" / BDFS[0]
    dev.mkdir(parents=True)
    for name, text in [
        ("vendor", "0x1002"),
        ("device", "0x74a1"),
        ("current_compute_partition", "SPX"),
        ("available_compute_partition", "SPX, DPX, QPX, CPX"),
        ("current_memory_partition", "NPS1"),
    ]:
        (dev / name).write_text(text + "\n")
    gpu = discover(tmp_path).physical[0]
    assert gpu.memory_available == ("NPS1",)

    open_backend(tmp_path).write_attribute(gpu, "current_compute_partition", "DPX")
    assert (dev / "current_compute_partition").read_text() == "DPX\n"
    with pytest.raises(OSError) as caught:
        open_backend(tmp_path).write_attribute(gpu, "current_partition_mode", "DPX")
    assert caught.value.errno == errno.ENOENT
    assert not (dev / "current_partition_mode").exists()


def test_write_on_simulated_host_goes_to_the_simulated_driver(tmp_path):
    root = sim(tmp_path)
    gpu = discover(root).physical[3]
    open_backend(root).write_attribute(gpu, "current_compute_partition", "qpx")

    state = discover(root)
    assert state.physical[3].compute == "QPX"
    assert len(state.logical) == 7 + 4
    assert read_state(root).counters["writes"] == 1
    with pytest.raises(OSError) as caught:
        open_backend(root).write_attribute(gpu, "current_memory_partition", "NPS3")
    assert caught.value.errno == errno.EINVAL


def _gpu(tmp_path, memory="NPS1"):
    compute = {"NPS1": "SPX", "NPS2": "DPX", "NPS4": "CPX"}[memory]
    root = sim(tmp_path, compute=compute, memory=memory)
    return open_backend(root), discover(root).physical[3]  # the simulator's backend previews through its kernel


@pytest.mark.parametrize(
    "code, name, value, memory, expected",
    [
        (
            errno.EBUSY,
            "current_compute_partition",
            "CPX",
            "NPS1",
            "GPU 3 (0000:65:00.0): current_compute_partition busy: a ROCm process holds the GPU; stop GPU users first",
        ),
        (
            errno.EINVAL,
            "current_compute_partition",
            "SPX",
            "NPS2",
            "GPU 3 (0000:65:00.0): current_compute_partition rejected SPX: not valid under the current memory "
            "mode NPS2 (SPX needs NPS1)",
        ),
        (
            errno.EINVAL,
            "current_compute_partition",
            "TPX",
            "NPS1",
            "GPU 3 (0000:65:00.0): current_compute_partition rejected TPX: not a compute mode this GPU supports "
            "(available: SPX, DPX, QPX, CPX)",
        ),
        (
            errno.EINVAL,
            "current_memory_partition",
            "NPS8",
            "NPS1",
            "GPU 3 (0000:65:00.0): current_memory_partition rejected NPS8: not a memory mode this GPU supports "
            "(available: NPS1, NPS2, NPS4)",
        ),
        (
            errno.EPERM,
            "current_compute_partition",
            "DPX",
            "NPS1",
            "GPU 3 (0000:65:00.0): current_compute_partition: GPU reset in progress; retry after it finishes",
        ),
        (
            errno.EACCES,
            "current_compute_partition",
            "DPX",
            "NPS1",
            "GPU 3 (0000:65:00.0): current_compute_partition: permission denied; run as root",
        ),
        (
            errno.ENOENT,
            "current_compute_partition",
            "DPX",
            "NPS1",
            "GPU 3 (0000:65:00.0): current_compute_partition missing: amdgpu driver too old or not loaded",
        ),
    ],
)
def test_describe_write_error(tmp_path, code, name, value, memory, expected):
    backend, gpu = _gpu(tmp_path, memory)
    assert backend.describe_write_error(OSError(code, os.strerror(code)), gpu, name, value) == expected


def test_describe_what_the_simulated_kernel_raises(tmp_path, live_pids):
    P = live_pids(2)
    root = sim(tmp_path)
    kernel.hold(root, 3, pid=P[0])
    gpu = discover(root).physical[3]
    backend = open_backend(root)
    with pytest.raises(OSError) as caught:
        backend.write_attribute(gpu, "current_compute_partition", "CPX")
    assert "busy: a ROCm process holds the GPU" in backend.describe_write_error(
        caught.value, gpu, "current_compute_partition", "CPX"
    )


def test_sysfs_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MIPART_SYSFS_ROOT", raising=False)
    assert sysfs_root() == Path("/sys")
    monkeypatch.setenv("MIPART_SYSFS_ROOT", str(tmp_path))
    assert sysfs_root() == tmp_path


def test_a_simulated_root_names_its_own_backend_which_the_registry_does_not_list(tmp_path, monkeypatch):
    root = sim(tmp_path)
    assert (root / BACKEND_MARKER).read_text() == "mipart.sim.backend:SimBackend\n"
    assert BACKENDS == ("mipart.gpu.amdgpu:AmdgpuBackend",)
    assert type(open_backend(root)) is SimBackend
    assert type(open_backend(tmp_path / "elsewhere")) is AmdgpuBackend
    monkeypatch.setenv("MIPART_SYSFS_ROOT", str(root))
    assert type(open_backend()) is SimBackend and open_backend().root == root
    assert isinstance(open_backend(root), GpuBackend) and isinstance(open_backend(tmp_path), GpuBackend)


@pytest.mark.parametrize(
    "entry, complaint",
    [
        ("os:system", "not a GPU backend; name one as module:class inside mipart"),
        ("mipart.sim.backend", "not a GPU backend; name one as module:class inside mipart"),
        ("mipart.sim.nothing:SimBackend", "which is no class mipart has"),
        ("mipart.sim.backend:Nothing", "which is no class mipart has"),
        ("mipart.values:HostState", "which is not a GPU backend (mipart.gpu.backend.GpuBackend)"),
        ("mipart.gpu.amdgpu:Path", "which is not a GPU backend (mipart.gpu.backend.GpuBackend)"),
    ],
)
def test_a_marker_that_names_no_backend_is_one_line(tmp_path, entry, complaint):
    (tmp_path / BACKEND_MARKER).write_text(entry + "\n")
    with pytest.raises(UserError) as caught:
        open_backend(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / BACKEND_MARKER}: names {entry!r}")
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


def test_pair_table_and_partitions_are_the_kernel_rules_for_eight_xccs(tmp_path):
    backend = open_backend(sim(tmp_path))
    gpu = backend.discover().physical[0]
    table = backend.pair_table(gpu)  # mainline's table, read from the simulated compute_partition_config/
    assert table.pairs == {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "QPX": ("NPS1", "NPS4"), "CPX": ("NPS1", "NPS4")}
    assert table.source == "kernel"
    assert [backend.partitions(gpu, mode) for mode in ("SPX", "DPX", "QPX", "CPX")] == [1, 2, 4, 8]


def test_the_next_load_reads_modprobe_d_then_the_kernel_command_line(tmp_path):
    """What counts is what the next `modprobe amdgpu` passes, not the loaded module's value (finding 2)."""
    root = sim(tmp_path)
    backend = open_backend(root)
    assert backend.load_mode() == LoadMode("AUTO", "")
    kernel.set_user_partt_mode(root, 3)  # QPX, for the next load
    assert backend.load_mode() == LoadMode("QPX", f"{root}/etc/modprobe.d/amdgpu-partition.conf:1")
    assert (root / "module/amdgpu/parameters/user_partt_mode").read_text() == "4294967294\n"  # loaded: AUTO
    (root / "etc/modprobe.d/zz-local.conf").write_text(
        "# later file, later value\noptions amdgpu \\\n  user-partt-mode=1\n"
    )
    assert backend.load_mode() == LoadMode("DPX", f"{root}/etc/modprobe.d/zz-local.conf:2")
    (root / "lib/modprobe.d").mkdir(parents=True)
    (root / "lib/modprobe.d/zz-local.conf").write_text("options amdgpu user_partt_mode=0\n")  # hidden by /etc's
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("ro quiet amdgpu.user_partt_mode=4294967294\n")
    assert backend.load_mode() == LoadMode("AUTO", f"the kernel command line ({root}/proc/cmdline)")
    (root / "proc/cmdline").write_text("amdgpu.user_partt_mode=9\n")
    assert backend.load_mode().mode == "9"


def test_a_simulated_host_reloads_its_own_driver_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("MIPART_RELOAD_CMD", raising=False)
    root = sim(tmp_path)
    backend = open_backend(root)
    assert backend.reload_command() == shlex.join([sys.executable, "-m", "mipart", "sim", "reload", str(root)])
    assert AmdgpuBackend(tmp_path).reload_command() == "modprobe -r amdgpu && modprobe amdgpu"
    kernel.kernel_write(root, BDFS[0], "current_memory_partition", "NPS4")
    backend.reload(lambda: True)
    assert read_state(root).counters["reloads"] == 1
    assert {g.memory for g in discover(root).physical} == {"NPS4"}
    monkeypatch.setenv("MIPART_RELOAD_CMD", "true")
    assert backend.reload_command() == "true"
