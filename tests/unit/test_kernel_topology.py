"""The KFD topology read while another process changes it (finding 7): generation_id before and
after, a bounded number of walks, then one clear line; never a crash or a diagnosis made from
half a rebuild."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import AGENT, create_sim

from mipart.gpu import attrs, topology
from mipart.gpu.topology import GENERATION, TopologyChanging, consistent

RUNS = 50
SWITCHER = """
import sys, time
from pathlib import Path
from mipart.sim import kernel
root, stop = Path(sys.argv[1]), Path(sys.argv[2])
for n in range(100000):  # bounded; the test says when to stop
    if stop.exists():
        break
    kernel.kernel_write(root, "0000:46:00.0", "current_compute_partition", ("DPX", "SPX")[n % 2])
print(n, flush=True)
"""


def test_plan_runs_while_another_process_switches_a_gpu_give_an_answer_or_one_clear_line(tmp_path):
    host = create_sim(tmp_path)  # 8 x MI300X in SPX/NPS1; GPU 2 goes SPX <-> DPX under the readers
    stop = tmp_path / "stop"
    switcher = subprocess.Popen(
        [sys.executable, "-c", SWITCHER, str(host.root), str(stop)],
        env={"PYTHONPATH": str(AGENT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes = []
    try:
        profile = host.profile("gpus: {compute: SPX, memory: NPS1}\n")
        for _ in range(RUNS):
            done = host.run("partition", "plan", "--json", "--profile", profile)
            assert "Traceback" not in done.stderr, done.stderr
            if done.returncode == 0:
                plan = json.loads(done.stdout)
                assert plan["warnings"] == [], plan["warnings"]  # no trap diagnosed from a half-built tree
                assert plan["gpus"][2]["compute_now"] in ("SPX", "DPX")
                outcomes.append("answer")
            else:
                [line] = done.stderr.splitlines()
                assert line.startswith("mipart: ") and "kept changing while mipart read it" in line, line
                outcomes.append("retry line")
    finally:
        stop.touch()
        switched = int(switcher.communicate(timeout=60)[0])
    assert len(outcomes) == RUNS and switched >= RUNS, (outcomes, switched)


@pytest.fixture
def generations(tmp_path, monkeypatch):
    """A topology whose generation_id the test moves; walks do not sleep."""
    monkeypatch.setattr(topology, "PAUSE", 0)
    path = tmp_path / GENERATION
    path.parent.mkdir(parents=True)
    path.write_text("1\n")
    return path


def test_a_walk_is_taken_only_within_one_generation(tmp_path, generations):
    walks = []

    def read():
        walks.append(1)
        if len(walks) < 3:  # the generation moves under the first two walks
            generations.write_text(f"{len(walks) + 1}\n")
        return len(walks)

    assert consistent(tmp_path, read) == 3


def test_a_topology_that_never_stops_changing_is_one_line(tmp_path, generations):
    def read():
        generations.write_text(f"{int(generations.read_text()) + 1}\n")

    with pytest.raises(TopologyChanging) as caught:
        consistent(tmp_path, read)
    assert str(caught.value).endswith(
        f"kept changing while mipart read it ({topology.TRIES} tries): another process is switching GPU partitions "
        "or reloading the driver; rerun when it is done"
    )


def test_a_node_gone_within_one_generation_is_walked_again_then_reported_as_it_is(tmp_path, generations):
    walks = []

    def read():
        walks.append(1)
        raise attrs.Vanished("nodes/58/gpu_id: cannot read: No such file or directory")

    with pytest.raises(attrs.Vanished):
        consistent(tmp_path, read)
    assert len(walks) == topology.SETTLE_TRIES + 1


def test_an_unsettled_state_is_walked_again_then_taken_once_it_repeats(tmp_path, generations):
    walks = []

    def read():
        walks.append(1)
        return len(walks)

    assert consistent(tmp_path, read, settled=lambda n: n == 2) == 2
    walks.clear()
    with pytest.raises(TopologyChanging):  # a different unsettled state each walk: a rebuild, never the truth
        consistent(tmp_path, read, settled=lambda n: False)
    walks.clear()
    assert consistent(tmp_path, lambda: walks.append(1) or "hidden", settled=lambda n: False) == "hidden"
    assert len(walks) == topology.SETTLE_TRIES + 1


def test_the_same_half_built_state_in_one_rebuild_after_another_is_never_the_truth(tmp_path, generations):
    """A writer switching back and forth shows each rebuild's window alike, a new generation each
    time; walks in between that straddle a rebuild break the run, so it never counts as settled."""
    walks = []

    def read():
        walks.append(1)
        if len(walks) % 2:  # every other walk straddles the next rebuild
            generations.write_text(f"{int(generations.read_text()) + 1}\n")
        return "DPX showing 1 of 2"

    with pytest.raises(TopologyChanging):
        consistent(tmp_path, read, settled=lambda _: False)
    assert len(walks) == topology.TRIES
