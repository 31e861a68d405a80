"""What mipart trusts about a process is what the kernel or systemd reports, never what the process
says of itself (issue 20, finding 7): a unit's name counts only in the control group systemd made
for it, a server's last words come by the unit journald stamped, and our nginx under systemd is
the one in the control group of a layer's unit (mipart-nginx.service, mipart-nginx-front.service)."""

from __future__ import annotations

import os
import stat

from mipart.names import AGENT_UNIT, NGINX_FRONT_UNIT, NGINX_UNIT
from mipart.nginx import procs
from mipart.partition import clients
from mipart.runners import exits, procfs, unit_state

UNIT = "mipart-vllm@3.service"
SYSTEM = f"/system.slice/system-mipart\\x2dvllm.slice/{UNIT}"
USERS = f"/user.slice/user-1000.slice/user@1000.service/app.slice/{UNIT}"  # a user's own manager names units freely


def test_a_unit_name_counts_only_in_the_control_group_systemd_made_for_that_system_unit(monkeypatch):
    asked = []

    def show(units, properties):
        asked.append((list(units), tuple(properties)))
        return {UNIT: {"ControlGroup": SYSTEM}}

    monkeypatch.setattr(unit_state, "show", show)
    assert clients.confirmed_units({1: SYSTEM, 2: USERS, 3: "/", 4: None}) == {1: UNIT}
    assert asked == [([UNIT], ("ControlGroup",))]  # one question for every holder


def test_without_systemd_no_unit_is_taken_on_its_word(monkeypatch):
    def unreadable(units, properties):
        raise unit_state.SystemdUnreadable("systemctl show failed: System has not been booted with systemd")

    monkeypatch.setattr(unit_state, "show", unreadable)
    assert clients.confirmed_units({1: SYSTEM}) == {}


def test_a_servers_last_line_is_read_by_the_unit_journald_stamped_not_by_an_identifier(tmp_path, monkeypatch):
    """`journalctl -t mipart-vllm@3` would show what any user logged as `logger -t mipart-vllm@3`."""
    calls = tmp_path / "calls"
    journalctl = tmp_path / "journalctl"
    journalctl.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "ValueError: model not found"\n')
    journalctl.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert exits.journal_line(3) == "ValueError: model not found"
    assert calls.read_text().split() == [f"_SYSTEMD_UNIT={UNIT}", "-n", "1", "-o", "cat", "--no-pager"]


def test_under_systemd_our_nginx_is_the_one_in_a_layers_control_group(monkeypatch):
    """Whichever of the agent and the two layers asks (the front's launcher scans the back's masters
    too), our nginx is in the back's or the front's unit, beside its own."""
    own = {}
    monkeypatch.setattr(procfs, "cgroup_of", lambda pid: own["path"])
    layers = {f"/system.slice/{NGINX_UNIT}", f"/system.slice/{NGINX_FRONT_UNIT}"}
    for path, expected in (
        (f"/system.slice/{NGINX_UNIT}", layers),  # mipart exec-nginx
        (f"/system.slice/{NGINX_FRONT_UNIT}", layers),  # mipart exec-nginx --front
        (f"/system.slice/{AGENT_UNIT}", layers),  # the agent
        ("/user.slice/user-0.slice/session-1.scope", None),  # the process runner: no unit to check
    ):
        own["path"] = path
        assert procs.OurNginx.here().cgroups == expected
