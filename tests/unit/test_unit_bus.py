"""mipart's D-Bus side of systemd (runners.unit_bus, through runners.unit_state and the systemd
runner): what it asks systemd, how systemd's typed answers become `systemctl show`'s words, and
what it does when the bus refuses, stalls or goes away.

The bus is a real dbus-daemon on a socket of the test's own; systemd on it is a stand-in that
owns org.freedesktop.systemd1 and answers as systemd's Manager does (src/core/dbus-manager.c):
ListUnitsByNames loads each valid name, answers in the order asked under the unit's Id (an alias
as the unit it names) and leaves out a name that is not a unit name; ListUnitsByPatterns lists
the loaded units a glob matches; Properties.GetAll answers a unit's Service properties as
variants; the job methods answer a job path. Every message crosses the wire in D-Bus's types.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jeepney import MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from test_systemd_units import FAILED, Systemd, running

from mipart.errors import UserError
from mipart.runners import unit_bus, unit_state
from mipart.runners.systemd import SystemdRunner
from mipart.values import UnitState

TYPES = {"MainPID": "u", "ExecMainCode": "i", "ExecMainStatus": "i", "NRestarts": "u", "Result": "s"}
CONNECT = unit_bus.connect  # as imported: the systemctl stand-in turns it off
DBUS_DAEMON = shutil.which("dbus-daemon")  # found before a test narrows PATH to its systemctl stand-in
JOBS = {"StartUnit", "StopUnit", "RestartUnit", "ReloadUnit", "KillUnit", "ResetFailedUnit", "Reload"}
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def unit_path(unit: str) -> str:
    """The unit's object path: its name with every other byte than [A-Za-z0-9] as _XX (bus_label_escape)."""
    return "/org/freedesktop/systemd1/unit/" + "".join(
        c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in unit
    )


class FakeSystemd:
    """systemd on the bus: units by Id (their state and Service properties), aliases, every call;
    FAIL names a method answered with AccessDenied, MUTE one never answered."""

    def __init__(self, address: str, units: dict[str, dict], aliases: dict[str, str] | None = None):
        self.units, self.aliases = units, aliases or {}
        self.fail = self.mute = ""
        self.calls: list[tuple[str, str, tuple]] = []
        self._stop = threading.Event()
        self._connection = open_dbus_connection(bus=address)
        self._connection.send_and_get_reply(message_bus.RequestName(unit_bus.SYSTEMD), timeout=5)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._connection.receive(timeout=0.05)
            except TimeoutError:
                continue
            except OSError:
                return  # the bus went away
            if message.header.message_type is MessageType.method_call:
                reply = self._answer(message)
                if reply is not None:
                    self._connection.send(reply)

    def _answer(self, message):
        fields = message.header.fields
        path, method, args = fields[1], fields[3], tuple(message.body)  # HeaderFields: path, member
        self.calls.append((path, method, args))
        if method == self.mute:
            return None
        if method == self.fail:
            return new_error(message, "org.freedesktop.DBus.Error.AccessDenied", "s", ("refused",))
        if method == "ListUnitsByNames":
            rows = [self._row(self.aliases.get(n, n)) for n in args[0] if "/" not in n]
            return new_method_return(message, "a(ssssssouso)", (rows,))
        if method == "ListUnitsByPatterns":
            rows = [self._row(u) for u in sorted(self.units) if any(fnmatch.fnmatch(u, g) for g in args[1])]
            return new_method_return(message, "a(ssssssouso)", (rows,))
        if method == "GetAll":
            assert args == (unit_bus.SERVICE,)
            props = self.units[next(u for u in self.units if path == unit_path(u))]
            typed = {k: (TYPES[k], int(v) if TYPES[k] != "s" else v) for k, v in props.items() if k in TYPES}
            typed["Environment"] = ("as", ["A=1"])  # not a scalar: systemctl prints it otherwise
            typed["RemainAfterExit"] = ("b", False)
            return new_method_return(message, "a{sv}", (typed,))
        assert method in JOBS, method
        if args and args[0] not in self.units:
            return new_error(message, "org.freedesktop.systemd1.NoSuchUnit", "s", (f"Unit {args[0]} not found.",))
        return new_method_return(message, "o" if method not in ("ResetFailedUnit", "Reload") else None, ("/job/1",))

    def _row(self, unit: str) -> tuple:
        props = self.units.get(unit, {})
        load = "loaded" if unit in self.units else "not-found"
        state = (props.get("ActiveState", "inactive"), props.get("SubState", "dead"))
        return (unit, "", load, *state, "", unit_path(unit), 0, "", "/")

    def methods(self) -> list[str]:
        return [method for _, method, _ in self.calls]

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5)
            self._connection.close()


