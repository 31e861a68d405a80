"""What mipart reads of systemd, through its one reader (runners.unit_state), and what the
systemd runner and the partition's client services do with it.

systemctl here is a stand-in on PATH that keeps its units in a JSON file and answers `show`
as systemctl does (systemctl-show.c): the named units in the order given, a name without a
suffix as its .service, an alias as the unit it names, then the loaded units a glob matches.
D-Bus calls (the runner's changes) go to a recording manager.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_devices_dropin import FakeManager

from mipart.errors import UserError
from mipart.nginx.files import NginxFiles
from mipart.partition.clients import SystemdClients
from mipart.runners import unit_state
from mipart.runners.systemd import SystemdRunner
from mipart.values import UnitState

FAKE_SYSTEMCTL = """\
import fnmatch, json, sys
STATE, CALLS = {state!r}, {calls!r}
with open(STATE) as f:
    table = json.load(f)
units, aliases = table["units"], table.get("aliases", {{}})
args = sys.argv[1:]
with open(CALLS, "a") as log:
    log.write(" ".join(args) + "\\n")
def name(unit):
    unit = unit if "." in unit else unit + ".service"
    return aliases.get(unit, unit)
if args[0] == "show":
    wanted = args[args.index("-p") + 1].split(",")
    names = args[args.index("--") + 1 :]
    plain = [n for n in names if not any(c in n for c in "*?[")]
    globs = [n for n in names if n not in plain]
    shown = [name(n) for n in plain] + [u for g in globs for u in sorted(units) if fnmatch.fnmatch(u, g)]
    blocks = []
    for unit in shown:
        props = {{"Id": unit, "ActiveState": "inactive", "SubState": "dead", "MainPID": "0", "Result": "success", **units.get(unit, {{}})}}
        blocks.append("\\n".join(f"{{p}}={{props.get(p, '')}}" for p in wanted))
    print("\\n\\n".join(blocks))
elif args[0] in ("start", "stop"):
    for unit in map(name, args[1:]):
        if unit in table.get("refuse", []):
            print(f"Job for {{unit}} failed.", file=sys.stderr)
            sys.exit(1)
        up = args[0] == "start"
        units[unit] = {{"ActiveState": "active" if up else "inactive", "SubState": "running" if up else "dead"}}
        with open(STATE, "w") as f:
            json.dump(table, f)
else:
    print(f"unknown command {{args[0]}}", file=sys.stderr)
    sys.exit(1)
"""


class Systemd:
    """The stand-in's units, and every systemctl call made."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.state, self.calls_file = tmp_path / "units.json", tmp_path / "calls"
        bindir = tmp_path / "bin"
        bindir.mkdir()
        script = bindir / "systemctl"
        script.write_text(
            f"#!{sys.executable}\n" + FAKE_SYSTEMCTL.format(state=str(self.state), calls=str(self.calls_file))
        )
        script.chmod(0o755)
        monkeypatch.setenv("PATH", str(bindir))
        self.set({})

    def set(self, units: dict, **extra) -> None:
        self.state.write_text(json.dumps({"units": units, **extra}))

    def units(self) -> dict:
        return json.loads(self.state.read_text())["units"]

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    return Systemd(tmp_path, monkeypatch)


def running(pid: int) -> dict:
    return {"ActiveState": "active", "SubState": "running", "MainPID": str(pid)}


FAILED = {
    "ActiveState": "failed",
    "SubState": "failed",
    "Result": "exit-code",
    "ExecMainCode": "1",
    "ExecMainStatus": "1",
}


# -- the reader ---------------------------------------------------------------------------


def test_one_call_reads_named_units_under_their_names_and_globs_under_their_own(systemd):
    systemd.set(
        {"mipart-vllm@0.service": running(100), "mipart-vllm@1.service": FAILED, "gpu-client.service": running(7)},
        aliases={"inference.service": "gpu-client.service"},
    )
    shown = unit_state.show(["inference.service", "other", "mipart-vllm@*.service"], unit_state.STATE)
    assert sorted(shown) == ["inference.service", "mipart-vllm@0.service", "mipart-vllm@1.service", "other"]
    assert shown["inference.service"]["Id"] == "gpu-client.service"
    assert unit_state.state_of(shown["inference.service"]) == UnitState("active", "running", 7)
    assert unit_state.state_of(shown["other"]) == UnitState("inactive", "dead")
    assert len(systemd.calls()) == 1
    assert unit_state.show([], unit_state.STATE) == {} and len(systemd.calls()) == 1


def test_a_glob_that_matches_nothing_is_no_unit(systemd):
    assert unit_state.show(["mipart-vllm@*.service"], unit_state.STATE) == {}


