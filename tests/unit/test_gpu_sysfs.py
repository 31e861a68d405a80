"""GPU discovery and writes through sysfs, read from simulated and hand-made trees."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mipart.errors import UserError
from mipart.gpu import amdgpu as sysfs
from mipart.sim import kernel as simulator
from mipart.values import GpuUser, HostState

NODES = "class/kfd/kfd/topology/nodes"
BDFS = ["0000:05:00.0", "0000:26:00.0", "0000:46:00.0", "0000:65:00.0",
        "0000:85:00.0", "0000:a6:00.0", "0000:c6:00.0", "0000:e5:00.0"]


def sim(tmp_path: Path, **kwargs) -> Path:
    root = tmp_path / "host"
    simulator.create(root, **kwargs)
    return root


def test_spx_nps1_host_shows_one_logical_gpu_per_physical(tmp_path):
    state = sysfs.discover(sim(tmp_path, compute="SPX", memory="NPS1"))

    assert [g.bdf for g in state.physical] == BDFS
    assert [g.index for g in state.physical] == list(range(8))
    gpu = state.physical[0]
    assert (gpu.device_id, gpu.compute, gpu.memory) == (0x74A1, "SPX", "NPS1")
    assert gpu.compute_available == ("SPX", "DPX", "QPX", "CPX")
    assert gpu.memory_available == ("NPS1", "NPS2", "NPS4")
    assert [(lg.index, lg.physical_index, lg.partition, lg.render_minor) for lg in state.logical] == [
        (k, k, 0, 128 + 8 * k) for k in range(8)]
    assert [lg.node_id for lg in state.logical] == list(range(2, 10))  # after the 2 CPU nodes


def test_cpx_nps4_host_shows_64_logical_gpus_in_render_order(tmp_path):
    state = sysfs.discover(sim(tmp_path, compute="CPX", memory="NPS4"))

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

    state = sysfs.discover(root)
    assert [(lg.physical_index, lg.partition) for lg in state.logical] == [
        (k, p) for k in range(8) for p in range(2)]


def test_kfd_gpu_without_partition_attributes_still_takes_an_index(tmp_path):
    root = sim(tmp_path, gpus=2)
    props = root / NODES / "2" / "properties"
    props.write_text(props.read_text().replace("location_id 1280", "location_id 1024"))  # 04:00.0

    assert [(lg.index, lg.physical_index) for lg in sysfs.discover(root).logical] == [(1, 1)]


def test_other_pci_devices_are_not_gpus(tmp_path):
    root = sim(tmp_path)
    devices = root / "bus/pci/devices"
    # The simulator's decoys: an AMD host bridge, and an AMD/ATI function with no partitions.
    assert {"0000:00:00.0", "0000:04:00.0"} <= set(os.listdir(devices))
    nic = devices / "0000:0c:00.0"
    nic.mkdir()
    (nic / "vendor").write_text("0x15b3\n")
    (nic / "current_compute_partition").write_text("SPX\n")

    assert [g.bdf for g in sysfs.discover(root).physical] == BDFS


def test_host_without_partitionable_gpus_is_empty(tmp_path):
    assert sysfs.discover(tmp_path) == HostState((), ())
    (tmp_path / "bus/pci/devices/0000:00:00.0").mkdir(parents=True)
    (tmp_path / "bus/pci/devices/0000:00:00.0/vendor").write_text("0x1022\n")
    assert sysfs.discover(tmp_path) == HostState((), ())


def test_single_memory_mode_and_unsupported_compute(tmp_path):
    root = sim(tmp_path, gpus=1)
    dev = root / "bus/pci/devices" / BDFS[0]
    (dev / "available_memory_partition").unlink()  # only there with more than one mode
    (dev / "available_compute_partition").write_text("Not supported\n")

    gpu = sysfs.discover(root).physical[0]
    assert gpu.memory_available == ("NPS1",)
    assert gpu.compute_available == ()


@pytest.mark.parametrize("relative, text", [
    (f"bus/pci/devices/{BDFS[2]}/current_compute_partition", "S P X\n"),
    (f"bus/pci/devices/{BDFS[2]}/device", "zz\n"),
    (f"{NODES}/4/properties", "location_id twelve\n"),
    (f"{NODES}/4/properties", "simd_count 4\n"),
    (f"{NODES}/4/gpu_id", "\n"),
])
def test_corrupt_attribute_is_one_error_naming_the_file(tmp_path, relative, text):
    root = sim(tmp_path)
    (root / relative).write_text(text)
    with pytest.raises(UserError) as caught:
        sysfs.discover(root)
    assert str(root / relative) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_kfd_users_map_to_physical_gpus(tmp_path, live_pids):
    P = live_pids(2)
    root = sim(tmp_path, compute="CPX", memory="NPS4")
    simulator.hold(root, 2, pid=P[1])
    simulator.hold(root, 5, pid=P[1])
    simulator.hold(root, 0, pid=P[0])
    state = sysfs.discover(root)
    assert sysfs.kfd_users(root, state) == [GpuUser(P[0], (0,)), GpuUser(P[1], (2, 5))]

    (root / "class/kfd/kfd/proc/9999").mkdir()  # KFD open, no GPU memory yet: could be any
    assert GpuUser(9999, tuple(range(8))) in sysfs.kfd_users(root, state)


def test_write_on_real_sysfs_writes_value_and_newline(tmp_path):
    dev = tmp_path / "bus/pci/devices" / BDFS[0]
    dev.mkdir(parents=True)
    for name, text in [("vendor", "0x1002"), ("device", "0x74a1"), ("current_compute_partition", "SPX"),
                       ("available_compute_partition", "SPX, DPX, QPX, CPX"),
                       ("current_memory_partition", "NPS1")]:
        (dev / name).write_text(text + "\n")
    gpu = sysfs.discover(tmp_path).physical[0]
    assert gpu.memory_available == ("NPS1",)

    sysfs.write_attribute(tmp_path, gpu, "current_compute_partition", "DPX")
    assert (dev / "current_compute_partition").read_text() == "DPX\n"
    with pytest.raises(OSError) as caught:
        sysfs.write_attribute(tmp_path, gpu, "current_partition_mode", "DPX")
    assert caught.value.errno == errno.ENOENT
    assert not (dev / "current_partition_mode").exists()


def test_write_on_simulated_host_goes_to_the_simulated_driver(tmp_path):
    root = sim(tmp_path)
    gpu = sysfs.discover(root).physical[3]
    sysfs.write_attribute(root, gpu, "current_compute_partition", "qpx")

    state = sysfs.discover(root)
    assert state.physical[3].compute == "QPX"
    assert len(state.logical) == 7 + 4
    assert simulator.read_state(root).counters["writes"] == 1
    with pytest.raises(OSError) as caught:
        sysfs.write_attribute(root, gpu, "current_memory_partition", "NPS3")
    assert caught.value.errno == errno.EINVAL


def _gpu(tmp_path, memory="NPS1"):
    compute = {"NPS1": "SPX", "NPS2": "DPX", "NPS4": "CPX"}[memory]
    root = sim(tmp_path, compute=compute, memory=memory)
    return sysfs.discover(root).physical[3]


@pytest.mark.parametrize("code, name, value, memory, expected", [
    (errno.EBUSY, "current_compute_partition", "CPX", "NPS1",
     "GPU 3 (0000:65:00.0): current_compute_partition busy: a ROCm process holds the GPU; stop GPU users first"),
    (errno.EINVAL, "current_compute_partition", "SPX", "NPS2",
     "GPU 3 (0000:65:00.0): current_compute_partition rejected SPX: not valid under the current memory "
     "mode NPS2 (SPX needs NPS1)"),
    (errno.EINVAL, "current_compute_partition", "TPX", "NPS1",
     "GPU 3 (0000:65:00.0): current_compute_partition rejected TPX: not a compute mode this GPU supports "
     "(available: SPX, DPX, QPX, CPX)"),
    (errno.EINVAL, "current_memory_partition", "NPS8", "NPS1",
     "GPU 3 (0000:65:00.0): current_memory_partition rejected NPS8: not a memory mode this GPU supports "
     "(available: NPS1, NPS2, NPS4)"),
    (errno.EPERM, "current_compute_partition", "DPX", "NPS1",
     "GPU 3 (0000:65:00.0): current_compute_partition: GPU reset in progress; retry after it finishes"),
    (errno.EACCES, "current_compute_partition", "DPX", "NPS1",
     "GPU 3 (0000:65:00.0): current_compute_partition: permission denied; run as root"),
    (errno.ENOENT, "current_compute_partition", "DPX", "NPS1",
     "GPU 3 (0000:65:00.0): current_compute_partition missing: amdgpu driver too old or not loaded"),
])
def test_describe_write_error(tmp_path, code, name, value, memory, expected):
    gpu = _gpu(tmp_path, memory)
    assert sysfs.describe_write_error(OSError(code, os.strerror(code)), gpu, name, value) == expected


def test_describe_what_the_simulated_kernel_raises(tmp_path, live_pids):
    P = live_pids(2)
    root = sim(tmp_path)
    simulator.hold(root, 3, pid=P[0])
    gpu = sysfs.discover(root).physical[3]
    with pytest.raises(OSError) as caught:
        sysfs.write_attribute(root, gpu, "current_compute_partition", "CPX")
    assert "busy: a ROCm process holds the GPU" in sysfs.describe_write_error(
        caught.value, gpu, "current_compute_partition", "CPX")


def test_sysfs_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MIPART_SYSFS_ROOT", raising=False)
    assert sysfs.sysfs_root() == Path("/sys")
    monkeypatch.setenv("MIPART_SYSFS_ROOT", str(tmp_path))
    assert sysfs.sysfs_root() == tmp_path
