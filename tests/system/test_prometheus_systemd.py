"""A real Prometheus (Debian's package), run inside the booted machine, never on the developer's
host: it scrapes the agent and finds every instance through the agent's /v1/targets, loads the
shipped alert rules, and the test queries it.

Cost: the prometheus package (about 30 MB with its dependencies) is downloaded and installed
into this test's own copy of the image before boot; the cached rootfs is left as it is.
"""

from __future__ import annotations

import http.client
import json
import time

import pytest

from .nspawn import Machine, install_deb
from .test_serving_systemd import SIM, start_serving

pytestmark = pytest.mark.system

RULES = "/usr/share/mipart/monitoring/prometheus/mipart-alerts.yml"
CONFIG = """\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: mipart-agent
    static_configs: [{{targets: ["127.0.0.1:{api}"]}}]
  - job_name: mipart-vllm
    http_sd_configs: [{{url: "http://127.0.0.1:{api}/v1/targets", refresh_interval: 1s}}]
"""


def with_prometheus(m: Machine) -> None:
    """Install it offline (no systemd runs, so nothing starts) and mask the distro's own server."""
    install = "apt-get install -y -q --no-install-recommends prometheus"
    done = m.offline(f"{install} || (apt-get update -q && {install})", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    m.offline("systemctl mask -q prometheus.service")


def query(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())["data"]
    finally:
        conn.close()


def test_prometheus_in_the_machine_finds_every_instance_and_scrapes_the_agent(tmp_path, system_ready, deb):
    from mipart.sim.ports import free_block

    with Machine(tmp_path / "machine") as m:
        m.pre_boot(with_prometheus)
        install_deb(m, deb)
        host = start_serving(m)
        m.run(f"mipart sim gpu-signals {SIM} 2 --correctable 3 --temperature 61 --power 350")
        assert m.run(f"promtool check rules {RULES}").returncode == 0  # the shipped rules, as installed

        web = free_block(1)
        m.run(
            f"mkdir -p /var/tmp/prom && cat >/var/tmp/prom/prometheus.yml <<'EOF'\n"
            f"{CONFIG.format(rules=RULES, api=host.ports['api_port'])}EOF"
        )
        m.run(
            "systemd-run -q --unit=test-prometheus prometheus --config.file=/var/tmp/prom/prometheus.yml "
            f"--storage.tsdb.path=/var/tmp/prom/tsdb --web.listen-address=127.0.0.1:{web}"
        )
        want = len(host.numbers)
        deadline = time.monotonic() + 60
        targets, up, temperature = [], [], []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                targets = query(web, "/api/v1/targets")["activeTargets"]
                up = query(web, "/api/v1/query?query=up%3D%3D1")["result"]
                temperature = query(web, "/api/v1/query?query=mipart_gpu_temperature_celsius")["result"]
            except (OSError, ValueError, KeyError):
                continue
            if len(up) == want + 1 and temperature:
                break
        journal = m.run("journalctl -q --no-pager -o cat -u test-prometheus", check=False).stdout[-3000:]
        vllm = [t for t in targets if t["labels"]["job"] == "mipart-vllm"]
        assert sorted(int(t["labels"]["instance_unit"].split("@")[1].split(".")[0]) for t in vllm) == sorted(
            host.numbers
        ), journal
        assert all(t["health"] == "up" for t in targets), [
            (t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets
        ]
        assert {r["metric"]["job"] for r in up} == {"mipart-agent", "mipart-vllm"} and len(up) == want + 1
        nine = next(t for t in vllm if t["labels"]["instance_unit"] == "mipart-vllm@9.service")
        assert (
            nine["scrapeUrl"]
            == f"http://127.0.0.1:{host.ports['api_port']}/v1/instances/9/metrics"  # through the agent
            and nine["labels"]["service"] == "chat"
        )
        waiting = query(web, "/api/v1/query?query=vllm%3Anum_requests_waiting")["result"]
        assert len(waiting) == want  # every instance's own metrics, with the agent's labels
        assert {r["metric"]["gpu"]: r["value"][1] for r in temperature if r["metric"]["sensor"] == "junction"} == {
            "2": "61"
        }
        rules = [r for g in query(web, "/api/v1/rules")["groups"] for r in g["rules"]]
        assert len(rules) == 11 and all(r["health"] == "ok" for r in rules), rules
        m.run("systemctl stop test-prometheus", check=False)
