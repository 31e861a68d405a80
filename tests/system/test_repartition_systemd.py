"""Repartition while serving on a real systemd: the .deb's units, the agent over D-Bus, and
fake engines that hold their simulated GPUs open as vLLM holds /dev/kfd.

One booted machine serves 16 instances in DPX/NPS2 through nginx while a client loop runs;
the profile is edited to CPX and the operator runs the documented command,
`systemctl reload mipart-agent`. A declared ROCm client (gpus.client_services) holds GPU 0
too. First a foreign process holds a GPU: the change is refused,
and serving stays on the old layout. Then, with it gone, the same command ends with 64
instances serving on CPX, none started on the old layout, and clients saw only 200s and
nginx's 503 JSON answer.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from mipart.sim.clients import ClientLoop

from .nspawn import Machine, install_deb

pytestmark = pytest.mark.system

SIM = "/var/lib/mipart-sim"
ENGINE = '["/usr/bin/python3", "-m", "mipart.sim.engine", "--startup-delay", "1"]'
PROFILE = """\
version: 1
gpus: {{compute: {compute}, memory: {memory}, client_services: [gpu-client.service]{overrides}}}
services:
  chat:
    model: test/chat
    listen: "127.0.0.1:{listen}"
    runtime: native
    command: {engine}
    args: []
health: {{interval: 1s, timeout: 800ms, unhealthy_after: 3, restart_backoff: 500ms}}
api: {{listen: "127.0.0.1:{api}"}}
"""
# A ROCm application the profile declares: stopped for the repartition, started again after.
CLIENT_UNIT = f"""\
[Unit]
Description=A ROCm application holding GPU 0 (test stand-in)

[Service]
ExecStart=/bin/sleep infinity
ExecStartPost=/bin/sh -c 'mipart sim hold {SIM} 0 --pid $MAINPID'
"""
DPX = [8 * gpu + partition for gpu in range(8) for partition in range(2)]  # mipart's numbers: 8 x GPU + partition
# 64 fake engines on two shared cores take about 15 s of CPU to start: generous bounds.
READY_TIMEOUT = 300
DIGESTS = r"""
import json, pathlib, subprocess
from mipart.runners.records import launches
from mipart.serving.spec import InstanceSpec
specs = {int(p.stem): InstanceSpec.from_file_text(p.read_text()) for p in pathlib.Path("/run/mipart/instances").glob("*.json")}
launched = launches(pathlib.Path("/run/mipart-vllm"))  # the launcher's record of each server, root's
out = {}
for n, spec in sorted(specs.items()):
    pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", f"mipart-vllm@{n}"], capture_output=True, text=True).stdout.strip()
    running = launched[n].digest if n in launched and str(launched[n].pid) == pid else None
    out[n] = {"pid": pid, "running": running, "spec": spec.digest(), "render": list(spec.render_nodes)}