def test_systemctl_missing_or_failing_is_one_line(systemd, tmp_path, monkeypatch):
    systemd.state.write_text("not json")  # the stand-in dies with a traceback: its last line is the reason
    with pytest.raises(unit_state.SystemdUnreadable) as caught:
        unit_state.show(["a.service"], unit_state.STATE)
    assert str(caught.value).startswith("systemctl show failed: json.decoder.JSONDecodeError")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(unit_state.SystemdUnreadable) as caught:
        unit_state.show(["a.service"], unit_state.STATE)
    assert str(caught.value).startswith("cannot run systemctl:") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "word, active, up, stopped, failed",
    [
        ("active", True, True, False, False),
        ("reloading", True, True, False, False),
        ("activating", True, False, False, False),
        ("deactivating", False, False, False, False),
        ("inactive", False, False, True, False),
        ("failed", False, False, True, True),
    ],
)
def test_the_state_words_answer_each_question_once(word, active, up, stopped, failed):
    state = UnitState(word)
    assert (state.active, state.up, state.stopped, state.failed) == (active, up, stopped, failed)


def test_the_main_pid_is_known_only_while_the_unit_is_up():
    assert unit_state.state_of(running(42)).main_pid == 42
    assert unit_state.state_of({"ActiveState": "activating", "MainPID": "42"}).main_pid == 0  # still its launcher
    assert unit_state.state_of({"ActiveState": "active", "MainPID": "x"}).main_pid == 0


# -- the systemd runner: read with the reader, changed over D-Bus -------------------------


@pytest.fixture
def runner(tmp_path, monkeypatch):
    made = SystemdRunner(tmp_path / "run", unit_dir=tmp_path / "units")
    manager = FakeManager()
    monkeypatch.setattr(made, "_manager", lambda: manager)
    made.manager = manager
    return made


def test_the_runner_lists_instances_with_one_read(systemd, runner):
    systemd.set({"mipart-vllm@0.service": running(100), "mipart-vllm@12.service": FAILED, "other.service": running(1)})
    assert runner.list_instances() == {0: UnitState("active", "running", 100), 12: UnitState("failed", "failed")}
    assert systemd.calls() == ["show -p Id,ActiveState,SubState,MainPID -- mipart-vllm@*.service"]
    assert runner.manager.calls == []


def test_the_runner_resets_a_failed_unit_before_it_starts_it(systemd, runner):
    systemd.set({"mipart-vllm@1.service": FAILED})
    runner.start(1)
    runner.start(2)
    assert runner.manager.calls == [
        ("ResetFailedUnit", "mipart-vllm@1.service"),
        ("StartUnit", "mipart-vllm@1.service", "replace"),
        ("StartUnit", "mipart-vllm@2.service", "replace"),
    ]


@pytest.mark.parametrize("layer, unit", [("back", "mipart-nginx.service"), ("front", "mipart-nginx-front.service")])
@pytest.mark.parametrize(
    "nginx, calls",
    [
        (running(5), [("ReloadUnit", "{unit}", "replace")]),
        ({"ActiveState": "reloading", "MainPID": "5"}, [("ReloadUnit", "{unit}", "replace")]),
        ({}, [("StartUnit", "{unit}", "replace")]),
        (FAILED, [("ResetFailedUnit", "{unit}"), ("StartUnit", "{unit}", "replace")]),
    ],
)
def test_nginx_is_reloaded_when_up_and_started_otherwise(systemd, runner, tmp_path, nginx, calls, layer, unit):
    """Each layer is its own unit: the runner reloads or starts the one the files name."""
    systemd.set({unit: nginx} if nginx else {})
    files = NginxFiles(tmp_path / layer, layer)
    runner.ensure_nginx(files)
    assert runner.manager.calls == [tuple(part.format(unit=unit) for part in call) for call in calls]
    assert runner.nginx_running(files) is UnitState(nginx.get("ActiveState", "inactive")).active


def test_last_exit_is_systemds_word_for_it(systemd, runner):
    systemd.set({"mipart-vllm@3.service": FAILED})
    assert runner.last_exit(3) == "exited with status 1 (exit-code)"  # no journalctl on PATH: no log line
    assert runner.last_exit(4) == ""


def test_the_systemd_runner_refuses_to_stop_units_that_outlive_the_agent(runner, tmp_path):
    with pytest.raises(UserError) as caught:
        runner.shutdown((NginxFiles(tmp_path / "nginx"), NginxFiles(tmp_path / "nginx-front", "front")))
    assert "instances are units of their own" in str(caught.value)
    assert runner.manager.calls == []


# -- the partition's client services --------------------------------------------------------


def test_only_running_client_services_are_stopped_and_started_again(systemd):
    systemd.set({"gpu-client.service": running(7), "idle.service": {"ActiveState": "inactive"}})
    clients = SystemdClients(("gpu-client", "idle.service"))
    assert clients.stop_active() == ["gpu-client"]
    assert systemd.units()["gpu-client.service"]["ActiveState"] == "inactive"
    assert clients.start(["gpu-client"]) == []
    assert systemd.units()["gpu-client.service"]["ActiveState"] == "active"


def test_a_client_service_that_does_not_start_again_is_named(systemd):
    systemd.set({}, refuse=["b.service"])
    assert SystemdClients(("a.service", "b.service")).start(["a.service", "b.service"]) == ["b.service"]
    assert systemd.calls()[-1] == "show -p Id,ActiveState,SubState,MainPID -- a.service b.service"


def test_client_services_without_systemctl_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as caught:
        SystemdClients(("a.service",)).stop_active()
    assert str(caught.value).startswith("gpus.client_services is set but systemctl is missing")
