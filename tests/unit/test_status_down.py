"""`mipart status` with the agent down: one clear line when there is nothing it can read, and
why each instance that is not running ended (exit status and last log line) when there is."""

from __future__ import annotations

import json
import re
import socket

from conftest import mipart

DPX_NUMBERS = [8 * gpu + partition for gpu in range(8) for partition in range(2)]


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


def fake_bin(tmp_path, **scripts: str) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bindir / name).write_text("#!/bin/sh\n" + body)
        (bindir / name).chmod(0o755)
    return str(bindir)


def test_no_agent_and_no_profile_is_one_line_saying_what_could_not_be_read(tmp_path, sim_env):
    port = refused_port()
    missing = tmp_path / "missing.yaml"
    done = mipart("status", "--profile", missing, "--api", f"127.0.0.1:{port}", env=sim_env)
    assert done.returncode == 3 and done.stderr == ""
    assert done.stdout.splitlines() == [
        f"mipart-agent is not answering on 127.0.0.1:{port} (connection refused), and the profile {missing} cannot be read either "
        "(no such file): no instances to show; start it (systemctl start mipart-agent), or pass --profile PATH"
    ]
    data = json.loads(
        mipart("status", "--json", "--profile", missing, "--api", f"127.0.0.1:{port}", env=sim_env).stdout
    )
    assert data["agent"]["answering"] is False and data["instances"] == [] and "cannot be read" in data["error"]


def test_no_agent_and_no_gpus_is_one_line_too(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("version: 1\nservices:\n  chat: {model: org/m, listen: 8040}\n")
    port = refused_port()
    done = mipart(
        "status", "--profile", profile, "--api", f"127.0.0.1:{port}", env={"MIPART_SYSFS_ROOT": str(tmp_path / "none")}
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr
    [line] = done.stdout.splitlines()
    assert "the instances the profile plans cannot be worked out" in line


def test_last_error_is_the_exit_status_and_the_last_log_line(tmp_path, sim_env):
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "version: 1\ngpus: {compute: DPX, memory: NPS2}\nservices:\n  chat: {model: org/m, listen: 8040}\n"
    )
    units = "".join(
        f"printf 'Id=mipart-vllm@{n}.service\\nActiveState=active\\nSubState=running\\n\\n'\n" for n in DPX_NUMBERS[2:]
    )
    systemctl = (
        "printf 'Id=mipart-vllm@0.service\\nActiveState=failed\\nSubState=failed\\nExecMainCode=1\\nExecMainStatus=1\\nResult=exit-code\\n\\n'\n"
        "printf 'Id=mipart-vllm@1.service\\nActiveState=failed\\nSubState=failed\\nExecMainCode=2\\nExecMainStatus=9\\nResult=signal\\n\\n'\n"
        + units
    )
    path = fake_bin(
        tmp_path,
        systemctl=systemctl,
        journalctl='echo "older line"\necho "torch.OutOfMemoryError: HIP out of memory"\n',
    )
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "mipart-vllm@1.log").write_text("loading\nValueError: model not found\n\n")  # the process runner's log
    done = mipart("status", "--profile", profile, "--api", f"127.0.0.1:{refused_port()}", env={**sim_env, "PATH": path})
    assert done.returncode == 3, done.stderr
    table = {
        re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)
        for line in done.stdout.splitlines()
        if line.startswith("mipart-vllm@")
    }
    assert (
        table["mipart-vllm@0.service"][6]
        == "exited with status 1 (exit-code); torch.OutOfMemoryError: HIP out of memory"
    )
    assert table["mipart-vllm@1.service"][6] == "killed by signal 9 (signal); ValueError: model not found"
    assert table["mipart-vllm@8.service"][6] == "-"
    data = json.loads(
        mipart(
            "status",
            "--json",
            "--profile",
            profile,
            "--api",
            f"127.0.0.1:{refused_port()}",
            env={**sim_env, "PATH": path},
        ).stdout
    )
    assert (
        data["instances"][0]["last_error"]
        == "exited with status 1 (exit-code); torch.OutOfMemoryError: HIP out of memory"
    )
