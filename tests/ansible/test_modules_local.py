"""mipart_profile and mipart_plan run by the real `ansible` on this machine (local connection),
against the worktree's mipart on a simulated host. mipart_apply needs systemd: the system tier's
fleet test runs all three over SSH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_tools import REPO, collection_copy, tool_env
from conftest import create_sim

from mipart.sim.ports import free_block


@pytest.fixture
def adhoc(tmp_path, ansible_bin):
    """run(module, args, *flags) -> (rc, result, shown): one module on localhost, its result as JSON and what
    the callback printed before it (a --diff)."""
    collections = collection_copy(tmp_path / "collections").parents[2]
    wrapper = tmp_path / "bin" / "mipart"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO / "agent"} exec {sys.executable} -m mipart "$@"\n')
    wrapper.chmod(0o755)
    env = tool_env(ansible_bin, tmp_path)
    env.update(
        PATH=f"{wrapper.parent}:{env['PATH']}",
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
        ANSIBLE_LOCALHOST_WARNING="false",
    )

    def run(module: str, args: dict, *flags: str, extra_env: dict | None = None) -> tuple[int, dict, str]:
        done = subprocess.run(
            ["ansible", "localhost", "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3"]
            + ["-m", f"mipart.host.{module}", "-a", json.dumps(args), *flags],
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        head, sep, body = done.stdout.partition(" => ")
        assert sep, done.stdout + done.stderr
        return done.returncode, json.loads(body[: body.rindex("}") + 1]), head

    return run


PROFILE = """\
version: 1
services:
  chat:
    model: test/chat
    listen: "127.0.0.1:{port}"
    runtime: native
    command: ["/bin/true"]
    args: {args}