class DBusDaemon:
    """A dbus-daemon of the test's own, started and stopped by PID."""

    def __init__(self, directory: Path):
        self.socket = directory / "bus"
        self.config = directory / "bus.conf"
        self.config.write_text(BUS_CONFIG.format(socket=self.socket))
        self.address = f"unix:path={self.socket}"
        self.log = directory / "dbus-daemon.log"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        assert DBUS_DAEMON, "dbus-daemon is missing: `make test` installs it (Debian's dbus-daemon)"
        with self.log.open("a") as log:  # its warnings (the fd limit it may not raise) stay out of the test's
            self.process = subprocess.Popen(
                [DBUS_DAEMON, f"--config-file={self.config}", "--nofork", "--print-address"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.process.stdout is not None and self.process.stdout.readline().strip()  # listening

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process.stdout.close()  # type: ignore[union-attr]
            self.process = None


@pytest.fixture
def daemon(tmp_path, monkeypatch) -> Iterator[DBusDaemon]:
    """The system bus, as far as mipart can tell (DBUS_SYSTEM_BUS_ADDRESS), with no connection made yet."""
    bus = DBusDaemon(tmp_path)
    bus.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    monkeypatch.setattr(unit_bus, "_connection", None)
    yield bus
    if unit_bus._connection is not None:
        unit_bus._connection.close()
    bus.stop()


@pytest.fixture
def on_bus(daemon) -> Iterator:
    """systemd on that bus, with the units it is given."""
    made: list[FakeSystemd] = []

    def make(units: dict[str, dict], aliases: dict[str, str] | None = None) -> FakeSystemd:
        made.append(FakeSystemd(daemon.address, units, aliases))
        return made[-1]

    yield make
    for systemd in made:
        systemd.close()


@pytest.fixture
def systemd(tmp_path, monkeypatch, daemon):
    """The systemctl stand-in, which the reader falls back to (the bus here is real)."""
    stand_in = Systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(unit_bus, "connect", CONNECT)
    return stand_in


def test_instance_states_are_one_list_call_and_main_pids_are_asked_only_when_wanted(systemd, on_bus, tmp_path):
    bus = on_bus({"mipart-vllm@0.service": running(100), "mipart-vllm@12.service": FAILED})
    runner = SystemdRunner(tmp_path / "run", unit_dir=tmp_path / "units")
    assert runner.list_instances() == {0: UnitState("active", "running"), 12: UnitState("failed", "failed")}
    assert bus.calls == [("/org/freedesktop/systemd1", "ListUnitsByPatterns", ([], ["mipart-vllm@*.service"]))]
    assert runner.list_instances(pids=True) == {
        0: UnitState("active", "running", 100),
        12: UnitState("failed", "failed"),
    }
    assert bus.methods()[1:] == ["ListUnitsByPatterns", "GetAll", "GetAll"]
    assert systemd.calls() == []  # no systemctl process


def test_named_units_answer_under_the_names_given_and_globs_under_their_ids(systemd, on_bus):
    bus = on_bus(
        {"gpu-client.service": running(7), "mipart-vllm@1.service": FAILED},
        aliases={"inference.service": "gpu-client.service"},
    )
    shown = unit_state.show(["inference.service", "other", "mipart-vllm@*.service"], unit_state.STATE)
    assert bus.calls[0][1:] == ("ListUnitsByNames", (["inference.service", "other.service"],))
    assert shown == {
        "inference.service": {
            "Id": "gpu-client.service",
            "LoadState": "loaded",
            "ActiveState": "active",
            "SubState": "running",
        },
        "other": {"Id": "other.service", "LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"},
        "mipart-vllm@1.service": {
            "Id": "mipart-vllm@1.service",
            "LoadState": "loaded",
            "ActiveState": "failed",
            "SubState": "failed",
        },
    }
    assert bus.methods() == ["ListUnitsByNames", "ListUnitsByPatterns"]


def test_properties_a_list_does_not_give_come_in_systemctls_words(systemd, on_bus):
    on_bus({"mipart-vllm@3.service": {**FAILED, "ExecMainStatus": "203"}})
    wanted = (*unit_state.STATE, *unit_state.EXIT, "Environment", "RemainAfterExit")
    assert unit_state.show(["mipart-vllm@3.service"], wanted)["mipart-vllm@3.service"] == {
        "Id": "mipart-vllm@3.service",
        "LoadState": "loaded",
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainCode": "1",
        "ExecMainStatus": "203",
        "RemainAfterExit": "no",
    }


@pytest.mark.parametrize(
    "value, words", [(True, "yes"), (False, "no"), (0, "0"), (4242, "4242"), ("", ""), (["a"], None)]
)
def test_a_scalar_reads_as_systemctl_prints_it(value, words):
    assert unit_bus.text(value) == words


@pytest.mark.parametrize(
    "name, unit", [("gpu-client", "gpu-client.service"), ("a.timer", "a.timer"), ("x.y", "x.y.service")]
)
def test_a_name_without_a_unit_type_is_a_service(name, unit):
    assert unit_bus.mangled(name) == unit


def test_what_the_bus_will_not_answer_systemctl_reads(systemd, on_bus):
    """A name systemd leaves out (systemctl says why), or a call refused: the stand-in answers."""
    systemd.set({"a.service": running(3)})
    bus = on_bus({"a.service": running(3)})
    assert unit_state.show(["a.service", "bad/name"], unit_state.STATE)["a.service"]["ActiveState"] == "active"
    assert bus.methods() == ["ListUnitsByNames"] and systemd.calls() == [
        "show -p Id,ActiveState,SubState -- a.service bad/name"
    ]
    bus.fail = "ListUnitsByPatterns"
    assert unit_state.show(["a.*"], unit_state.STATE)["a.service"]["ActiveState"] == "active"
    assert systemd.calls()[-1] == "show -p Id,ActiveState,SubState -- a.*"


def test_neither_bus_nor_systemctl_is_one_line(systemd, on_bus, tmp_path, monkeypatch):
    on_bus({}).fail = "ListUnitsByNames"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(unit_state.SystemdUnreadable) as caught:
        unit_state.show(["a.service"], unit_state.STATE)
    assert str(caught.value).startswith("cannot run systemctl:") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "address, why",
    [
        ("unix:path=/nonexistent/system_bus_socket", "No such file or directory"),
        ("tcp:host=localhost,port=1", "not supported"),  # a transport jeepney does not speak
        ("garbage", ""),
    ],
)
def test_no_system_bus_is_no_connection_and_the_runner_says_where_it_looked(monkeypatch, tmp_path, address, why):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    monkeypatch.setattr(unit_bus, "_connection", None)
    assert unit_bus.connect() is None
    with pytest.raises(UserError) as caught:
        SystemdRunner(tmp_path / "run", unit_dir=tmp_path / "units").stop(0)
    line = str(caught.value)
    assert line.startswith(f"cannot reach systemd over D-Bus at {address} (") and why in line and "\n" not in line


def test_the_runners_changes_reach_systemd_in_its_types_and_a_refusal_is_one_line(on_bus, tmp_path):
    unit = "mipart-nginx.service"
    bus = on_bus({unit: running(5)})
    manager = unit_bus.Manager(unit_bus.connect())  # type: ignore[arg-type]
    manager.start(unit)
    manager.reload_unit(unit)
    manager.reset_failed(unit)
    manager.kill(unit, "main", 9)
    manager.reload()
    assert bus.calls == [
        ("/org/freedesktop/systemd1", "StartUnit", (unit, "replace")),
        ("/org/freedesktop/systemd1", "ReloadUnit", (unit, "replace")),
        ("/org/freedesktop/systemd1", "ResetFailedUnit", (unit,)),
        ("/org/freedesktop/systemd1", "KillUnit", (unit, "main", 9)),
        ("/org/freedesktop/systemd1", "Reload", ()),
    ]
    with pytest.raises(unit_bus.BusError) as caught:
        manager.stop("gone.service")
    assert str(caught.value) == "StopUnit: org.freedesktop.systemd1.NoSuchUnit: Unit gone.service not found."
    manager.restart(unit)  # a refusal leaves the connection usable
    assert bus.methods()[-1] == "RestartUnit"


def test_a_reply_that_never_comes_is_a_bus_error_and_a_new_connection(systemd, on_bus, monkeypatch):
    """The stalled connection is dropped; the next read makes a new one, and its answer is its own."""
    monkeypatch.setattr(unit_bus, "READ_TIMEOUT", 0.3)
    systemd.set({"a.service": running(3)})
    bus = on_bus({"a.service": running(3), "b.service": FAILED})
    first = unit_bus.connect()
    bus.mute = "ListUnitsByNames"
    assert unit_state.show(["a.service"], unit_state.STATE)["a.service"]["ActiveState"] == "active"  # systemctl
    assert first is not None and first.closed and systemd.calls()
    bus.mute = ""
    assert unit_state.show(["b.service"], unit_state.STATE)["b.service"]["ActiveState"] == "failed"
    assert unit_bus.connect() is not first


def test_a_bus_that_goes_away_and_comes_back_is_reconnected(systemd, on_bus, daemon):
    units = {"a.service": running(3)}
    systemd.set(units)
    bus = on_bus(units)
    assert unit_state.show(["a.service"], unit_state.STATE)["a.service"]["ActiveState"] == "active"
    bus.close()
    daemon.stop()
    assert unit_state.show(["a.service"], unit_state.STATE)["a.service"]["ActiveState"] == "active"
    assert len(systemd.calls()) == 1  # read by systemctl while the bus was gone
    daemon.start()
    again = on_bus({"a.service": FAILED})
    assert unit_state.show(["a.service"], unit_state.STATE)["a.service"]["ActiveState"] == "failed"
    assert again.methods() == ["ListUnitsByNames"] and len(systemd.calls()) == 1


def test_threads_sharing_the_connection_each_get_their_own_answer(systemd, on_bus):
    units = {f"u{n}.service": running(n + 1) for n in range(8)}
    on_bus(units)
    wrong: list[object] = []

    def read(n: int) -> None:
        for _ in range(25):
            shown = unit_state.show([f"u{n}.service"], (*unit_state.STATE, unit_state.MAIN_PID))
            if shown[f"u{n}.service"].get("MainPID") != str(n + 1):
                wrong.append(shown)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert wrong == [] and systemd.calls() == []
