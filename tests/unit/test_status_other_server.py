"""`mipart status` where something other than mipart's status API answers: one line saying what answered
and what to check, exit 1, never a traceback; the agent's own 5xx still falls back to the units view."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest
import statuses
from answering import Answering
from conftest import mipart

from mipart.api import client
from mipart.api.contract import Status, to_json_text


@pytest.fixture
def server():
    with Answering() as answering:
        yield answering


def refused(*args: str) -> str:
    """The one line `mipart status ARGS` printed, having exited 1 with nothing on stdout."""
    done = mipart("status", *args)
    assert (done.returncode, done.stdout) == (1, ""), done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    return line


HTML = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body>...</body></html>\n"


@pytest.mark.parametrize(
    "body, code, content_type, answered",
    [
        (
            HTML,
            200,
            "text/html",
            '/v1/status answered 200 (text/html): "<!DOCTYPE html> <html><head><title>Welcome to nginx!</tit..."',
        ),
        ("Not Found", 404, "text/plain", '/v1/status answered 404 (text/plain): "Not Found"'),
        (
            '{"detail": "Not Found"}',
            404,
            "application/json",
            '/v1/status answered 404: "{\\"detail\\": \\"Not Found\\"}"',
        ),
        ('{"status": "ok"}', 200, "application/json", "/v1/status: field api_version missing"),
        ('[{"id": 1}]', 200, "application/json", "/v1/status: the answer is an array, not an object"),
        ("", 200, "application/json", "/v1/status answered 200 (application/json): nothing"),
    ],
    ids=["html", "404-text", "404-json", "other-json", "json-array", "empty"],
)
def test_another_server_is_one_line_naming_what_it_answered(server, body, code, content_type, answered):
    server.answer("/v1/status", body, code, content_type)
    assert refused("--api", server.address) == (
        f"mipart: {server.address} does not answer as mipart's status API v2: {answered}; check --api"
    )
    assert refused("--api", server.address, "--json").endswith(f"{answered}; check --api")


def test_another_api_version_is_named(server):
    older = {**json.loads(to_json_text(statuses.status())), "api_version": 1}
    server.answer("/v1/status", json.dumps(older))
    assert refused("--api", f"http://{server.address}/") == (
        f"mipart: {server.address} does not answer as mipart's status API v2: "
        "/v1/status: api_version 1, but this mipart reads api_version 2; check --api"
    )


def test_the_instances_are_read_as_strictly_as_the_status(server):
    server.answer("/v1/status", to_json_text(statuses.status()))
    instances = json.loads(to_json_text(statuses.instances(2)))
    del instances["instances"][1]["ready"]
    server.answer("/v1/instances", json.dumps(instances))
    assert refused("--api", server.address).endswith(": /v1/instances: field instances[1].ready missing; check --api")
    server.answer("/v1/instances", to_json_text(statuses.instances(4)))  # now it is mipart's answer
    done = mipart("status", "--api", server.address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"mipart-agent 0.1.0 on {server.address}: profile /etc/mipart/profile.yaml")


def test_without_api_the_profiles_api_listen_is_what_to_check(server, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f'version: 1\nservices:\n  chat: {{model: org/m, listen: 8040}}\napi: {{listen: "{server.address}"}}\n'
    )
    server.answer("/v1/status", HTML, content_type="text/html")
    assert refused("--profile", profile).endswith(f"; check api.listen in {profile}")


def test_the_agents_own_error_is_the_agent_not_answering(server, tmp_path):
    """A 5xx in mipart's error shape is the agent failing to say: the units view, exit 3, as before."""
    server.answer("/v1/status", '{"error": {"code": 500, "message": "internal error: KeyError"}}', 500)
    missing = tmp_path / "missing.yaml"
    done = mipart("status", "--profile", missing, "--api", server.address)
    assert done.returncode == 3 and done.stderr == ""
    assert done.stdout.startswith(
        f"mipart-agent is not answering on {server.address} (/v1/status answered 500: internal error: KeyError), "
        f"and the profile {missing} cannot be read either"
    )


def test_a_server_that_does_not_speak_http_is_named(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def banner() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

        thread = threading.Thread(target=banner, daemon=True)
        thread.start()
        line = refused("--api", f"127.0.0.1:{port}")
        thread.join(timeout=10)
    assert line == (
        f"mipart: 127.0.0.1:{port} does not answer as mipart's status API v2: "
        '/v1/status: the answer is not HTTP: "SSH-2.0-OpenSSH_9.2p1 Debian-2"; check --api'
    )


def test_an_endless_answer_is_cut_short(server, monkeypatch):
    monkeypatch.setattr(client, "MAX_BODY", 1000)
    server.answer("/v1/status", "[" + "0," * 1000 + "0]")
    with pytest.raises(client.NotStatusApi) as caught:
        client.Api(server.address).read(Status)
    assert str(caught.value) == (
        f"{server.address} does not answer as mipart's status API v2: /v1/status answered 200 with more than 1000 bytes"
    )


def test_a_listener_another_user_holds_is_not_asked(tmp_path):
    """Issue 20: any user may listen where the agent would (while it retries its bind) and answer "all
    ready". The kernel says whose socket it is; root's (the agent's) or our own are believed."""
    from mipart.sim.ports import free_block

    port = free_block(1, low=21000)
    hold = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(60)"
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    squatter = subprocess.Popen([*drop, sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "up"
        assert refused("--api", f"127.0.0.1:{port}") == (
            f"mipart: 127.0.0.1:{port} does not answer as mipart's status API v2: its listener belongs to uid 65534, "
            "not root (the agent's user); check --api"
        )
    finally:
        squatter.kill()
        squatter.wait()


def test_what_the_servers_logged_reaches_the_terminal_without_its_control_characters(server):
    """A server's last log line is shown as LAST ERROR: an escape sequence in it must not drive the terminal."""
    from dataclasses import replace

    from mipart.api.contract import Instances

    server.answer("/v1/status", to_json_text(statuses.status()))
    evil = replace(statuses.instance(0, "unhealthy"), last_error="boom\x1b[2J\x1b]0;owned\x07 \u202eevil")
    server.answer("/v1/instances", to_json_text(Instances((evil, *statuses.instances(4).instances[1:]))))
    done = mipart("status", "--api", server.address)
    assert "boom?[2J?]0;owned? ?evil" in done.stdout
    assert not any(c in done.stdout for c in "\x1b\x07\u202e")
