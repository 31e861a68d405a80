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
