"""`mipart status`: against a live agent API, and with the agent down (what the units report)."""

from __future__ import annotations

import json
import re
import socket
import time

from conftest import mipart

from .api_host import DPX_NUMBERS, LiveApi, SimApiHost


def status(host: SimApiHost, *args: str, path: str | None = None):
    env = dict(host.env)
    if path is not None:  # systemctl is the stand-in there, and no system bus answers before it (runners.unit_state)
        env["PATH"], env["DBUS_SYSTEM_BUS_ADDRESS"] = path, "unix:path=/nonexistent"
    return mipart("status", "--profile", host.profile, *args, env=env, timeout=60)


def rows(stdout: str) -> dict[str, list[str]]:
    """Table rows by unit; columns are separated by two or more spaces."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("mipart-vllm@"):
            cells = re.split(r"\s{2,}", line.strip())
            found[cells[0]] = cells
    return found


def fake_systemctl(tmp_path, body: str) -> str:
    """A PATH holding only a `systemctl` script; returns the PATH."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "systemctl"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(bindir)


# -- the agent answers -------------------------------------------------------------------


def test_human_table_from_the_live_api(sim_api_host, live_api):
    done = status(sim_api_host)
    assert done.returncode == 3, done.stderr  # some instances are not ready, like `systemctl status`
    lines = done.stdout.splitlines()
    digest = sim_api_host.agent.profile.digest[:12]
    assert lines[0] == (
        f"mipart-agent {__import__('mipart').__version__} on {sim_api_host.api}: profile {sim_api_host.profile} (digest {digest}), "
        "partitions match (8 GPUs, 16 logical), 12/16 instances ready "
        "(1 degraded, 1 starting, 1 unhealthy, 1 restarting, 1 failed)"
    )
    header = next(line for line in lines if line.startswith("UNIT"))
    assert re.split(r"\s{2,}", header) == ["UNIT", "SERVICE", "GPU", "STATE", "SINCE", "RESTARTS", "LAST ERROR"]
    table = rows(done.stdout)
    assert len(table) == 16
    assert table["mipart-vllm@0.service"] == [
        "mipart-vllm@0.service",
        "chat",
        "0",
        "ready",
        "5min ago",
        "0",
        "-",
    ]
    row = table["mipart-vllm@9.service"]
    assert row[:4] + row[5:] == ["mipart-vllm@9.service", "chat", "9", "restarting", "2", "unit failed/failed"]
    assert re.fullmatch(r"\d+s ago", row[4]) and 20 <= int(row[4].split("s")[0]) < 60  # set 20 s before the run
    assert table["mipart-vllm@16.service"][3:6] == ["failed", "1min ago", "5"]
    assert table["mipart-vllm@17.service"][3] == "unhealthy"


def test_exit_zero_when_every_instance_serves(sim_api_host, live_api):
    from mipart.health.machine import InstanceHealth

    sim_api_host.agent.instances.health = {n: InstanceHealth(n, state="ready") for n in sim_api_host.agent.specs}
    sim_api_host.agent.instances.health[25].state = "degraded"  # still in rotation
    done = status(sim_api_host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "16/16 instances ready (1 degraded)" in done.stdout.splitlines()[0]


def test_json(sim_api_host, live_api):
    done = status(sim_api_host, "--json")
    assert done.returncode == 3, done.stderr
    data = json.loads(done.stdout)
    assert data["agent"] == {"answering": True, "api": sim_api_host.api}
    assert data["status"]["instances"]["total"] == 16 and data["status"]["partition"]["matches"] is True
    assert [i["number"] for i in data["instances"]] == DPX_NUMBERS
    assert data["instances"][2]["number"] == 8 and data["instances"][2]["state"] == "starting"


def test_errors_are_shown_under_the_header(sim_api_host, live_api):
    sim_api_host.agent.status.profile_error = "profile.yaml:7:3: services.chat.listen: bad; use a port"
    sim_api_host.agent.status.nginx.error = "nginx: [emerg] unknown directive"
    sim_api_host.agent.status.front.strays = 2
    done = status(sim_api_host)
    assert "profile rejected, running the last good one: profile.yaml:7:3" in done.stdout
    assert "nginx back config rejected (the previous one still serves): nginx: [emerg]" in done.stdout
    assert "  nginx front: 2 nginx workers serve a frozen config without their master" in done.stdout


def test_both_nginx_layers_are_shown(sim_api_host, live_api):
    """One line for the front (clients' connections) and the back (the instances), down ones said loud."""
    state = sim_api_host.agent.status
    state.nginx.generation = state.nginx.serving = "aaa"
    state.front.generation, state.front.serving = "fff", "eee"
    sim_api_host.agent.runner.nginx["front"] = False
    time.sleep(1.1)  # past the host cache
    done = status(sim_api_host)
    assert (
        "  nginx: front NOT RUNNING (config eee, installed fff), back running (config aaa)" in done.stdout.splitlines()
    )


def test_api_option_forms(sim_api_host, live_api, tmp_path):
    for form in (sim_api_host.api, f"http://{sim_api_host.api}", f"http://{sim_api_host.api}/"):
        done = status(sim_api_host, "--api", form, "--json")
        assert done.returncode == 3, (form, done.stdout, done.stderr)
        assert json.loads(done.stdout)["status"]["instances"]["total"] == 16
    sock = tmp_path / "api.sock"
    unix = LiveApi(sim_api_host.agent, f"unix:{sock}")
    try:
        for form in (str(sock), f"unix:{sock}"):
            done = status(sim_api_host, "--api", form)
            assert done.returncode == 3, done.stderr
            assert done.stdout.startswith(f"mipart-agent {__import__('mipart').__version__} on unix:{sock}: ")
            assert len(rows(done.stdout)) == 16
    finally:
        unix.close()


# -- the agent is down ---------------------------------------------------------------------------


def test_agent_down_lists_the_planned_instances(sim_api_host):
    done = status(sim_api_host)  # nothing listens on the profile's api.listen; no systemd on this host
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[0]
        == f"mipart-agent is not answering on {sim_api_host.api} (connection refused); showing what the units report"
    )
    table = rows(done.stdout)
    assert sorted(table) == sorted(f"mipart-vllm@{n}.service" for n in DPX_NUMBERS)
    assert table["mipart-vllm@17.service"][1:4] == ["chat", "17", "unknown"]  # no systemd on this host


