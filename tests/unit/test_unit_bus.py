"""The one reader of unit states over D-Bus (runners.unit_bus, through runners.unit_state): what it
asks systemd, and how systemd's typed answers become `systemctl show`'s words.

The bus here is a stand-in connection that answers call_sync as systemd's Manager does
(src/core/dbus-manager.c): ListUnitsByNames loads each valid name, answers in the order asked
under the unit's Id (an alias as the unit it names) and leaves out a name that is not a unit
name; ListUnitsByPatterns lists the loaded units a glob matches; Properties.GetAll answers a
unit's Service properties in their D-Bus types. The values go through real GLib variants.
"""

from __future__ import annotations

import fnmatch

import pytest
from gi.repository import GLib
from test_systemd_units import FAILED, Systemd, running

from mipart.runners import unit_bus, unit_state
from mipart.runners.systemd import SystemdRunner
from mipart.values import UnitState

TYPES = {"MainPID": "u", "ExecMainCode": "i", "ExecMainStatus": "i", "NRestarts": "u", "Result": "s"}


def unit_path(unit: str) -> str:
    """The unit's object path: its name with every other byte than [A-Za-z0-9] as _XX (bus_label_escape)."""
    return "/org/freedesktop/systemd1/unit/" + "".join(
        c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in unit
    )


class FakeBus:
    """systemd on the bus: units by Id (their state and Service properties), aliases, every call."""

    def __init__(self, units: dict[str, dict], aliases: dict[str, str] | None = None, fail: str = ""):
        self.units, self.aliases, self.fail = units, aliases or {}, fail
        self.calls: list[tuple[str, str, object]] = []

    def is_closed(self) -> bool:
        return False

    def call_sync(self, bus, path, interface, method, params, reply_type, flags, timeout, cancellable):
        assert bus == "org.freedesktop.systemd1" and timeout == unit_bus.TIMEOUT_MS
        args = params.unpack()
        self.calls.append((path, method, args))
        if method == self.fail:
            raise GLib.Error("org.freedesktop.DBus.Error.AccessDenied: refused")
        if method == "ListUnitsByNames":
            rows = [self._row(self.aliases.get(n, n)) for n in args[0] if "/" not in n]
        elif method == "ListUnitsByPatterns":
            rows = [self._row(u) for u in sorted(self.units) if any(fnmatch.fnmatch(u, g) for g in args[1])]
        else:
            assert (interface, method, args) == ("org.freedesktop.DBus.Properties", "GetAll", (unit_bus.SERVICE,))
            props = self.units[next(u for u in self.units if path == unit_path(u))]
            typed = {
                k: GLib.Variant(TYPES[k], int(v) if TYPES[k] != "s" else v) for k, v in props.items() if k in TYPES
            }
            typed["Environment"] = GLib.Variant("as", ["A=1"])  # not a scalar: systemctl prints it otherwise
            return GLib.Variant(reply_type.dup_string(), (typed,))
        return GLib.Variant(reply_type.dup_string(), (rows,))

    def _row(self, unit: str) -> tuple:
        props = self.units.get(unit, {})
        load = "loaded" if unit in self.units else "not-found"
        state = (props.get("ActiveState", "inactive"), props.get("SubState", "dead"))
        return (unit, "", load, *state, "", unit_path(unit), 0, "", "/")

    def methods(self) -> list[str]:
        return [method for _, method, _ in self.calls]


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """The systemctl stand-in, which the reader falls back to."""
    return Systemd(tmp_path, monkeypatch)


def on_bus(monkeypatch, bus: FakeBus) -> FakeBus:
    monkeypatch.setattr(unit_bus, "connect", lambda: bus)
    return bus


def test_instance_states_are_one_list_call_and_main_pids_are_asked_only_when_wanted(systemd, monkeypatch, tmp_path):
    bus = on_bus(monkeypatch, FakeBus({"mipart-vllm@0.service": running(100), "mipart-vllm@12.service": FAILED}))
    runner = SystemdRunner(tmp_path / "run", unit_dir=tmp_path / "units")
    assert runner.list_instances() == {0: UnitState("active", "running"), 12: UnitState("failed", "failed")}
    assert bus.calls == [("/org/freedesktop/systemd1", "ListUnitsByPatterns", ([], ["mipart-vllm@*.service"]))]
    assert runner.list_instances(pids=True) == {
        0: UnitState("active", "running", 100),
        12: UnitState("failed", "failed"),
    }
    assert bus.methods()[1:] == ["ListUnitsByPatterns", "GetAll", "GetAll"]
    assert systemd.calls() == []  # no systemctl process


def test_named_units_answer_under_the_names_given_and_globs_under_their_ids(systemd, monkeypatch):
    bus = on_bus(
        monkeypatch,
        FakeBus(
            {"gpu-client.service": running(7), "mipart-vllm@1.service": FAILED},
            aliases={"inference.service": "gpu-client.service"},
        ),
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


def test_properties_a_list_does_not_give_come_in_systemctls_words(systemd, monkeypatch):
    on_bus(monkeypatch, FakeBus({"mipart-vllm@3.service": {**FAILED, "ExecMainStatus": "203"}}))
    shown = unit_state.show(["mipart-vllm@3.service"], (*unit_state.STATE, *unit_state.EXIT, "Environment"))
    assert shown["mipart-vllm@3.service"] == {
        "Id": "mipart-vllm@3.service",
        "LoadState": "loaded",
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainCode": "1",
        "ExecMainStatus": "203",
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


def test_what_the_bus_will_not_answer_systemctl_reads(systemd, monkeypatch):
    """A name systemd leaves out (systemctl says why), or a call refused: the stand-in answers."""
    systemd.set({"a.service": running(3)})
    bus = on_bus(monkeypatch, FakeBus({"a.service": running(3)}))
    assert unit_state.show(["a.service", "bad/name"], unit_state.STATE)["a.service"]["ActiveState"] == "active"
    assert bus.methods() == ["ListUnitsByNames"] and systemd.calls() == [
        "show -p Id,ActiveState,SubState -- a.service bad/name"
    ]
    bus.fail = "ListUnitsByPatterns"
    assert unit_state.show(["a.*"], unit_state.STATE)["a.service"]["ActiveState"] == "active"
    assert systemd.calls()[-1] == "show -p Id,ActiveState,SubState -- a.*"


def test_neither_bus_nor_systemctl_is_one_line(systemd, monkeypatch, tmp_path):
    on_bus(monkeypatch, FakeBus({}, fail="ListUnitsByNames"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(unit_state.SystemdUnreadable) as caught:
        unit_state.show(["a.service"], unit_state.STATE)
    assert str(caught.value).startswith("cannot run systemctl:") and "\n" not in str(caught.value)


def test_no_system_bus_is_no_connection(monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/system_bus_socket")
    monkeypatch.setattr(unit_bus, "_connection", None)
    assert unit_bus.connect() is None
