"""The host's readiness for fleet balancers: its answer, the back layer's readiness path, the drain file,
the agent's readiness state, `gpus.drain_notice`, `mipart drain`/`undrain` without an agent, and status."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
import statuses
from conftest import mipart
from eventlog import Log
from gpus import logical_gpus

from mipart.api import contract
from mipart.cli.status import format_live
from mipart.daemon.readiness import HostReadiness
from mipart.drainfile import DrainFileError, read_drain, remove_drain, write_drain
from mipart.names import DRAIN_FILE, READY_PATH, RUN_DIR_VAR, STATE_DIR_VAR
from mipart.nginx.conf import quoted, render_nginx
from mipart.nginx.front import render_front
from mipart.profile.load import check_profile
from mipart.readiness import NO_INSTANCE, READY, ReadyState, state_of
from mipart.serving.instances import plan_instances

PROFILE = check_profile(
    "version: 1\nservices:\n  chat: {model: org/m, listen: 8040, partitions: [0]}\n"
    "  code: {model: org/c, listen: 8041, partitions: [8]}\n"
)
SINCE = 1767225600.0  # 2026-01-01T00:00:00Z
ANSWER = r"location = (\S+) \{\n\s+default_type application/json;\n\s+return (\d+) '(.*)';"


def nginx_unquoted(text: str) -> str:
    """What nginx reads from a single-quoted string (ngx_conf_read_token: \\\\ \\' \\" become the character)."""
    return re.sub(r"\\([\\'\"])", r"\1", text)


def test_a_ready_host_answers_200_and_a_drained_one_503_with_why_and_since():
    assert READY.answer("chat") == (200, '{"ready": true, "service": "chat"}')
    status, body = state_of(("kernel update", SINCE), ("memory mode NPS4 needs a driver reload", SINCE + 5)).answer(
        "chat"
    )
    assert status == 503
    assert json.loads(body) == {
        "ready": False,
        "service": "chat",
        "reason": "drained: kernel update",  # the operator's word wins over the change's
        "since": "2026-01-01T00:00:00Z",
    }
    change = state_of(None, ("memory mode NPS4 needs a driver reload", SINCE))
    assert change == ReadyState(False, "host-wide change: memory mode NPS4 needs a driver reload", SINCE, False)
    assert state_of(None, None) is READY


def test_every_back_listener_answers_the_readiness_path_itself_and_the_front_passes_it_on():
    drained = state_of(('it\'s $host \\ "quoted" é', SINCE), None)
    conf = render_nginx(PROFILE, (), frozenset(), Path("/run/t/nginx"), readiness=drained)
    answers = re.findall(ANSWER, conf)
    assert [(path, code) for path, code, _ in answers] == [(READY_PATH, "503")] * 2
    for (_, _, text), service in zip(answers, ("chat", "code"), strict=True):
        assert "$" not in text  # nginx would read a variable there
        assert json.loads(nginx_unquoted(text)) == {
            "ready": False,
            "service": service,
            "reason": 'drained: it\'s $host \\ "quoted" é',
            "since": "2026-01-01T00:00:00Z",
        }
    specs = plan_instances(PROFILE, logical_gpus("SPX", physical=2))
    serving = render_nginx(PROFILE, specs, frozenset({specs[0].number}), Path("/run/t/nginx"))
    assert serving != conf  # a flip is a new back config
    assert 'return 200 \'{"ready": true, "service": "chat"}\';' in serving
    # code has no instance in rotation: its listener is not ready, whatever the host's state
    no_instance = {"ready": False, "service": "code", "reason": NO_INSTANCE, "since": None}
    [(_, code, text)] = [a for a in re.findall(ANSWER, serving) if '"code"' in a[2]]
    assert (code, json.loads(nginx_unquoted(text))) == ("503", no_instance)
    front = render_front(PROFILE, (), Path("/run/t/nginx"), Path("/run/t/front"))
    assert READY_PATH not in front and "location / { proxy_pass" in front  # readiness never reloads the front


def test_quoting_keeps_every_character_nginx_would_change():
    for text in ("plain", "a'b", "a\\b", "$x ${y}", "\\'", "é\n"):
        body = json.dumps({"reason": text})
        assert json.loads(nginx_unquoted(quoted(body))) == {"reason": text}
        assert not re.search(r"(?<!\\)'", quoted(body))  # no quote ends the string early


def test_the_drain_file_round_trips_and_a_damaged_one_is_named(tmp_path):
    path = tmp_path / "lib" / DRAIN_FILE
    assert read_drain(path) is None
    written = write_drain(path, "kernel update")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert json.loads(path.read_text()) == {"reason": "kernel update", "since": written.to_json()["since"]}
    assert read_drain(path) == written and abs(written.since - time.time()) < 5
    path.write_text('{"reason": "x"}')
    with pytest.raises(DrainFileError, match=f"^{path}: not a drain file"):
        read_drain(path)
    assert remove_drain(path) and not remove_drain(path)


def test_the_agent_keeps_a_damaged_drain_file_as_drained_and_logs_each_change(tmp_path):
    log = Log()
    host = HostReadiness(tmp_path / DRAIN_FILE, log)
    assert not host.read_drain() and host.current(True, 60) is READY
    (tmp_path / DRAIN_FILE).write_text("garbage")
    assert host.read_drain()
    state = host.current(True, 60)
    assert not state.ready and state.drained and "not a drain file" in (state.reason or "")
    assert not host.read_drain()  # the same damage is no change
    remove_drain(tmp_path / DRAIN_FILE)
    assert host.read_drain() and host.current(True, 60) is READY
    assert [fields["ready"] for _, event, fields in log.events if event == "readiness.changed"] == [False, True]


def test_a_host_wide_change_stays_announced_until_every_service_serves_again(tmp_path):
    host = HostReadiness(tmp_path / DRAIN_FILE, Log())
    seen: list[ReadyState] = []

    async def flip() -> None:
        seen.append(host.current(True, 60))

    asyncio.run(host.give_notice("memory mode NPS4 needs a driver reload", 0.05, flip))
    assert seen[0].reason == "host-wide change: memory mode NPS4 needs a driver reload" and not seen[0].drained
    assert not host.current(True, 60).ready  # still running: serving or not
    host.change_ended()
    assert not host.current(False, 60).ready  # ended, but a service has no instance in rotation yet
    assert host.current(True, 60) is READY
    asyncio.run(host.give_notice("x", 0.01, flip))
    host.change_ended()
    time.sleep(0.02)
    assert host.current(False, 0.01) is READY  # bounded: health.startup_timeout after the change ended


def test_a_host_drained_longer_than_the_notice_is_not_made_to_wait_again(tmp_path):
    long_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 100))
    (tmp_path / DRAIN_FILE).write_text(json.dumps({"reason": "maintenance", "since": long_ago}))
    host = HostReadiness(tmp_path / DRAIN_FILE, Log())
    host.read_drain()
    host.current(True, 60)

    async def flip() -> None:
        host.current(True, 60)

    started = time.monotonic()
    asyncio.run(host.give_notice("memory mode NPS4 needs a driver reload", 30, flip))
    assert time.monotonic() - started < 5


