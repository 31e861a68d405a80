"""The fleet's Ansible controller: `ansible-playbook` with the mipart.host collection built and installed as
docs/fleet.md tells a user, run in the fleet's network namespace, and what a run did, read back.

What a run did comes from Ansible's own junit callback (ansible.builtin.junit, enabled beside the default
output): one case per task and host with its status and, for a task that ran, its result as JSON. Its
durations are not taken: the callback times a task from its first start, and the waves of a `serial` play
run the same tasks (one uuid), so a later wave's cases count the earlier waves too. The PLAY RECAP is read
from the default output.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ansible_tools import install_collection, tool_env

from .fleet import Fleet

RECAP = re.compile(r"^(\w+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
CASE = re.compile(r"^\[(?P<host>[^\]]+)\] (?P<play>.*?): (?P<task>.*)$")


@dataclass(frozen=True)
class Case:
    """One task on one host: ok (which includes changed), skipped or failed, and its result when it ran."""

    host: str
    play: str
    task: str
    status: str
    result: dict

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))


@dataclass
class Run:
    done: subprocess.CompletedProcess
    seconds: float  # wall time of the whole ansible-playbook run
    cases: list[Case]

    @property
    def output(self) -> str:
        return self.done.stdout + self.done.stderr

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP per host: ok, changed, unreachable, failed."""
        return {
            host: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, counts), strict=True))
            for host, *counts in RECAP.findall(self.done.stdout)
        }

    def task(self, name: str) -> dict[str, list[Case]]:
        """Every run of the task NAME (once per wave it ran in), by host."""
        found: dict[str, list[Case]] = {}
        for case in self.cases:
            if case.task == name:
                found.setdefault(case.host, []).append(case)
        return found


class Controller:
    """ansible-playbook against FLEET's inventory, from WORKDIR (its home, the installed collection, reports)."""

    def __init__(self, fleet: Fleet, ansible_bin: Path, workdir: Path):
        self.fleet, self.workdir = fleet, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = tool_env(ansible_bin, workdir)
        self.env.update(
            ANSIBLE_COLLECTIONS_PATH=str(install_collection(ansible_bin, workdir)),
            ANSIBLE_SSH_ARGS="-o ControlMaster=no",  # no ssh master left running after the play
            ANSIBLE_PIPELINING="true",
            ANSIBLE_NOCOLOR="true",
            ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.junit",
            JUNIT_HIDE_TASK_ARGUMENTS="true",  # a case is named by its task's name only
        )
        self.inventory = fleet.inventory(workdir / "inventory.ini")
        self._runs = itertools.count()

    def playbook(self, playbook: str, *args: str, timeout: float = 900) -> Run:
        """PLAYBOOK (a path, or a collection's playbook such as mipart.host.rollout) with ARGS."""
        number = next(self._runs)
        reports = self.workdir / f"junit-{number}"
        env = dict(self.env, JUNIT_OUTPUT_DIR=str(reports))
        started = time.monotonic()
        done = self.fleet.run(["ansible-playbook", "-i", str(self.inventory), playbook, *args], env, timeout)
        seconds = time.monotonic() - started
        (self.workdir / f"run-{number}.log").write_text(done.stdout + done.stderr)  # kept with pytest's tmp dirs
        return Run(done, seconds, [case for report in sorted(reports.glob("*.xml")) for case in _cases(report)])


def _cases(report: Path) -> list[Case]:
    cases = []
    for case in ET.parse(report).iter("testcase"):
        named = CASE.match(case.get("name", ""))
        if named is None:
            continue
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failure is not None:
            status = "failed"
        elif case.find("skipped") is not None:
            status = "skipped"
        else:
            status = "ok"
        out = case.findtext("system-out") or (failure.text if failure is not None else "") or ""
        result = json.loads(out) if out.startswith("{") else {}
        cases.append(Case(named["host"], named["play"], named["task"], status, result))
    return cases