def test_agent_down_and_no_systemctl(sim_api_host, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = status(sim_api_host, path=str(empty))
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines()[0].startswith(
        f"mipart-agent is not answering on {sim_api_host.api} (connection refused)"
    )
    assert "unit states unknown" in done.stdout
    assert all(cells[3] == "unknown" for cells in rows(done.stdout).values())
    assert len(rows(done.stdout)) == 16


def test_agent_down_and_systemctl_failing(sim_api_host, tmp_path):
    done = status(
        sim_api_host, path=fake_systemctl(tmp_path, "echo 'System has not been booted with systemd' >&2; exit 1\n")
    )
    assert done.returncode == 3
    assert all(cells[3] == "unknown" for cells in rows(done.stdout).values())


def test_agent_down_reads_unit_states_in_one_systemctl_call(sim_api_host, tmp_path):
    started = int((time.monotonic() - 300) * 1e6)  # systemd's CLOCK_MONOTONIC microseconds
    calls = tmp_path / "calls"
    body = f"""echo "$@" >> {calls}
for unit in "$@"; do
  case "$unit" in
    mipart-vllm@9.service) printf 'Id=%s\\nActiveState=failed\\nSubState=failed\\nExecMainStartTimestampMonotonic=0\\n\\n' "$unit" ;;
    mipart-vllm@*) printf 'Id=%s\\nActiveState=active\\nSubState=running\\nExecMainStartTimestampMonotonic={started}\\n\\n' "$unit" ;;
  esac
done
"""
    done = status(sim_api_host, path=fake_systemctl(tmp_path, body))
    assert done.returncode == 3, done.stderr
    assert len(calls.read_text().splitlines()) == 1
    table = rows(done.stdout)
    assert table["mipart-vllm@0.service"][3:5] == ["active/running", "5min ago"]
    assert table["mipart-vllm@9.service"][3:5] == ["failed/failed", "-"]
    js = status(sim_api_host, "--json", path=fake_systemctl(tmp_path, body))
    data = json.loads(js.stdout)
    assert data["agent"] == {"answering": False, "api": sim_api_host.api, "reason": "connection refused"}
    assert data["instances"][0]["active_state"] == "active" and data["instances"][0]["started"].endswith("Z")


def test_agent_down_on_a_unix_socket(sim_api_host, tmp_path):
    done = status(sim_api_host, "--api", str(tmp_path / "missing.sock"))
    assert (
        done.stdout.splitlines()[0]
        == f"mipart-agent is not answering on unix:{tmp_path / 'missing.sock'} (no such socket); showing what the units report"
    )


def test_agent_that_hangs_times_out(sim_api_host):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        start = time.monotonic()
        done = status(sim_api_host, "--api", f"127.0.0.1:{port}")
        assert time.monotonic() - start < 20
    assert (
        done.stdout.splitlines()[0]
        == f"mipart-agent is not answering on 127.0.0.1:{port} (no answer within 2s); showing what the units report"
    )


def test_bad_profile_with_the_agent_down_is_a_user_error(sim_api_host):
    sim_api_host.profile.write_text("version: 1\nservices: [\n")
    done = status(sim_api_host, "--api", "127.0.0.1:9")
    assert done.returncode == 1
    assert str(sim_api_host.profile) in done.stderr and "Traceback" not in done.stderr


def test_relative_times():
    from mipart.cli.status import relative

    assert relative(None) == "-"
    assert relative(100, now=112) == "12s ago"
    assert relative(0.5, now=180.9) == "3min ago"
    assert relative(0, now=7200) == "2h ago"
    assert relative(0, now=7500) == "2h 5min ago"
    assert relative(0, now=3 * 86400 + 3600) == "3d 1h ago"
    assert relative(10, now=5) == "0s ago"  # clock skew never shows the future


def test_default_api_falls_back_when_the_profile_is_unreadable(tmp_path):
    from mipart.cli.status import _default_api
    from mipart.names import DEFAULT_API_LISTEN as DEFAULT_API

    assert _default_api(str(tmp_path / "missing.yaml")) == DEFAULT_API == "127.0.0.1:8049"
