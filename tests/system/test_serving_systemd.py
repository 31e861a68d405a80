"""Serving on a real systemd: the .deb's units, the agent over D-Bus, fake engines as vLLM.

One booted machine carries the live-install scenario (tests in file order, each leaving
the host serving the current profile); the image bake boots a machine of its own. The
container shares the host network, so every listener is a random free loopback port,
and requests go from the host straight to nginx on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest

from .nspawn import Machine, install_deb

pytestmark = pytest.mark.system

SIM = "/var/lib/mipart-sim"
ENGINE = '["/usr/bin/python3", "-m", "mipart.sim.engine", "--startup-delay", "1"]'
CHAT = (0, 1, 8, 9)  # mipart's numbers: 8 x GPU + partition (GPUs 0 and 1 in DPX)
PROFILE = """\
version: 1
gpus: {{compute: DPX, memory: NPS2}}
services:
  chat:
    model: {chat_model}
    partitions: "0-1,8-9"
    listen: "127.0.0.1:{chat_port}"
    runtime: native
    command: {engine}
    args: []
  code:
    model: test/code
    partitions: "{code_partitions}"
    listen: "127.0.0.1:{code_port}"
    runtime: native
    command: {engine}
    args: {code_args}
health: {{interval: 500ms, timeout: 400ms, unhealthy_after: 2, restart_backoff: 200ms}}
api: {{listen: "127.0.0.1:{api_port}"}}
"""


# -- ports and the profile ------------------------------------------------------------------------
def free_ports() -> dict[str, int]:
    """The two services' listeners and the API (instances listen on unix sockets), below the ephemeral range."""
    from mipart.sim.ports import free_block

    first = free_block(3)
    return {"chat_port": first, "code_port": first + 1, "api_port": first + 2}


