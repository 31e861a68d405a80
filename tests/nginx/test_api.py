"""The agent's status API on a real mipart Agent over a simulated 8 x MI300X host (DPX/NPS2: 16 instances)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import AGENT

from .api_host import DPX_NUMBERS, LiveApi, SimApiHost


def get(host: SimApiHost, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", host.api_port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(host: SimApiHost, path: str, expect: int = 200):
    status, headers, body = get(host, path)
    assert status == expect, body
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


# -- status and instances ------------------------------------------------------------------


def test_status_reports_profile_partitions_apply_and_counts(sim_api_host, live_api):
    from mipart.partition.apply import ApplyResult
    from mipart.partition.record import record_apply

    record_apply(True, sim_api_host.agent.profile.digest, ApplyResult(writes=2, reloads=1, logical_gpus=16))
    st = get_json(sim_api_host, "/v1/status")
    assert st["api_version"] == 2
    assert st["version"] == __import__("mipart").__version__
    assert st["profile"] == {
        "path": str(sim_api_host.profile),
        "digest": sim_api_host.agent.profile.digest,
        "loaded": True,
        "override": "",
    }
    assert st["profile_error"] == ""
    part = st["partition"]
    assert part["matches"] is True and part["logical_gpus"] == 16 and part["error"] == ""
    assert [g["index"] for g in part["gpus"]] == list(range(8))
    assert part["gpus"][0] == {
        "index": 0,
        "bdf": part["gpus"][0]["bdf"],
        "compute": "DPX",
        "memory": "NPS2",
        "compute_want": "DPX",
        "memory_want": "NPS2",
        "matches": True,
        "logical_gpus": [0, 1],
    }
    assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", part["gpus"][0]["bdf"])
    assert st["last_apply"]["ok"] is True and st["last_apply"]["result"]["reloads"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", st["last_apply"]["time"])
    assert st["instances"] == {
        "total": 16,
        "ready": 11,
        "degraded": 1,
        "starting": 1,
        "restarting": 1,
        "failed": 1,
        "unhealthy": 1,
        "draining": 0,
    }
    nginx = st[
        "nginx"
    ]  # issue 13 added what nginx serves: generation, serving_generation, current, stray_workers, problem
    assert {k: nginx[k] for k in ("config_valid", "error", "running")} == {
        "config_valid": True,
        "error": "",
        "running": True,
    }
    assert nginx["stray_workers"] == 0 and nginx["problem"] == "" and st["files_error"] == ""
    # issue 22: the front layer, which holds the clients' connections, under nginx.front
    assert {k: nginx["front"][k] for k in ("config_valid", "error", "running", "stray_workers", "problem")} == {
        "config_valid": True,
        "error": "",
        "running": True,
        "stray_workers": 0,
        "problem": "",
    }
    assert st["reconcile"]["error"] == "" and st["reconcile"]["last"].endswith("Z")


def test_status_shows_errors_and_a_partition_mismatch(sim_api_host, live_api):
    sim_api_host.agent.status.profile_error = "profile.yaml:3:5: bad; good"
    sim_api_host.agent.status.nginx.error = "nginx: [emerg] unknown directive"
    sim_api_host.agent.status.reconcile_error = "services.chat has no logical GPU"
    gpu0 = sorted(
        p for p in (sim_api_host.root / "bus/pci/devices").iterdir() if (p / "current_compute_partition").exists()
    )[0]
    time.sleep(1.1)  # past the host cache
    before = (gpu0 / "current_compute_partition").read_text()
    (gpu0 / "current_compute_partition").write_text("SPX\n")
    try:
        st = get_json(sim_api_host, "/v1/status")
    finally:
        (gpu0 / "current_compute_partition").write_text(before)
    assert st["profile_error"].startswith("profile.yaml:3:5")
    assert st["nginx"]["config_valid"] is False and "unknown directive" in st["nginx"]["error"]
    assert st["reconcile"]["error"].startswith("services.chat")
    assert st["partition"]["matches"] is False
    assert [g["matches"] for g in st["partition"]["gpus"]].count(False) == 1


def test_host_facts_are_cached_not_read_per_request(sim_api_host, live_api, monkeypatch):
    calls = []
    real = sim_api_host.agent.host_snapshot
    monkeypatch.setattr(sim_api_host.agent, "host_snapshot", lambda: calls.append(1) or real())
    time.sleep(1.1)
    for _ in range(20):
        get_json(sim_api_host, "/v1/status")
        get_json(sim_api_host, "/v1/instances")
    assert len(calls) <= 2


def test_instances_list_and_one(sim_api_host, live_api):
    data = get_json(sim_api_host, "/v1/instances")
    assert data["api_version"] == 2
    instances = data["instances"]
    assert [i["number"] for i in instances] == DPX_NUMBERS
    states = {i["number"]: i["state"] for i in instances}
    assert states[0] == "ready" and states[1] == "degraded" and states[8] == "starting"
    assert states[9] == "restarting" and states[16] == "failed" and states[17] == "unhealthy"
    one = get_json(sim_api_host, "/v1/instances/9")
    assert one == instances[3] and one["api_version"] == 2
    assert one["unit"] == "mipart-vllm@9.service" and one["service"] == "chat" and one["model"] == "test/fake-llm"
    assert "port" not in one and one["address"] == f"unix:{sim_api_host.serving_dir}/sockets/9/http.sock"
    assert one["logical_gpus"] == [9] and one["physical_gpus"] == [1]
    assert one["devices"][0] == "/dev/kfd" and one["devices"][1].startswith("/dev/dri/renderD")
    assert one["restarts"] == 2 and one["last_error"] == "unit failed/failed"
    assert (one["active_state"], one["sub_state"]) == ("active", "running")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", one["since"])


def test_a_draining_instance_is_reported_as_draining(sim_api_host, live_api):
    from mipart.health.machine import InstanceHealth

    sim_api_host.agent.instances.health[24] = InstanceHealth(24, state="ready")
    sim_api_host.agent.instances.health[24].drain()
    assert get_json(sim_api_host, "/v1/instances/24")["state"] == "draining"
    assert get_json(sim_api_host, "/v1/instances/24")["ready"] is False
    assert get_json(sim_api_host, "/v1/status")["instances"]["draining"] == 1


def test_instance_state_comes_from_the_health_state_machine():
    from mipart.daemon.snapshot import instance_state
    from mipart.health.machine import InstanceHealth
    from mipart.health.states import STATES
    from mipart.profile.schema import HealthSpec

    assert instance_state(None) == "starting"
    spec = HealthSpec(unhealthy_after=2)
    h = InstanceHealth(0)
    assert instance_state(h) == "starting"
    h.record(True, "", spec)
    assert instance_state(h) == "ready"
    h.record(False, "x", spec)
    assert instance_state(h) == "degraded"
    h.record(False, "x", spec)
    assert instance_state(h) == "unhealthy"
    assert "draining" in STATES
    assert all(instance_state(InstanceHealth(0, state=s)) == s for s in STATES)


# -- errors ------------------------------------------------------------------------------------


def assert_error(status: int, headers: dict, body: bytes, code: int) -> dict:
    assert status == code
    assert headers["content-type"].startswith("application/json")
    data = json.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}
    assert data["error"]["code"] == code and data["error"]["message"]
    return data


def test_errors_are_json(sim_api_host, live_api):
    data = assert_error(*get(sim_api_host, "/v1/instances/99"), 404)
    assert "no instance 99" in data["error"]["message"]
    data = assert_error(*get(sim_api_host, "/v1/instances/abc"), 400)
    assert "integer" in data["error"]["message"]
    for bad in ("-1", "1.5", "1_0", "%C2%B3"):
        assert_error(*get(sim_api_host, f"/v1/instances/{bad}"), 400)
    assert_error(*get(sim_api_host, "/nope"), 404)
    assert_error(*get(sim_api_host, "/v1/status/"), 404)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = get(sim_api_host, "/v1/status", method)
        assert_error(status, headers, body, 405)
        assert "GET" in headers["allow"].split(", ")


def test_healthz(sim_api_host, live_api):
    assert get_json(sim_api_host, "/healthz") == {"status": "ok"}
    sim_api_host.agent.stopping.set()
    assert_error(*get(sim_api_host, "/healthz"), 503)


# -- Prometheus --------------------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABELS = rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}(?:,[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE})*)?\}}"
VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)"
SAMPLE = re.compile(rf"({NAME})({LABELS})? ({VALUE})(?: -?\d+)?")
HELP = re.compile(rf"# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*")
TYPE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
LABEL_PAIR = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})")


def parse_exposition(text: str) -> dict[str, list[tuple[dict, float]]]:
    """Strict text format 0.0.4: every line matches; HELP/TYPE once per family, before its samples."""
    assert text.endswith("\n")
    families: dict[str, list] = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    for line in text.splitlines():
        if m := HELP.fullmatch(line):
            assert m[1] not in helped, line
            helped.add(m[1])
        elif m := TYPE.fullmatch(line):
            assert m[1] not in typed and m[1] not in families, line
            typed[m[1]] = m[2]
            families[m[1]] = []
        elif m := SAMPLE.fullmatch(line):
            assert m[1] in typed, f"sample before its TYPE: {line}"
            labels = {k: json.loads(v) for k, v in LABEL_PAIR.findall(m[2] or "")}
            families[m[1]].append((labels, float(m[3])))
        else:
            raise AssertionError(f"not exposition format: {line!r}")
    return families


def test_metrics_text_format(sim_api_host, live_api):
    status, headers, body = get(sim_api_host, "/metrics")
    assert status == 200
    assert headers["content-type"].replace(" ", "").split(";")[:2] == ["text/plain", "version=0.0.4"]
    families = parse_exposition(body.decode())
    assert families["mipart_agent_info"] == [({"version": __import__("mipart").__version__}, 1.0)]
    assert families["mipart_profile_valid"] == [({}, 1.0)]
    both = [({"layer": "back"}, 1.0), ({"layer": "front"}, 1.0)]
    assert families["mipart_nginx_config_valid"] == both
    assert families["mipart_partition_matches"] == [({}, 1.0)] and families["mipart_nginx_running"] == both
    by_state = {labels["state"]: value for labels, value in families["mipart_instances"]}
    assert by_state == {
        "starting": 1,
        "ready": 11,
        "degraded": 1,
        "unhealthy": 1,
        "restarting": 1,
        "draining": 0,
        "failed": 1,
    }
    ready = {labels["instance"]: (labels, value) for labels, value in families["mipart_instance_ready"]}
    assert len(ready) == 16
    assert ready["mipart-vllm@9.service"] == ({"service": "chat", "instance": "mipart-vllm@9.service", "gpu": "9"}, 0.0)
    assert ready["mipart-vllm@0.service"][1] == 1.0
    restarts = {labels["instance"]: value for labels, value in families["mipart_instance_restarts_total"]}
    assert restarts["mipart-vllm@16.service"] == 5 and restarts["mipart-vllm@0.service"] == 0


def test_metrics_escape_label_values_and_follow_errors(sim_api_host):
    from mipart.api.metrics import prometheus_metrics

    agent = sim_api_host.agent
    agent.specs[0] = replace(agent.specs[0], service='we"ird\\name\nx', logical_gpus=(0, 1))
    agent.status.profile_error, agent.status.front.error = "bad", "bad"
    families = parse_exposition(prometheus_metrics(agent.snapshot()))
    labels = [lb for lb, _ in families["mipart_instance_ready"] if lb["instance"] == "mipart-vllm@0.service"][0]
    assert labels == {"service": 'we"ird\\name\nx', "instance": "mipart-vllm@0.service", "gpu": "0,1"}
    assert families["mipart_profile_valid"] == [({}, 0.0)]
    assert families["mipart_nginx_config_valid"] == [({"layer": "back"}, 1.0), ({"layer": "front"}, 0.0)]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_metrics_pass_promtool(sim_api_host, live_api):
    _, _, body = get(sim_api_host, "/metrics")
    done = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_targets_are_prometheus_http_sd(sim_api_host, live_api):
    groups = get_json(sim_api_host, "/v1/targets")
    assert isinstance(groups, list) and len(groups) == 16
    for n, group in zip(DPX_NUMBERS, groups, strict=True):
        assert set(group) == {"targets", "labels"}
        assert group["targets"] == [sim_api_host.api]  # the API itself: instances listen on unix sockets
        labels = group["labels"]
        assert labels["service"] == "chat" and labels["instance_unit"] == f"mipart-vllm@{n}.service"
        assert labels["gpu"] == str(n) and labels["__metrics_path__"] == f"/v1/instances/{n}/metrics"
        assert all(isinstance(v, str) for v in labels.values())
        assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) for k in labels)


def test_an_instances_metrics_are_read_through_the_api_with_a_bound(sim_api_host, live_api, monkeypatch):
    """Prometheus cannot reach an instance's socket; the API reads it, at most 1 MiB and 5 s (issue 20:
    one hostile /metrics of 1 GiB grew the agent to 752 MiB)."""
    from mipart.api import server

    status, headers, body = get(sim_api_host, "/v1/instances/9/metrics")
    assert status == 200 and body == sim_api_host.instances.METRICS and headers["content-type"].startswith("text/plain")
    sockets = {n: spec.socket for n, spec in sim_api_host.agent.specs.items()}
    sim_api_host.instances.bodies[sockets[1]] = b"x" * ((1 << 20) + 1)
    status, _, body = get(sim_api_host, "/v1/instances/1/metrics")
    assert status == 502 and b"over the 1048576 bytes" in body
    monkeypatch.setattr(server, "PROXY_TIMEOUT", 0.3)
    sim_api_host.instances.bodies[sockets[8]] = None  # never answers
    status, _, body = get(sim_api_host, "/v1/instances/8/metrics")
    assert status == 504 and json.loads(body)["error"]["message"] == "instance 8 did not answer /metrics within 0.3s"
    assert get(sim_api_host, "/v1/instances/99/metrics")[0] == 404


def test_openapi_document_is_served_and_shipped(sim_api_host, live_api):
    from mipart.api.server import openapi_text

    status, headers, body = get(sim_api_host, "/openapi.yaml")
    assert status == 200 and "yaml" in headers["content-type"]
    doc = yaml.safe_load(body)
    assert doc["openapi"] == "3.0.3"
    assert set(doc["paths"]) == {
        "/v1/status",
        "/v1/instances",
        "/v1/instances/{n}",
        "/v1/instances/{n}/metrics",
        "/healthz",
        "/metrics",
        "/v1/targets",
        "/openapi.yaml",
    }
    assert body.decode() == openapi_text()
    assert (AGENT / "mipart" / "api" / "openapi.yaml").read_text() == openapi_text()


# -- listening ---------------------------------------------------------------------------------


def test_unix_socket_mode(sim_api_host, tmp_path):
    from mipart.api.client import UnixHTTPConnection

    path = tmp_path / "sock" / "api.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # left behind by a killed agent: nobody listens
    stale.close()
    api = LiveApi(sim_api_host.agent, f"unix:{path}")
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        conn = UnixHTTPConnection(str(path))
        try:
            conn.request("GET", "/v1/status")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["instances"]["total"] == 16
        finally:
            conn.close()
        from mipart.errors import UserError

        with pytest.raises(UserError, match="address already in use"):
            LiveApi(sim_api_host.agent, f"unix:{path}")  # a live_api socket is never taken over
    finally:
        api.close()


def test_unix_socket_directory_is_created(sim_api_host, tmp_path):
    path = tmp_path / "new" / "dir" / "api.sock"
    api = LiveApi(sim_api_host.agent, f"unix:{path}")
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
    finally:
        api.close()


def test_port_in_use_is_one_clear_line(sim_api_host):
    from mipart.errors import UserError

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(UserError) as caught:
            LiveApi(sim_api_host.agent, f"127.0.0.1:{port}")
    assert str(caught.value) == f"api.listen 127.0.0.1:{port}: address already in use; choose a free port in api.listen"


# -- schemathesis ------------------------------------------------------------------------------


# aiohttp 3.8's HTTP parser (llhttp, Debian 12's python3-aiohttp) refuses methods it does not
# know, such as the draft QUERY method, with 400 before any route runs; every method it
# parses gets 405 + Allow.
SCHEMATHESIS_TOML = """\
[phases.coverage]
unexpected-methods = ["get", "put", "post", "delete", "options", "patch", "trace"]
"""


def test_schemathesis_against_the_shipped_document(sim_api_host, live_api, tmp_path):
    """Every documented operation of the shipped openapi.yaml, all checks, on the live_api API."""
    pytest.importorskip("schemathesis")
    from mipart.api.server import openapi_text

    document = tmp_path / "openapi.yaml"
    document.write_text(openapi_text())
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    cli = Path(sys.executable).with_name("schemathesis")
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "schemathesis.cli"]
    done = subprocess.run(
        [
            *argv,
            "--config-file",
            str(config),
            "run",
            str(document),
            "--url",
            f"http://127.0.0.1:{sim_api_host.api_port}",
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-database",
            "none",
            "--request-timeout",
            "5",
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "8 selected / 8 total" in done.stdout
