"""On real systemd with the shipped units (issue 19's acceptance): every native instance on a host of
several logical GPUs starts, and its fake engine reports that ROCm, enumerating as libhsakmt does
inside the instance's confined unit, saw exactly its own GPU, at the index the launcher set.

A simulated 2 x MI300X host in SPX: logical GPUs 0 and 8 (8 x GPU + partition), render nodes
renderD128 and renderD136. The GPU nodes are stand-ins made with mknod, both under /dev (which
the unit's DeviceAllow= names) and under the simulated root (which the simulator's servers open),
with the numbers of harmless devices nspawn lets a container have and DevicePolicy=closed does
not allow by default (test_hardening_systemd.py says which): so the device cgroup systemd gives
each unit is what refuses the other instance's node.
"""

from __future__ import annotations

import json
import time

import pytest

from .nspawn import DEVICE_POLICY, Machine, install_deb

pytestmark = pytest.mark.system

SIM = "/var/lib/mipart-sim"
STAND_INS = {"kfd": (10, 229), "dri/renderD128": (10, 200), "dri/renderD136": (10, 237)}
OWN = {0: "/dev/dri/renderD128", 8: "/dev/dri/renderD136"}
ENGINE = '["/usr/bin/python3", "-m", "mipart.sim.engine", "--startup-delay", "1"]'
PROFILE = """\
version: 1
gpus: {{compute: SPX, memory: NPS1}}
services: {{probe: {{model: test/probe, listen: "127.0.0.1:{listen}", runtime: native, command: {engine}, args: []}}}}
health: {{interval: 1s, timeout: 1s, unhealthy_after: 2, startup_timeout: 5m, restart_backoff: 1s}}
api: {{listen: "127.0.0.1:{api}"}}
"""
READY_TIMEOUT = 300
DEVPROBE = """\
import errno, os
for path in ("/dev/dri/renderD128", "/dev/dri/renderD136"):
    try:
        os.close(os.open(path, os.O_RDWR))
        print(path, "ok")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
"""
# What instance N's fake engine enumerated, asked on its socket from inside the machine.
DEVICES_SEEN = """\
import sys
from mipart.api.client import UnixHTTPConnection
conn = UnixHTTPConnection(f"/run/mipart-vllm/sockets/{sys.argv[1]}/http.sock", timeout=10)
conn.request("GET", "/mipart/devices")
print(conn.getresponse().read().decode())
"""


def mknod(m: Machine, path: str, major: int, minor: int) -> None:
    m.run(f"rm -f {path} && mknod {path} c {major} {minor} && chgrp render {path} && chmod 0660 {path}")


def test_every_instance_enumerates_exactly_its_own_gpu_in_its_confined_unit(tmp_path, system_ready, deb):
    from mipart.sim.ports import free_block

    first = free_block(2)
    listen, api = first, first + 1
    with Machine(tmp_path / "machine", args=DEVICE_POLICY["args"], env=DEVICE_POLICY["env"]) as m:
        install_deb(m, deb)
        m.run(f"mipart sim create {SIM} --model mi300x --gpus 2 --compute SPX --memory NPS1")
        m.run("mkdir -p /dev/dri")
        for name, (major, minor) in STAND_INS.items():
            mknod(m, f"/dev/{name}", major, minor)
            mknod(m, f"{SIM}/dev/{name}", major, minor)
        m.run(
            f"cat >/etc/default/mipart <<'EOF'\nMIPART_SYSFS_ROOT={SIM}\nMIPART_RELOAD_CMD=\"mipart sim reload {SIM}\"\nEOF"
        )
        m.run(f"cat >/etc/mipart/profile.yaml <<'EOF'\n{PROFILE.format(listen=listen, api=api, engine=ENGINE)}EOF")
        started = m.run("systemctl start mipart-partition mipart-agent", check=False, timeout=180)
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + READY_TIMEOUT
        while m.run("systemctl show -p StatusText --value mipart-agent").stdout.strip() != "2/2 instances ready":
            assert time.monotonic() < deadline, m.run("journalctl -q --no-pager -o cat -u 'mipart-*'").stdout[-4000:]
            time.sleep(1)

        # Unconfined (a root shell of the machine), ROCm would see both GPUs ...
        every = m.run(
            "python3 -c 'from pathlib import Path; from mipart.gpu import open_backend; "
            f'print(",".join(open_backend(Path("{SIM}")).rocm_devices({{}})))\''
        ).stdout.strip()
        assert every == "/dev/dri/renderD128,/dev/dri/renderD136"
        # ... each instance, in its unit, sees its own only, and runs on it.
        m.run(f"cat >/var/tmp/devices_seen.py <<'EOF'\n{DEVICES_SEEN}EOF")
        for number, own in OWN.items():
            seen = json.loads(m.run(f"python3 /var/tmp/devices_seen.py {number}").stdout)
            assert seen == {
                "enumerated": [own],
                "visible": {"CUDA_VISIBLE_DEVICES": "0"},
                "selected": [own],
                "own": [own],
            }, (number, seen)
            log = m.run(f"journalctl -q --no-pager -o cat -u mipart-vllm@{number}").stdout
            assert f"mipart: instance {number}: CUDA_VISIBLE_DEVICES=0 ({own} among the 1 GPUs" in log, log
        # The real device cgroup refuses the other node (the simulator's own check aside).
        m.run(f"cat >/var/tmp/devprobe.py <<'EOF'\n{DEVPROBE}EOF")
        seen = m.run(
            "systemd-run --wait --pipe -q -p DevicePolicy=closed -p DeviceAllow='/dev/dri/renderD136 rw' "
            "python3 /var/tmp/devprobe.py"
        ).stdout.splitlines()
        assert seen == ["/dev/dri/renderD128 EPERM", "/dev/dri/renderD136 ok"], seen
