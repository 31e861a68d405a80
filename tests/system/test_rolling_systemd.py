"""Rolling repartition on a real systemd (issue 21): the .deb's units, the agent over D-Bus, fake
engines holding their simulated GPUs as vLLM holds /dev/kfd.

The issue's host, 2 x MI300X in DPX/NPS1 (4 instances): the profile moves GPU 1 alone to QPX
and the operator runs `systemctl reload mipart-agent` while a client loop runs. No driver reload
is needed, so only GPU 1's instances stop: the clients see only 200s, GPU 0's instance units keep
their MainPID, and the journal shows exactly the steps `mipart plan --json` planned.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from mipart.sim.clients import ClientLoop

from .nspawn import Machine
from .test_repartition_systemd import SIM, serve_simulated

pytestmark = pytest.mark.system

GPU_0, GPU_1 = [0, 1], [8, 9]  # mipart's numbers: 8 x GPU + partition
READY_TIMEOUT = 180


def test_moving_one_gpu_to_qpx_under_clients_keeps_the_other_gpu_s_units(machine: Machine, deb):
    m = machine
    host = serve_simulated(m, deb, gpus=2, compute="DPX", memory="NPS1")
    host.wait_ready(4, READY_TIMEOUT)
    before = host.units(GPU_0 + GPU_1)
    host.write_profile("DPX", "NPS1", overrides="[{select: [1], compute: QPX}]")

    planned = json.loads(
        m.run(f"MIPART_SYSFS_ROOT={SIM} mipart plan --json --profile /etc/mipart/profile.yaml").stdout
    )["rollout"]
    assert planned["mode"] == "rolling" and planned["dark"] == {}, planned
    [step] = planned["steps"]
    assert step["gpus"] == [1] and step["stop"] == GPU_1 and step["start"] == [8, 9, 10, 11]
    assert step["capacity"] == {"chat": 2}

    mark = host.cursor()
    with ClientLoop(host.listen, "test/chat", limit=READY_TIMEOUT + 60, pause=0.02) as clients:
        m.run("systemctl reload mipart-agent", timeout=60)
        host.wait_ready(6, READY_TIMEOUT)
        deadline = time.monotonic() + 60
        while "event='repartition.done'" not in host.journal("mipart-agent", mark):
            assert time.monotonic() < deadline, host.journal("mipart-agent", mark)[-3000:]
            time.sleep(0.5)
    assert set(clients.seen) == {"200"} and clients.seen["200"] > 50, clients.seen  # 0 failed, 0 answers of 503

    after = host.units([*GPU_0, 8, 9, 10, 11])
    assert {n: after[n] for n in GPU_0} == {n: before[n] for n in GPU_0}  # same MainPID, never restarted
    assert not {after[n][0] for n in GPU_1} & {before[n][0] for n in GPU_1}  # GPU 1's started anew
    assert re.search(r"^GPU 0 \S+ DPX NPS1", m.run(f"mipart sim show {SIM}").stdout, re.M)
    assert re.search(r"^GPU 1 \S+ QPX NPS1", m.run(f"mipart sim show {SIM}").stdout, re.M)

    log = host.journal("mipart-agent", mark)
    steps = re.findall(
        r"event='repartition\.step' phase='(start|end)' start='([\d,]*)'.*? gpus='(\d+)' stop='([\d,]*)'", log
    )
    planned_step = (",".join(map(str, step["start"])), "1", ",".join(map(str, step["stop"])))
    assert steps == [("start", *planned_step), ("end", *planned_step)], log[-3000:]
    assert "event='repartition.done' ok=True steps=1 of=1" in log, log[-3000:]
    status = host.status()
    assert status["repartition"]["error"] == "" and status["last_apply"]["ok"] is True
    assert "Traceback" not in host.journal("mipart-agent")
