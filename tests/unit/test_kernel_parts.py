"""Every Instinct part as the real kernel shows it, through the real CLI on simulated hosts (findings 1, 5, 12):
MI300A and SR-IOV VFs without supported_nps_configs, a VF's write that changes nothing, GC 9.5's
pairs when the kernel's table cannot be read, and the XCC count from KFD's num_xcc."""

from __future__ import annotations

import errno
import json

import pytest
from conftest import create_sim, error_lines

from mipart.gpu.kernel_table import read_table


def test_an_apu_without_supported_nps_configs_plans_and_applies(tmp_path):
    """amdgpu_xcp_cfg_sysfs_init makes supported_nps_configs only where the platform switches NPS."""
    host = create_sim(tmp_path, model="mi300a", gpus=4)
    config = host.root / "bus/pci/devices/0000:05:00.0/compute_partition_config"
    assert (config / "supported_xcp_configs").exists() and not (config / "supported_nps_configs").exists()
    profile = host.profile("gpus: {compute: TPX, memory: NPS1}\n")
    plan = host.run("partition", "plan", "--profile", profile)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == "partition rules for GPUs 0-3 (kernel): SPX: NPS1; TPX: NPS1; CPX: NPS1"
    done = host.run("partition", "apply", "--profile", profile)
    assert (done.returncode, done.stdout.strip()) == (0, "applied: 4 writes, 0 reloads; 12 logical GPUs"), done.stderr


def test_a_vf_write_that_changes_nothing_is_caught_by_reading_back(tmp_path):
    """In an SR-IOV VF switch_partition_mode is NULL: the write succeeds and the partition stays."""
    host = create_sim(tmp_path, "--sriov-vf", gpus=2)
    done = host.run("partition", "apply", "--profile", host.profile("gpus: {compute: DPX}\n"))
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert lines[0] == (
        "mipart: GPU 0 (0000:05:00.0): the kernel took current_compute_partition=DPX but the GPU reads SPX: its "
        "driver does not switch partitions here (in an SR-IOV VF the host sets them: switch_partition_mode is NULL); "
        "set the partition on the host, or leave gpus.compute unset for this GPU"
    )
    assert lines[1] == "the host now:" and host.counters()["writes"] == 1


class Refusing:
    """A backend's write as a process that is not root meets it: the preview may not be written."""

    def write(self, name: str, value: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize(
    "gc, qpx",
    [((9, 5, 0), ("NPS1", "NPS2", "NPS4")), ((9, 4, 3), ("NPS1", "NPS4"))],
    ids=["mi350-series", "mi300-series"],
)
def test_a_table_that_cannot_be_read_falls_back_to_mainline_rules_of_that_part(tmp_path, gc, qpx):
    """Since 6.16-stable QPX and CPX take NPS2 on GC 9.5; kernels without compute_partition_config/ are older."""
    host = create_sim(tmp_path, model="mi355x" if gc == (9, 5, 0) else "mi300x", gpus=1)
    device = host.root / "bus/pci/devices/0000:05:00.0"
    table = read_table(device, Refusing().write, 8, ("NPS1", "NPS2", "NPS4"), gc)
    assert (table.pairs["QPX"], table.pairs["CPX"]) == (qpx, qpx)
    assert table.source.startswith("mainline fallback (compute_partition_config/xcp_config not writable")
    older = read_table(tmp_path / "no-config", Refusing().write, 8, ("NPS1", "NPS2", "NPS4"), gc)
    assert older.pairs["CPX"] == ("NPS1", "NPS4")


def test_the_xcc_count_comes_from_kfd_for_a_part_mipart_has_no_table_for(tmp_path):
    """KFD's num_xcc, not a default of 8: an unknown 6-XCC part (here MI300A with another device id)."""
    host = create_sim(tmp_path, model="mi300a", gpus=2)
    for bdf in ("0000:05:00.0", "0000:26:00.0"):
        (host.root / "bus/pci/devices" / bdf / "device").write_text("0x74b9\n")
    profile = host.profile("gpus: {compute: CPX, memory: NPS1}\n")
    plan = json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)
    assert len(plan["logical_gpus"]) == 12 and plan["warnings"] == []
    assert host.run("partition", "apply", "--profile", profile).returncode == 0
    after = json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)
    assert len(after["logical_gpus"]) == 12 and after["warnings"] == []  # in CPX, the 6 nodes shown count