def test_drain_notice_is_a_gpus_duration_of_10s_by_default():
    assert PROFILE.gpus.drain_notice == 10.0
    assert check_profile("version: 1\ngpus: {drain_notice: 6s}\n").gpus.drain_notice == 6.0


def test_drain_and_undrain_without_an_agent_keep_the_state_and_say_so(tmp_path):
    env = {STATE_DIR_VAR: str(tmp_path / "lib"), RUN_DIR_VAR: str(tmp_path / "run")}
    first = mipart("drain", "--reason", "kernel update", "--json", env=env)
    assert first.returncode == 0, first.stderr
    said = json.loads(first.stdout)
    assert said["drained"] is True and said["changed"] is True and said["reason"] == "kernel update"
    assert json.loads((tmp_path / "lib" / DRAIN_FILE).read_text())["since"] == said["since"]
    again = mipart("drain", "--reason", "other", env=env)
    assert again.returncode == 0 and again.stdout.startswith(f"already drained since {said['since']}: kernel update")
    assert "the agent does not run; it reads the drain file when it starts" in again.stdout
    waited = mipart("drain", "--wait", "--profile", str(tmp_path / "none.yaml"), env=env)
    assert waited.returncode == 1 and len(waited.stderr.strip().splitlines()) == 1  # the missing profile, one line
    back = mipart("undrain", "--json", "--profile", str(tmp_path / "none.yaml"), env=env)
    assert back.returncode == 1 and "Traceback" not in back.stderr  # it needs the profile's listeners to wait on
    profile = tmp_path / "p.yaml"
    profile.write_text("version: 1\nservices:\n  chat: {model: org/m, listen: 8040}\n")
    back = mipart("undrain", "--json", "--profile", str(profile), env=env)
    assert back.returncode == 0 and json.loads(back.stdout) == {"drained": False, "changed": True}
    assert not (tmp_path / "lib" / DRAIN_FILE).exists()


@pytest.mark.parametrize(
    ("reason", "said"),
    [("", "--reason is empty"), ("a\nb", "control character"), ("x" * 201, "use at most 200")],
)
def test_a_reason_that_is_no_line_is_refused_in_one(tmp_path, reason, said):
    env = {STATE_DIR_VAR: str(tmp_path / "lib"), RUN_DIR_VAR: str(tmp_path / "run")}
    done = mipart("drain", "--reason", reason, env=env)
    assert done.returncode == 1 and said in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lib" / DRAIN_FILE).exists()


def test_status_says_when_balancers_are_told_503_and_how_to_undo_a_drain():
    drained = contract.Readiness(
        ready=False, reason="drained: kernel update", since="2026-01-01T00:00:00Z", drained=True
    )
    lines = format_live(statuses.status(readiness=drained), (), "127.0.0.1:8049")
    assert (
        "  readiness: 503 on /mipart/ready since 2026-01-01T00:00:00Z (drained: kernel update); instances serve on; "
        "`mipart undrain` puts the host back"
    ) in lines
    assert not any("readiness" in line for line in format_live(statuses.status(), (), "127.0.0.1:8049"))