class Host:
    """A booted machine with mipart installed, the profile it serves, and what to ask it."""

    def __init__(self, m: Machine, code_partitions: str = "16-17,24-25"):
        self.m = m
        self.ports = free_ports()
        self.values = dict(
            self.ports, engine=ENGINE, chat_model="test/chat", code_args="[]", code_partitions=code_partitions
        )
        ranges = (part.split("-") for part in code_partitions.split(","))
        self.code = tuple(n for bounds in ranges for n in range(int(bounds[0]), int(bounds[-1]) + 1))
        self.numbers = CHAT + self.code

    def profile_text(self, **changes) -> str:
        return PROFILE.format(**{**self.values, **changes})

    def write_profile(self, **changes) -> None:
        self.values.update(changes)
        self._put("/etc/mipart/profile.yaml", self.profile_text())

    def write_default(self) -> None:
        # The units' EnvironmentFile: the simulated sysfs and its driver reload.
        self._put("/etc/default/mipart", f'MIPART_SYSFS_ROOT={SIM}\nMIPART_RELOAD_CMD="mipart sim reload {SIM}"\n')

    def _put(self, path: str, text: str) -> None:
        if self.m.leader:
            self.m.run(f"mkdir -p {path.rsplit('/', 1)[0]} && cat >{path} <<'EOF'\n{text}EOF")
        else:
            target = self.m.rootfs / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    # -- systemd ------------------------------------------------------------------------------------
    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.m.run(f"systemctl show {' '.join('-p ' + p for p in props)} {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status_text(self) -> str:
        return self.show("mipart-agent", "StatusText")["StatusText"]

    def units(self) -> dict[int, tuple[str, str]]:
        """Per instance: (ExecMainStartTimestampMonotonic, MainPID); changes iff systemd restarted it."""
        cmd = " ; ".join(
            f"systemctl show -p Id -p ExecMainStartTimestampMonotonic -p MainPID -p ActiveState mipart-vllm@{n}"
            for n in self.numbers
        )
        found, current = {}, {}
        for line in self.m.run(cmd).stdout.splitlines():
            key, _, value = line.partition("=")
            current[key] = value
            if len(current) == 4:
                assert current["ActiveState"] == "active", current
                number = int(current["Id"].split("@")[1].split(".")[0])
                found[number] = (current["ExecMainStartTimestampMonotonic"], current["MainPID"])
                current = {}
        assert sorted(found) == sorted(self.numbers), found
        return found

    def wait_ready(self, timeout: float = 90) -> str:
        """Until the agent's STATUS= says every instance is ready (and nothing else)."""
        want = f"{len(self.numbers)}/{len(self.numbers)} instances ready"
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            state = self.show("mipart-agent", "ActiveState", "StatusText")
            status = state.get("StatusText", "")
            if state["ActiveState"] == "active" and status == want:
                return status
            time.sleep(0.2)
        raise AssertionError(
            f"agent not ready after {timeout}s: {status!r}\n{self.journal('mipart-agent')[-4000:]}\n"
            + self.m.run("systemctl --no-pager status 'mipart*'", check=False).stdout[-4000:]
        )

    def journal(self, unit: str, since: str = "") -> str:
        cursor = f"--after-cursor='{since}'" if since else ""
        return self.m.run(f"journalctl -q --no-pager -o cat -u {unit} {cursor}", check=False).stdout

    def cursor(self) -> str:
        out = self.m.run("journalctl -q --no-pager -n 0 --show-cursor", check=False).stdout
        return out.rsplit("-- cursor: ", 1)[-1].strip() if "-- cursor: " in out else ""

    # -- clients (from the host: the network is shared) ----------------------------------------------
    def request(self, service: str, timeout: float = 10) -> tuple[int, str]:
        port = self.ports[f"{service}_port"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            body = json.dumps({"model": f"test/{service}", "prompt": "hi", "max_tokens": 1})
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("X-Fake-Engine", "")
        finally:
            conn.close()

    def wait_serving(self, service: str, timeout: float = 10) -> float:
        """Until nginx answers 200 for SERVICE; returns how long that took."""
        start = time.monotonic()
        while True:
            try:
                answer = self.request(service)
            except OSError as exc:  # a new nginx master not listening yet is not serving yet
                answer = (repr(exc), "")
            if answer[0] == 200:
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, (service, answer, self.status_text())
            time.sleep(0.05)

    def backends(self, service: str, count: int) -> set[int]:
        """Instances that answered COUNT sequential requests (after the first 200: the agent
        reports an instance ready once it asked nginx to reload, a few ms before nginx has)."""
        self.wait_serving(service)
        seen = set()
        for _ in range(count):
            status, engine = self.request(service)
            assert status == 200, (service, status)
            seen.add(instance_of(engine))
        return seen


class Traffic:
    """A bounded request loop in a thread: counts every answer that is not 200."""

    def __init__(self, host: Host, limit: float = 120):
        self.host, self.limit = host, limit
        self.ok, self.failures = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            for service in ("chat", "code"):
                try:
                    status, _ = self.host.request(service, timeout=5)
                except OSError as exc:
                    status = repr(exc)
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append((service, status))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def socket_of(number: int) -> str:
    return f"/run/mipart-vllm/sockets/{number}/http.sock"


def instance_of(engine: str) -> int:
    """The instance an X-Fake-Engine header names: unix:/run/mipart-vllm/sockets/N/http.sock."""
    assert engine.startswith("unix:/run/mipart-vllm/sockets/"), engine
    return int(engine.split("/")[-2])


def listening_inodes(m: Machine, path: str) -> set[str]:
    """The inodes of the unix sockets listening at PATH (/proc/net/unix: state 01 with the accept flag)."""
    rows = m.run("cat /proc/net/unix").stdout.splitlines()
    return {r.split()[6] for r in rows if len(r.split()) > 7 and r.split()[7] == path and r.split()[3] == "00010000"}


def socket_inodes(m: Machine, pid: int) -> set[str]:
    links = m.run(f"ls -l /proc/{pid}/fd").stdout
    return set(re.findall(r"socket:\[(\d+)\]", links))


def assert_model_cache_writable(host: Host) -> None:
    """Instances run as uids of their own in the mipart group and download models into HF_HOME: the
    group may write it; its parent is root's, so no instance can swap the cache under the launcher."""
    probe = (
        "setpriv --reuid 70005 --regid mipart --clear-groups "
        "sh -c 'umask 0007 && touch /var/lib/mipart/huggingface/.probe && rm /var/lib/mipart/huggingface/.probe'"
    )
    p = host.m.run(probe, check=False)
    owners = host.m.run("stat -c '%U:%G %a %n' /var/lib/mipart /var/lib/mipart/huggingface", check=False).stdout
    assert p.returncode == 0, f"{p.stderr}\n{owners}"
    assert host.m.run("stat -c %U:%a /var/lib/mipart").stdout.strip() == "root:755", owners


def changed(before: dict, after: dict) -> set[int]:
    return {n for n in before if before[n] != after[n]}


# -- the live install ---------------------------------------------------------------------------------
def start_serving(m: Machine) -> Host:
    """On a machine with the .deb installed: a simulated 8 x MI300X in DPX/NPS2, partitioned and served."""
    h = Host(m)
    m.run(f"mipart sim create {SIM} --model mi300x --gpus 8 --compute DPX --memory NPS2")
    h.write_default()
    h.write_profile()
    started = m.run("systemctl start mipart-partition mipart-agent", check=False, timeout=180)
    assert started.returncode == 0, (
        started.stderr
        + m.run("journalctl -q --no-pager -o cat -u mipart-partition -u mipart-agent", check=False).stdout[-6000:]
    )
    h.wait_ready()
    return h


@pytest.fixture(scope="module")
def host(tmp_path_factory, system_ready, deb):
    with Machine(tmp_path_factory.mktemp("serving") / "machine") as m:
        install_deb(m, deb)
        yield start_serving(m)


def test_units_serve_through_nginx(host: Host):
    m = host.m
    status = m.run("systemctl status --no-pager mipart-vllm@9", check=False).stdout
    assert "logical GPU 9" in status, status
    pid = int(host.show("mipart-vllm@9", "MainPID")["MainPID"])
    argv = m.run(f"tr '\\0' '\\n' </proc/{pid}/cmdline").stdout.splitlines()
    assert argv[argv.index("--uds") + 1] == socket_of(9), argv
    assert "mipart.sim.engine" in argv, argv  # the launcher exec'd: the main PID is the server
    assert m.run(f"stat -c %u:%G /proc/{pid}").stdout.strip() == "70009:mipart"  # a uid of its own: 70000 + N
    env = m.run(f"tr '\\0' '\\n' </proc/{pid}/environ").stdout.splitlines()
    assert "MIPART_INSTANCE=9" in env and "CUDA_VISIBLE_DEVICES=0" in env, env
    assert "HF_HOME=/var/lib/mipart/huggingface" in env, env
    assert_model_cache_writable(host)
    # the main PID itself holds the listening socket, in a directory only it and nginx's workers enter
    assert listening_inodes(m, socket_of(9)) & socket_inodes(m, pid), "main PID does not listen"
    assert m.run("stat -c %u:%G:%a /run/mipart-vllm/sockets/9").stdout.strip() == "70009:www-data:750"

    assert host.backends("chat", 24) == set(CHAT)
    assert host.backends("code", 24) == set(host.code)

    # partition.service ran with the sim host already right: no write, no reload
    assert host.show("mipart-partition", "ActiveState", "Result") == {"ActiveState": "active", "Result": "success"}
    assert "0 writes, 0 reloads" in host.journal("mipart-partition")

    # state changes are one readable key=value line each in the journal
    log = host.journal("mipart-agent")
    for number in host.numbers:
        assert re.search(rf"event='instance\.start' unit='mipart-vllm@{number}'", log), log[-3000:]
        assert re.search(rf"event='instance\.ready' unit='mipart-vllm@{number}'", log), log[-3000:]
    assert "event='agent.ready'" in log and "event='nginx.updated'" in log
    assert "Traceback" not in log, log
    # in a whole-boot journal, each line names the unit that wrote it
    short = m.run("journalctl -q --no-pager -b -u 'mipart*'").stdout
    for ident in ("mipart-agent[", "mipart-partition[", "mipart-vllm@9["):
        assert ident in short, ident


def test_agent_restart_restarts_nothing(host: Host):
    before = host.units()
    agent_pid = host.show("mipart-agent", "MainPID")["MainPID"]
    with Traffic(host) as traffic:
        time.sleep(0.5)
        host.m.run("systemctl restart mipart-agent", timeout=150)
        host.wait_ready()
        time.sleep(1.5)  # a few health intervals after READY: no late flap either
    assert host.show("mipart-agent", "MainPID")["MainPID"] != agent_pid
    assert_model_cache_writable(host)  # an agent start must not take /var/lib/mipart back to root
    assert changed(before, host.units()) == set()
    assert not traffic.failures, traffic.failures[:10]
    assert traffic.ok >= 20, traffic.ok


def test_changed_args_restart_only_that_service(host: Host):
    before = host.units()
    mark = host.cursor()
    host.write_profile(code_args='["--max-tokens-default", "8"]')
    with Traffic(host) as traffic:
        host.m.run("systemctl restart mipart-agent", timeout=150)
        host.wait_ready()
    after = host.units()
    assert changed(before, after) == set(host.code), (before, after)
    for number in host.code:
        pid = after[number][1]
        assert "--max-tokens-default" in host.m.run(f"tr '\\0' ' ' </proc/{pid}/cmdline").stdout
    assert not [f for f in traffic.failures if f[0] == "chat"], traffic.failures[:10]
    log = host.journal("mipart-agent", mark)
    restarted = set(int(n) for n in re.findall(r"event='instance\.restart' unit='mipart-vllm@(\d+)'", log))
    assert restarted == set(host.code), log[-3000:]
    assert "reason='spec changed'" in log
    assert host.backends("code", 24) == set(host.code)


def test_reload_with_a_bad_profile_changes_nothing(host: Host):
    before = host.units()
    agent_pid = host.show("mipart-agent", "MainPID")["MainPID"]
    mark = host.cursor()
    host._put("/etc/mipart/profile.yaml", host.profile_text(chat_model='"test/chat\\nevil"'))
    host.m.run("systemctl reload mipart-agent", timeout=60)
    deadline = time.monotonic() + 30
    while "profile rejected" not in host.status_text():
        assert time.monotonic() < deadline, host.status_text()
        time.sleep(0.2)
    status = host.status_text()
    assert status.startswith(f"{len(host.numbers)}/{len(host.numbers)} instances ready; profile rejected"), status
    assert "control character" in status, status
    state = host.show("mipart-agent", "ActiveState", "MainPID")
    assert state == {"ActiveState": "active", "MainPID": agent_pid}, state
    log = host.journal("mipart-agent", mark)
    errors = [line for line in log.splitlines() if "event='profile.invalid'" in line]
    assert len(errors) == 1 and "control character" in errors[0] and "level='error'" in errors[0], log
    assert "Traceback" not in log, log
    time.sleep(1.5)  # several reconcile/health rounds on the last good profile
    assert changed(before, host.units()) == set()
    assert host.backends("chat", 8) <= set(CHAT)

    # Fixing the file and reloading clears the rejection, still without restarting anything.
    host.write_profile()
    host.m.run("systemctl reload mipart-agent", timeout=60)
    host.wait_ready(timeout=30)
    assert changed(before, host.units()) == set()


def test_a_stale_sweep_override_is_said_and_restore_reloads_through_systemd(host: Host):
    """bench sweep's systemd branch (bench/reload.py): the agent is told apart by its cgroup and
    reloaded with `systemctl reload --no-block mipart-agent`, not a bare SIGHUP. A killed sweep's
    override is said in STATUS= until `--restore` removes it; nothing restarts."""
    before = host.units()
    agent_pid = host.show("mipart-agent", "MainPID")["MainPID"]
    override = "/run/mipart/profile.override.yaml"
    host._put(override, "# left by a sweep killed with SIGKILL\n" + host.profile_text())
    host.m.run("systemctl reload mipart-agent", timeout=60)
    said = (
        f"{len(host.numbers)}/{len(host.numbers)} instances ready; profile override by mipart bench sweep: {override}"
    )
    deadline = time.monotonic() + 30
    while host.status_text() != said:
        assert time.monotonic() < deadline, host.status_text()
        time.sleep(0.2)
    mark = host.cursor()
    done = host.m.run("mipart bench sweep --restore", check=False, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mipart: reloading the agent: `systemctl reload mipart-agent`" in done.stderr, done.stderr
    assert "the operator's profile is in force again" in done.stdout, done.stdout
    host.wait_ready(timeout=30)  # exactly N/N ready: the override is no longer said
    assert host.m.run(f"test -e {override}", check=False).returncode == 1
    assert (
        host.m.run("cat /run/mipart/bench-sweep.lock").stdout.strip().isdigit()
    )  # the sweep's PID, its flock gone with it
    assert host.show("mipart-agent", "MainPID")["MainPID"] == agent_pid
    assert "event='agent.reload'" in host.journal("mipart-agent", mark)
    assert changed(before, host.units()) == set()


def test_sigkilled_instance_is_restarted_through_systemd(host: Host):
    before = host.units()
    victim = 8
    old_pid = before[victim][1]
    mark = host.cursor()
    host.m.run(f"kill -KILL {old_pid}")
    deadline = time.monotonic() + 60
    while True:
        state = host.show(f"mipart-vllm@{victim}", "ActiveState", "MainPID", "ExecMainStartTimestampMonotonic")
        if state["ActiveState"] == "active" and state["MainPID"] not in ("0", old_pid):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    host.wait_ready(timeout=60)
    after = host.units()
    assert changed(before, after) == {victim}
    assert host.backends("chat", 24) == set(CHAT)
    log = host.journal("mipart-agent", mark)
    # LAST ERROR is systemd's account of the death and the server's own last line, not systemd's line about it.
    assert re.search(
        rf"event='instance\.exited' unit='mipart-vllm@{victim}' .*reason=.killed by signal 9 \(signal\); ", log
    ), log
    assert re.search(
        rf"event='instance\.restart' unit='mipart-vllm@{victim}' .*reason=.killed by signal 9 \(signal\)", log
    ), log
    assert "Failed with result" not in log, log
    assert re.search(rf"event='instance\.ready' unit='mipart-vllm@{victim}'", log), log


# -- the image bake -----------------------------------------------------------------------------------------
def test_baked_image_partitions_and_serves_at_first_boot(tmp_path, system_ready, deb):
    """Installed, configured and the GPUs in the wrong layout before boot; the boot does the rest."""
    with Machine(tmp_path / "machine", boot_timeout=120) as m:
        host = Host(m, code_partitions="49,57")  # partition 1 of GPUs 6 and 7: only once DPX is applied

        def bake(m: Machine):
            m.copy_in(deb, f"/var/tmp/{deb.name}")
            p = m.offline(
                f"apt-get install -y -q /var/tmp/{deb.name} && "
                f"mipart sim create {SIM} --model mi300x --gpus 8 --compute SPX --memory NPS1"
            )
            assert p.returncode == 0, p.stdout + p.stderr
            host.write_default()
            host.write_profile()

        m.pre_boot(bake)
        m.boot()
        host.wait_ready(timeout=120)

        assert host.show("mipart-partition", "ActiveState", "Result") == {"ActiveState": "active", "Result": "success"}
        applied = host.journal("mipart-partition")
        assert re.search(r"applied: [1-9]\d* writes, 1 reloads; 16 logical GPUs", applied), applied
        m.run(f"MIPART_SYSFS_ROOT={SIM} mipart partition assert")
        # ordered: the agent only started once the GPUs were partitioned
        part_done = int(host.show("mipart-partition", "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
        agent_start = int(
            host.show("mipart-agent", "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"]
        )
        assert 0 < part_done <= agent_start
        assert host.show("mipart-agent", "NRestarts")["NRestarts"] == "0"
        assert_model_cache_writable(host)
        assert host.backends("chat", 16) == set(CHAT)
        assert host.backends("code", 16) == set(host.code)