api: {{listen: "127.0.0.1:{api}"}}
"""


def text(args: str = "[]") -> str:
    return PROFILE.format(port=40000, api=40001, args=args)


def test_profile_module_validates_first_backs_up_and_changes_only_what_differs(tmp_path, adhoc):
    dest = tmp_path / "etc" / "profile.yaml"
    dest.parent.mkdir()
    rc, first, _ = adhoc("mipart_profile", {"content": text(), "dest": str(dest)})
    assert (rc, first["changed"]) == (0, True), first
    assert dest.read_text() == text() and oct(dest.stat().st_mode & 0o777) == "0o640"
    assert first["services"] == ["chat"] and "backup_file" not in first
    assert adhoc("mipart_profile", {"content": text(), "dest": str(dest)})[1]["changed"] is False

    new = text('["--max-num-seqs", "8"]')
    rc, check, shown = adhoc("mipart_profile", {"content": new, "dest": str(dest)}, "--check", "--diff")
    assert (rc, check["changed"]) == (0, True), check
    assert f"--- before: {dest}" in shown and "-    args: []" in shown and '+    args: ["--max-num-seqs", "8"]' in shown
    assert dest.read_text() == text(), "check mode wrote the profile"

    rc, second, _ = adhoc("mipart_profile", {"content": new, "dest": str(dest)})
    assert (rc, second["changed"]) == (0, True), second
    assert dest.read_text() == new
    assert Path(second["backup_file"]).read_text() == text()

    rc, refused, _ = adhoc("mipart_profile", {"content": new.replace("runtime:", "runtme:"), "dest": str(dest)})
    assert rc != 0 and refused["msg"].startswith(
        f"{dest}: mipart refuses this profile, the old one is kept: {dest}:"
    ), refused
    assert dest.read_text() == new
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, os.path.basename(second["backup_file"])])


def test_profile_module_takes_src_from_the_controller_byte_for_byte(tmp_path, adhoc):
    src = tmp_path / "fleet.yaml"
    src.write_text(text() + "\n\n")  # trailing blank lines: the file lookup's rstrip would drop them
    dest = tmp_path / "profile.yaml"
    rc, done, _ = adhoc("mipart_profile", {"src": str(src), "dest": str(dest)})
    assert (rc, done["changed"]) == (0, True), done
    assert dest.read_bytes() == src.read_bytes()


def test_plan_module_reports_facts_and_what_would_change(tmp_path, adhoc):
    sim = create_sim(tmp_path / "host", model="mi300x", gpus=2, compute="SPX", memory="NPS1")
    port = free_block(2)
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        PROFILE.format(port=port, api=port + 1, args="[]").replace("services:", "gpus: {compute: DPX}\nservices:")
    )
    rc, plan, _ = adhoc("mipart_plan", {"profile": str(profile)}, "--check", extra_env=sim.env)
    assert (rc, plan["changed"]) == (0, True), plan
    facts = plan["ansible_facts"]["mipart_plan"]
    assert facts["partition"]["reload"] is False
    assert [(w["gpu"], w["value"]) for w in facts["partition"]["writes"]] == [(0, "DPX"), (1, "DPX")]
    assert len(facts["instances"]) == 4 and facts["digest"] == plan["digest"]
    assert plan["changes"] == ["2 partition write(s) on GPU(s) 0, 1", "mipart-agent starts (it is not answering)"]
    rollout = plan["rollout"]  # SPX -> DPX needs no driver reload: GPU by GPU, the other serving meanwhile
    assert (rollout["mode"], plan["outage"], rollout["capacity"]) == ("rolling", False, {"chat": 1}), rollout
    assert rollout["description"].startswith("rolling: ") and facts["rollout"] == rollout
    assert plan["readiness"] is None  # no agent answers

    # The text to plan given as content (the file stays as it is): GPU 1 alone changes, GPU 0 serves meanwhile.
    one_gpu = profile.read_text().replace(
        "gpus: {compute: DPX}", "gpus: {compute: SPX, overrides: [{select: [1], compute: DPX}]}"
    )
    rc, rolling, _ = adhoc("mipart_plan", {"profile": str(profile), "content": one_gpu}, extra_env=sim.env)
    assert (rc, rolling["outage"], rolling["rollout"]["mode"]) == (0, False, "rolling"), rolling
    assert rolling["rollout"]["capacity"] == {"chat": 1} and rolling["digest"] != plan["digest"]
    assert [step["gpus"] for step in rolling["rollout"]["steps"]] == [[1]]
    assert rolling["changes"][0] == "1 partition write(s) on GPU(s) 1"
    rc, refused, _ = adhoc("mipart_plan", {"content": one_gpu.replace("runtime:", "runtme:")}, extra_env=sim.env)
    assert rc != 0 and refused["msg"].startswith("mipart refuses the profile given as content: "), refused


def test_drain_module_drains_once_keeps_the_first_reason_and_undrains(tmp_path, adhoc):
    """With no agent running: the drain file is written and removed (the agent reads it when it starts), and
    what the readiness path answers cannot be asked (readiness null)."""
    sim = create_sim(tmp_path / "host", model="mi300x", gpus=1)
    port = free_block(2)
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE.format(port=port, api=port + 1, args="[]"))
    env = {**sim.env, "MIPART_STATE_DIR": str(tmp_path / "state")}
    (tmp_path / "state").mkdir()
    drain_file = tmp_path / "state" / "drain.json"

    def drain(*flags: str, **args) -> tuple[int, dict]:
        rc, result, _ = adhoc("mipart_drain", {"profile": str(profile), "wait": False, **args}, *flags, extra_env=env)
        return rc, result

    rc, check = drain("--check", reason="driver update")
    assert (rc, check["changed"], check["drained"], check["reason"]) == (0, True, True, "driver update"), check
    assert check["readiness"] is None and not drain_file.exists()

    rc, first = drain(reason="driver update")
    assert (rc, first["changed"], first["drained"], first["reason"]) == (0, True, True, "driver update"), first
    assert json.loads(drain_file.read_text())["reason"] == "driver update"
    rc, again = drain(reason="something else")
    assert (rc, again["changed"], again["reason"], again["since"]) == (0, False, "driver update", first["since"])

    rc, back = drain(state="undrained")
    assert (rc, back["changed"], back["drained"]) == (0, True, False), back
    assert not drain_file.exists()
    assert drain(state="undrained")[1]["changed"] is False

    rc, refused = drain(reason="two\nlines")
    assert rc != 0 and refused["msg"].startswith("mipart drain --json --profile"), refused
    assert "one line" in refused["msg"] and not drain_file.exists()