print(json.dumps(out))
"""


class Serving:
    """The booted machine, its profile, and what the tests ask of it."""

    def __init__(self, m: Machine):
        from mipart.sim.ports import free_block

        first = free_block(2)  # the listener and the API; instances listen on unix sockets
        self.m, self.listen, self.api = m, first, first + 1

    def write_profile(self, compute: str, memory: str = "NPS2", overrides: str = "") -> None:
        """overrides: gpus.overrides as YAML flow text, e.g. "[{select: [1], compute: QPX}]"."""
        more = f", overrides: {overrides}" if overrides else ""
        text = PROFILE.format(
            compute=compute, memory=memory, overrides=more, listen=self.listen, api=self.api, engine=ENGINE
        )
        self.m.run(f"cat >/etc/mipart/profile.yaml <<'EOF'\n{text}EOF")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.m.run(f"systemctl show {' '.join('-p ' + p for p in props)} {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self) -> dict:
        return json.loads(self.m.run("mipart status --json", check=False).stdout)["status"]

    def wait_ready(self, count: int, timeout: float = READY_TIMEOUT) -> None:
        want, deadline, state = f"{count}/{count} instances ready", time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            state = self.show("mipart-agent", "ActiveState", "StatusText")
            if state["ActiveState"] == "active" and state["StatusText"].startswith(want):
                return
            time.sleep(0.5)
        raise AssertionError(f"not {want} after {timeout}s: {state}\n{self.journal('mipart-agent')[-4000:]}")

    def units(self, numbers: list[int]) -> dict[int, tuple[str, str]]:
        """Per instance: (MainPID, ExecMainStartTimestampMonotonic), each unit active."""
        units = " ".join(f"mipart-vllm@{n}" for n in numbers)
        out = self.m.run(
            f"systemctl show -p Id -p ActiveState -p MainPID -p ExecMainStartTimestampMonotonic {units}"
        ).stdout
        found = {}
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            assert props["ActiveState"] == "active", props
            found[int(props["Id"].split("@")[1].split(".")[0])] = (
                props["MainPID"],
                props["ExecMainStartTimestampMonotonic"],
            )
        return found

    def digests(self) -> dict[int, dict]:
        return {int(n): v for n, v in json.loads(self.m.run(f"python3 - <<'EOF'\n{DIGESTS}\nEOF").stdout).items()}

    def journal(self, unit: str = "", since: str = "", fmt: str = "cat") -> str:
        which = f"-u {unit}" if unit else ""
        cursor = f"--after-cursor='{since}'" if since else ""
        return self.m.run(f"journalctl -q --no-pager -o {fmt} {which} {cursor}", check=False).stdout

    def cursor(self) -> str:
        out = self.m.run("journalctl -q --no-pager -n 0 --show-cursor", check=False).stdout
        return out.rsplit("-- cursor: ", 1)[-1].strip()

    def request(self) -> str:
        return ClientLoop(self.listen, "test/chat").answer()


def serve_simulated(m: Machine, deb, gpus: int, compute: str, memory: str) -> Serving:
    """The .deb installed, a simulated MI300X host (`--gpus`, its layout), the profile for that
    layout, and the partition and agent units started."""
    install_deb(m, deb)
    host = Serving(m)
    m.run(f"mipart sim create {SIM} --model mi300x --gpus {gpus} --compute {compute} --memory {memory}")
    m.run(f"printf 'MIPART_SYSFS_ROOT={SIM}\\n' >/etc/default/mipart")  # the simulated root reloads itself
    host.write_profile(compute, memory)
    m.run("systemctl daemon-reload && systemctl start mipart-partition mipart-agent", timeout=180)
    return host


def holders(m: Machine) -> dict[int, int]:
    """Per physical GPU, how many processes hold it (`mipart sim show`)."""
    shown = m.run(f"mipart sim show {SIM}").stdout
    return {
        int(g): len(pids.split(", ")) if pids else 0
        for g, pids in re.findall(r"^GPU (\d) \S+ \w+ \w+(?:; held by ([\d, ]+))?$", shown, re.M)
    }


def monotonic_of(line: str) -> float:
    """The seconds of a `journalctl -o short-monotonic` line: `[  123.456789] host ...`."""
    return float(line.split("]", 1)[0].strip("[ "))


def test_reload_with_a_new_layout_repartitions_while_serving(machine: Machine, deb):
    m = machine
    install_deb(m, deb)
    host = Serving(m)
    m.run(f"mipart sim create {SIM} --model mi300x --gpus 8 --compute DPX --memory NPS2 --rules rocm-mi300x")
    m.run(f"printf 'MIPART_SYSFS_ROOT={SIM}\\n' >/etc/default/mipart")  # the simulated root reloads itself
    host.write_profile("DPX")
    m.run(f"cat >/etc/systemd/system/gpu-client.service <<'EOF'\n{CLIENT_UNIT}EOF")
    m.run("systemctl daemon-reload && systemctl start gpu-client mipart-partition mipart-agent", timeout=180)
    host.wait_ready(16)
    assert holders(m) == {0: 3, **{g: 2 for g in range(1, 8)}}  # two servers per GPU, and the client on GPU 0
    before = host.units(DPX)
    client = host.show("gpu-client", "MainPID")["MainPID"]
    host.write_profile("CPX", memory="NPS1")  # a memory change: a driver reload, host-wide (one GPU at a time: below)

    # The partition unit refuses while the agent's instances hold the GPUs, and says what to run.
    restarted = m.run("systemctl restart mipart-partition", check=False, timeout=120)
    assert restarted.returncode != 0
    said = [line for line in host.journal("mipart-partition").splitlines() if line.startswith("mipart: ")][-1]
    assert "mipart's own instances hold these GPUs (mipart-vllm@0, mipart-vllm@1, mipart-vllm@8 and 13 more)" in said, (
        said
    )
    assert "apply gpus: while serving with `systemctl reload mipart-agent`" in said, said
    assert host.show("gpu-client", "MainPID")["MainPID"] == client  # refused before the client services were touched

    # A process mipart does not manage holds GPU 0: refused before anything stops.
    m.run("systemd-run --unit=rocm-app --property=Type=exec /bin/sleep infinity")
    holder = host.show("rocm-app", "MainPID")["MainPID"]
    m.run(f"mipart sim hold {SIM} 0 --pid {holder}")
    with ClientLoop(host.listen, "test/chat", limit=READY_TIMEOUT + 60, pause=0.02) as clients:
        m.run("systemctl reload mipart-agent", timeout=60)
        deadline = time.monotonic() + 60
        while not host.status()["repartition"]["error"]:
            assert time.monotonic() < deadline, host.journal("mipart-agent")[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # a few health rounds on the old layout
    assert set(clients.seen) == {"200"}, clients.seen
    error = host.status()["repartition"]["error"]
    assert error.startswith(
        f"GPUs in use by processes mipart does not manage: PID {holder} (sleep, rocm-app.service) on GPU 0; "
        "nothing was stopped or changed"
    ), error
    assert host.units(DPX) == before
    assert json.loads(m.run("cat /run/mipart/partition.json").stdout)["error"] == error
    assert (
        host.show("mipart-agent", "StatusText")["StatusText"] == f"16/16 instances ready; repartition failed: {error}"
    )
    said = m.run("mipart status", check=False).stdout
    assert "partition drift: run `systemctl reload mipart-agent`" in said, said
    m.run("systemctl stop rocm-app")  # the simulated kernel forgets a user that exited

    # The documented command: readiness notice, drain, stop, apply (one driver reload), start 64 on the new layout.
    mark = host.cursor()
    with ClientLoop(host.listen, "test/chat", limit=READY_TIMEOUT + 60, pause=0.02) as clients:
        m.run("systemctl reload mipart-agent", timeout=60)
        host.wait_ready(64)
        while host.request() != "200":  # nginx has been told; it switches workers a moment later
            time.sleep(0.05)
    assert set(clients.seen) <= {"200", "503 ServiceUnavailable"}, clients.seen
    assert clients.seen.get("503 ServiceUnavailable"), clients.seen  # the gap was answered, never hung

    after = host.units(list(range(64)))
    assert not {pid for pid, _ in before.values()} & {pid for pid, _ in after.values()}
    digests = host.digests()
    assert sorted(digests) == list(range(64))
    assert all(d["running"] == d["spec"] for d in digests.values()), digests  # every server runs its spec
    assert digests[8]["render"] == ["/dev/dri/renderD136"]  # CPX: instance 8 is GPU 1's first partition
    assert "CPX NPS1" in m.run(f"mipart sim show {SIM}").stdout
    assert holders(m) == {0: 9, **{g: 8 for g in range(1, 8)}}  # eight servers per GPU, the client back on GPU 0
    now = host.show("gpu-client", "ActiveState", "MainPID")
    assert now["ActiveState"] == "active" and now["MainPID"] != client, now  # stopped for the change, started again

    # No instance started on the old layout after the command: every unit start came after the apply.
    lines = host.journal(since=mark, fmt="short-monotonic").splitlines()
    applied = [monotonic_of(line) for line in lines if "event='repartition.applied'" in line]
    assert len(applied) == 1, "\n".join(lines[-50:])
    # Each instance started exactly once, by the agent. PID 1's own "Started" lines are checked for their
    # order only: PID 1 gives up on a log line after 10 ms (SO_SNDTIMEO of its journal socket, systemd's
    # src/basic/log.c, create_log_socket()), and 64 servers starting at once keep journald that busy.
    agent_starts = [line for line in lines if re.search(r"event='instance\.start' unit='mipart-vllm@\d+'", line)]
    started = sorted(int(re.search(r"mipart-vllm@(\d+)'", line).group(1)) for line in agent_starts)
    assert started == list(range(64)), started
    starts = [line for line in lines if re.search(r"systemd\[1\]: Started mipart-vllm@\d+\.service", line)]
    assert all(monotonic_of(line) > applied[0] for line in agent_starts + starts)
    assert all(int(start) / 1e6 > applied[0] for _, start in after.values())

    deadline = time.monotonic() + 30  # the API answers from a host snapshot it refreshes in the background
    while (status := host.status())["partition"]["drift"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["repartition"]["error"] == "" and status["partition"]["matches"] is True
    assert status["last_apply"]["ok"] is True and status["last_apply"]["result"]["writes"] >= 8  # 8 compute, the memory
    log = host.journal("mipart-agent", mark)
    assert "event='repartition.done' ok=True instances=64" in log, log[-3000:]
    assert "event='partition.client_stopped' unit='gpu-client.service'" in log
    assert status["last_apply"]["result"]["stopped"] == ["gpu-client.service"]
    assert "Traceback" not in host.journal("mipart-agent")
