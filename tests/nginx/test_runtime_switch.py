"""Which GPU is which after a runtime switch (finding 6, the issue's acceptance): on a host in CPX/NPS1,
another tool switches only GPU 2. Its KFD nodes move to the end, so ROCm renumbers every GPU after
it; mipart's numbers, the instances' addresses and partitions do not move, no other instance is
restarted, and GPU 2's new instances get their own device (their fake engines check what ROCm
enumerates where they run)."""

from __future__ import annotations

import json

import pytest
from serving import ServingHost

from mipart.api.client import UnixHTTPConnection
from mipart.gpu import open_backend
from mipart.serving.spec import InstanceSpec
from mipart.sim import kernel

pytestmark = pytest.mark.nginx

GPU2 = "0000:46:00.0"
ON_GPU2 = set(range(16, 24))  # N = 8 x 2 + partition


@pytest.fixture
def serving_host(tmp_path):
    serving = ServingHost(tmp_path, instances=64, compute="CPX", memory="NPS1", delay=0.2)
    yield serving
    serving.close()


def placed(host) -> dict[int, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """Instance number -> (address, render nodes, physical GPUs), from the spec files the agent wrote."""
    specs = (InstanceSpec.from_file_text(p.read_text()) for p in (host.run_dir / "instances").glob("*.json"))
    return {s.number: (s.address, s.render_nodes, s.physical_gpus) for s in specs}


def devices_seen(host, number: int) -> dict:
    """What instance N's fake engine enumerated, asked on its own socket."""
    conn = UnixHTTPConnection(host.backend(number).removeprefix("unix:"), timeout=10)
    try:
        conn.request("GET", "/mipart/devices")
        return json.load(conn.getresponse())
    finally:
        conn.close()


def test_switching_one_gpu_at_runtime_moves_no_other_instance_and_gives_the_new_ones_their_device(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready(64, timeout=240)
    before, pids = placed(serving_host), serving_host.instance_pids()
    rocm_before = open_backend(serving_host.root).rocm_devices({})  # unconfined, as ROCm numbers them

    # Take GPU 2 out of service, then switch it as another tool would (a sysfs write of its own).
    serving_host.write_profile(partitions='"0-15,24-63"')
    serving_host.hup()
    serving_host.wait_ready(56, timeout=120)
    serving_host.wait_for(lambda: not ON_GPU2 & set(serving_host.instance_pids()), timeout=60, what="GPU 2 free")
    kernel.kernel_write(serving_host.root, GPU2, "current_compute_partition", "DPX")
    rocm_after = open_backend(serving_host.root).rocm_devices({})
    assert rocm_after[-2:] == ("/dev/dri/renderD144", "/dev/dri/renderD145")  # GPU 2's nodes went last
    assert rocm_after.index("/dev/dri/renderD152") < rocm_before.index("/dev/dri/renderD152")  # GPU 3 moved

    # Serve GPU 2 again, in its new layout (the profile says so: no repartition).
    serving_host.write_profile(partitions=None, overrides="[{select: [2], compute: DPX}]")
    serving_host.hup()
    serving_host.wait_ready(58, timeout=120)
    after = placed(serving_host)
    others = set(before) - ON_GPU2
    assert {n: after[n] for n in others} == {n: before[n] for n in others}  # number, address, partition
    now = serving_host.instance_pids()
    assert {n: now[n] for n in others} == {n: pids[n] for n in others}  # and never restarted
    assert set(after) - others == {16, 17}
    for number, node in ((16, "/dev/dri/renderD144"), (17, "/dev/dri/renderD145")):
        assert after[number] == (serving_host.backend(number), (node,), (2,))
        seen = devices_seen(serving_host, number)
        assert seen["selected"] == seen["own"] == [node], seen
    assert devices_seen(serving_host, 24)["selected"] == ["/dev/dri/renderD152"]  # GPU 3's first, as before
    assert "event='repartition.start'" not in serving_host.log_text()
