"""Reading a pair table from compute_partition_config/ (gpu/kernel_table.py) against a driver
written here: a dict of compute mode -> memory modes behind files, as amdgpu shows them; and
how often the status API reads it (partition/host_rules.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mipart.errors import UserError
from mipart.gpu.kernel_table import read_table
from mipart.gpu.pair_tables import PairTable
from mipart.partition import host_rules
from mipart.values import HostState, PhysicalGpu

PAIRS = {"SPX": "NPS1", "DPX": "NPS1, NPS2", "QPX": "NPS1, NPS2", "CPX": "NPS1, NPS2"}


class Driver:
    """Files of one GPU's compute_partition_config/, and the writes they receive."""

    def __init__(self, device, selected="DPX", refuse=None, meddler=None):
        self.config = device / "compute_partition_config"
        self.config.mkdir(parents=True)
        (self.config / "supported_xcp_configs").write_text(", ".join(PAIRS) + "\n")
        self.writes: list[str] = []
        self.refuse, self.meddler = refuse, meddler
        self.select(selected)

    def select(self, mode: str) -> None:
        (self.config / "xcp_config").write_text(mode + "\n")
        (self.config / "supported_nps_configs").write_text(PAIRS[mode] + "\n")

    def write(self, name: str, value: str) -> None:
        assert name == "compute_partition_config/xcp_config"
        self.writes.append(value)
        if self.refuse:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.select(value)
        if self.meddler:
            self.meddler(self)


def test_each_mode_is_previewed_and_the_selection_put_back(tmp_path):
    driver = Driver(tmp_path)
    table = read_table(tmp_path, driver.write, 8, ("NPS1", "NPS2", "NPS4"))
    assert table.pairs == {mode: tuple(m.strip() for m in memory.split(",")) for mode, memory in PAIRS.items()}
    assert table.source == "kernel"
    assert driver.writes == ["SPX", "DPX", "QPX", "CPX", "DPX"]
    assert (driver.config / "xcp_config").read_text() == "DPX\n"


def test_a_preview_it_may_not_write_falls_back_to_mainline_and_says_why(tmp_path):
    driver = Driver(tmp_path, refuse=errno.EACCES)
    table = read_table(tmp_path, driver.write, 8, ("NPS1", "NPS2", "NPS4"))
    assert table.pairs == {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "QPX": ("NPS1", "NPS4"), "CPX": ("NPS1", "NPS4")}
    assert table.source == (
        "mainline fallback (compute_partition_config/xcp_config not writable (Permission denied): "
        "run as root to read the kernel's table)"
    )


def test_another_reader_moving_the_selection_is_retried_then_named(tmp_path):
    moved = []

    def once(driver):  # another reader selects CPX right after our first write
        if not moved:
            moved.append(True)
            driver.select("CPX")

    driver = Driver(tmp_path / "a", meddler=once)
    table = read_table(tmp_path / "a", driver.write, 8, ("NPS1", "NPS2"))
    assert table.pairs["SPX"] == ("NPS1",) and driver.writes[:2] == ["SPX", "SPX"]  # read again, not CPX's row

    always = Driver(tmp_path / "b", meddler=lambda d: d.select("CPX") if d.writes[-1] != "CPX" else None)
    with pytest.raises(UserError, match="kept changing while mipart read the partition table"):
        read_table(tmp_path / "b", always.write, 8, ("NPS1", "NPS2"))


def test_another_error_is_one_line_naming_the_file(tmp_path):
    driver = Driver(tmp_path, refuse=errno.EIO)
    with pytest.raises(UserError) as caught:
        read_table(tmp_path, driver.write, 8, ("NPS1",))
    assert str(caught.value) == f"{driver.config / 'xcp_config'}: writing SPX failed: Input/output error"


def test_the_status_api_reads_the_table_once_for_the_same_gpus(tmp_path, monkeypatch):
    class Counting:
        root = Path("/counting")
        reads = 0

        def pair_table(self, gpu):
            Counting.reads += 1
            return PairTable({"SPX": ("NPS1",)}, "kernel")

        def partitions(self, gpu, compute):
            return 1

        def drm_conflicts(self):
            return ()

    def state(bdf):
        return HostState((PhysicalGpu(0, bdf, 0x74A1, "SPX", ("SPX",), "NPS1", ("NPS1",), tmp_path),), ())

    clock = [1000.0]
    monkeypatch.setattr(host_rules.time, "monotonic", lambda: clock[0])
    first = host_rules.kept_rule_groups(Counting(), state("0000:05:00.0"))
    assert host_rules.kept_rule_groups(Counting(), state("0000:05:00.0")) == first and Counting.reads == 1
    host_rules.kept_rule_groups(Counting(), state("0000:26:00.0"))  # other GPUs: read again
    assert Counting.reads == 2
    clock[0] += host_rules.KEEP_SECONDS
    host_rules.kept_rule_groups(Counting(), state("0000:26:00.0"))  # kept long enough: read again (a new driver shows)
    assert Counting.reads == 3
