"""services.NAME.routing: the profile's policy words, the header's checks (nothing reaches
nginx.conf but letters, digits and '-'), what nginx_conf renders, and what `mipart plan` says.

The real nginx's behaviour under each policy is tests/nginx/test_routing.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import create_sim
from gpus import logical_gpus

from mipart.api import views
from mipart.api.contract import Status, to_json_text
from mipart.api.host import HostSnapshot
from mipart.cli.status import format_live
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus
from mipart.health.machine import InstanceHealth
from mipart.nginx.conf import render_nginx
from mipart.profile.load import check_profile
from mipart.profile.problems import ProfileError
from mipart.profile.schema import Routing
from mipart.serving.instances import plan_instances

PATH = "/etc/mipart/profile.yaml"


def service(routing: str | None, name: str = "chat") -> str:
    line = "" if routing is None else f"    routing: {routing}\n"
    return f'version: 1\ngpus: {{compute: DPX, memory: NPS2}}\nservices:\n  {name}:\n    model: org/m\n    listen: 8000\n    partitions: "0-1,8-9"\n{line}'


def routing_of(text: str) -> Routing:
    return check_profile(text, PATH).services[0].routing


def problem_of(text: str) -> str:
    with pytest.raises(ProfileError) as caught:
        check_profile(text, PATH)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and re.fullmatch(re.escape(PATH) + r":8:\d+: \S.*", lines[0]), lines
    return lines[0]


@pytest.mark.parametrize(
    "written, policy, header",
    [
        (None, "least_conn", None),
        ("least_conn", "least_conn", None),
        ("random", "random", None),
        ('"random"', "random", None),
        ("{affinity: {header: X-Session-Id}}", "affinity", "X-Session-Id"),
        ("{affinity: {header: x-conv-2}}", "affinity", "x-conv-2"),
        (
            "{affinity: {header: 123}}",
            "affinity",
            "123",
        ),  # a token of digits is a header name; YAML prints it back as written
        ("\n      affinity:\n        header: Session", "affinity", "Session"),
    ],
)
def test_each_policy_is_read(written, policy, header):
    assert routing_of(service(written)) == Routing(policy, header)


@pytest.mark.parametrize(
    "written, expected",
    [
        (
            "round_robin",
            "services.chat.routing is 'round_robin'; use least_conn, random, or {affinity: {header: X-Session-Id}}",
        ),
        ("Random", "services.chat.routing is 'Random'; did you mean 'random'?"),
        ("affinity", "affinity needs the header to hash on: write routing: {affinity: {header: X-Session-Id}}"),
        ("yes", "services.chat.routing is 'yes'; use least_conn"),
        ("~", "services.chat.routing is empty"),
        (
            "[least_conn]",
            "services.chat.routing must be least_conn, random, or {affinity: {header: X-Session-Id}}, not a list",
        ),
        ("{affinity: X-Session-Id}", "services.chat.routing.affinity must be {header: NAME}"),
        ("{affinity: {}}", "services.chat.routing.affinity is missing required key 'header'"),
        ("{affinity: {header: X-A, hash: md5}}", "unknown key services.chat.routing.affinity.hash"),
        ("{affinity: {header: on}}", 'would be read by YAML as a boolean (true); write it in quotes: "on"'),
        (
            "{affinity: {header: X_Session}}",
            "header 'X_Session' has '_': nginx drops a request header whose name holds anything but letters, digits and '-'",
        ),
        ("{affinity: {header: 'X.Id'}}", "header 'X.Id' has '.': nginx drops"),
        ("{affinity: {header: 'a$b'}}", "header 'a$b' has '$': nginx drops"),
        ("{affinity: {header: 'x;}'}}", "header 'x;}' is not an HTTP header name (RFC 9110 token)"),
        ("{affinity: {header: 'X-A; } server { listen 1'}}", "is not an HTTP header name"),
        ("{affinity: {header: 'X-Sé'}}", "is not an HTTP header name"),
        ('{affinity: {header: "X\\nY"}}', "contains a control character"),
        ("{affinity: {header: '-x'}}", "header '-x' starts with '-'"),
        ("{affinity: {header: " + "a" * 65 + "}}", "is 65 characters; keep it to 64"),
    ],
)
def test_a_bad_routing_gets_one_located_line_with_what_is_right(written, expected):
    assert expected in problem_of(service(written))


def test_service_names_nginx_would_name_alike_are_refused():
    text = service(None, "a-b") + '  a_b:\n    model: org/m\n    listen: 8001\n    partitions: "16-17"\n'
    with pytest.raises(
        ProfileError, match=r":8:3: service name 'a_b' and service 'a-b' differ only in '-' against '_'"
    ):
        check_profile(text, PATH)


def render(text: str, ready=frozenset(range(64))) -> str:
    profile = check_profile(text, PATH)
    return render_nginx(
        profile, plan_instances(profile, logical_gpus("DPX")), frozenset(ready), Path("/run/test/nginx")
    )


def upstream(conf: str) -> str:
    return conf[conf.index("    upstream mipart_chat {") : conf.index("    server {")]


def test_least_conn_and_random_render_their_nginx_directive():
    assert "        least_conn;\n" in upstream(render(service(None)))
    conf = render(service("random"))
    assert "        random two least_conn;\n" in upstream(conf) and "least_conn;\n" not in upstream(conf).replace(
        "two least_conn;", ""
    )
    assert "# service chat: 4/4 instances ready; routing random two least_conn\n" in conf


def test_affinity_hashes_the_header_as_nginx_names_it():
    conf = render(service("{affinity: {header: X-Session-Id}}"), ready={0, 8})
    block = upstream(conf)
    # the balancer comes before keepalive (nginx: "activate them before the keepalive directive")
    assert block.index("        hash $http_x_session_id consistent;\n") < block.index("keepalive")
    assert (
        "server unix:/run/mipart-vllm/sockets/1/http.sock down;" in block
    )  # not-ready instances stay listed: the hash ring does not move
    assert "# service chat: 2/4 instances ready; routing affinity on X-Session-Id (hash consistent)\n" in conf
    assert "least_conn" not in block


def test_a_service_with_a_dash_and_a_header_in_capitals():
    conf = render(service("{affinity: {header: MY-Header-2}}", "code-x"))
    assert "upstream mipart_code_x {" in conf and "hash $http_my_header_2 consistent;" in conf


def test_plan_says_each_services_policy(tmp_path):
    host, path = create_sim(tmp_path, model="mi300x", gpus=8, compute="DPX", memory="NPS2"), tmp_path / "p.yaml"
    path.write_text(
        service("{affinity: {header: X-Session-Id}}")
        + '  other:\n    model: org/n\n    listen: 8001\n    partitions: "16-17"\n    routing: random\n'
    )
    done = host.run("plan", "--profile", path)
    assert done.returncode == 0, done.stderr
    assert (
        "chat: listen 0.0.0.0:8000, model org/m, affinity on X-Session-Id (hash consistent) over 4 instances"
        in done.stdout
    )
    assert "other: listen 0.0.0.0:8001, model org/n, random two least_conn over 2 instances" in done.stdout
    as_json = host.run("plan", "--profile", path, "--json")
    assert '"routing": "random two least_conn"' in as_json.stdout


def test_status_api_and_mipart_status_name_each_services_policy():
    text = (
        service("{affinity: {header: X-Session-Id}}")
        + '  batch:\n    model: org/b\n    listen: 8001\n    partitions: "16-17,24-25"\n'
        "    routing: random\n"
    )
    profile = check_profile(text, PATH)
    specs = {s.number: s for s in plan_instances(profile, logical_gpus())}
    health = {n: InstanceHealth(n, state="ready" if n == 0 else "starting") for n in specs}
    snap = AgentSnapshot.of(PATH, True, AgentStatus(), specs, health, services=profile.services)
    answer = json.loads(
        to_json_text(views.status(snap, HostSnapshot(gpus=(), logical_gpus=16, units={}, nginx_running=True)))
    )
    assert answer["services"] == [
        {
            "name": "chat",
            "model": "org/m",
            "listen": "0.0.0.0:8000",
            "routing": {"policy": "affinity", "header": "X-Session-Id"},
            "instances": 4,
            "ready": 1,
        },
        {
            "name": "batch",
            "model": "org/b",
            "listen": "0.0.0.0:8001",
            "routing": {"policy": "random", "header": None},
            "instances": 4,
            "ready": 0,
        },
    ]
    shown = format_live(Status.from_json(answer), (), "127.0.0.1:8049")
    assert (
        "  service chat (org/m) on 0.0.0.0:8000: 1/4 ready, routing affinity on X-Session-Id (hash consistent)" in shown
    )
    assert "  service batch (org/b) on 0.0.0.0:8001: 0/4 ready, routing random two least_conn" in shown
