"""A docker/podman instance: the profile's env reaches the container only, never its root client.

The real launcher (`mipart exec N`) runs against a stand-in `docker` that records its own
environment and argv. The client's fixed PATH is pointed at the stand-in's directory for
this test only (on real systemd, tests/system/test_container_client_systemd.py puts the
stand-in on the real fixed PATH). Before the change, the launcher put the env into the
client's environment and looked the client up on the profile's PATH: the `docker` in
/tmp/evil ran, with LD_PRELOAD, DOCKER_HOST and CONTAINERS_CONF set.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import recorder
from conftest import AGENT
from rendered import render_run_dir

HOSTILE = {
    "PATH": "/tmp/evil",
    "LD_PRELOAD": "/tmp/evil/x.so",
    "DOCKER_HOST": "tcp://198.51.100.7:2375",
    "CONTAINERS_CONF": "/tmp/evil/containers.conf",
    "PYTHONPATH": "/tmp/evil",
    "HF_TOKEN": "hf_s3cr3t=x",
}
# `mipart exec N` with the fixed PATH pointed at this test's directory.
LAUNCH = (
    "import sys; import mipart.serving.execenv as e, mipart.serving.launcher as l; from mipart.cli import main; "
    "e.CLIENT_PATH = l.CLIENT_PATH = sys.argv[1]; main(sys.argv[2:])"
)


def _recorder(directory, who: str, log):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker"
    path.write_text(recorder.script(who, str(log)))
    path.chmod(0o755)


def _calls(log) -> list[dict]:
    return recorder.calls(log.read_text())


def _launch(sim_env, run, client_path, *args: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    """`mipart exec ARGS` on the rendered run dir, with the container client's fixed PATH at client_path."""
    env = {**os.environ, **sim_env, "PYTHONPATH": str(AGENT), "MIPART_RUN_DIR": str(run), **(extra or {})}
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, str(client_path), "exec", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _render(tmp_path, sim_env, env: dict, env_files: list[str] = ()):
    env_text = ", ".join(f"{k}: {json.dumps(v)}" for k, v in env.items())
    return render_run_dir(
        tmp_path,
        sim_env,
        f"runtime: docker, image: rocm/vllm, partitions: [8], env: {{{env_text}}}, env_files: {json.dumps(list(env_files))}",
    )


def test_the_client_gets_a_fixed_environment_and_the_env_only_through_a_root_only_file(tmp_path, sim_env):
    fixed, evil = tmp_path / "fixed-bin", tmp_path / "evil"
    hostile = {**HOSTILE, "PATH": str(evil)}
    run = _render(tmp_path, sim_env, hostile)
    log = tmp_path / "calls.jsonl"
    _recorder(fixed, "fixed", log)
    _recorder(evil, "evil", log)  # what PATH: /tmp/evil would have found
    unit_env = {"DOCKER_HOST": "unix:///from-the-unit", "LD_LIBRARY_PATH": "/from-the-unit"}
    done = _launch(sim_env, run, fixed, "8", extra=unit_env)
    assert done.returncode == 0, done.stderr
    calls = _calls(log)
    assert [c["who"] for c in calls] == ["fixed", "fixed"]  # `rm -f` of a stale container, then `run`
    remove, run_call = calls
    assert remove["argv"] == ["rm", "-f", "mipart-vllm-8"]
    for call in calls:
        client_env = call["env"]
        assert client_env.pop("PATH") == str(fixed)
        assert set(client_env) == {"HOME", "MIPART_INSTANCE", "MIPART_RUN_DIR"}, client_env
        assert client_env["MIPART_INSTANCE"] == "8"
    argv = run_call["argv"]
    assert argv[:3] == ["run", "--env-file", str(run / "instances/8.env")]
    assert argv[3:5] == ["-v", f"{tmp_path / 'hf'}:/root/.cache/huggingface"]  # the cache as the launcher resolved it
    assert not any(v in " ".join(argv) for v in hostile.values()), argv  # no value on the command line
    env_file = run / "instances/8.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and env_file.stat().st_uid == os.geteuid()
    lines = env_file.read_text().splitlines()
    for key, value in hostile.items():
        assert f"{key}={value}" in lines
    assert "HF_HOME=/root/.cache/huggingface" in lines and "CUDA_VISIBLE_DEVICES=0" in lines


def test_cleanup_removes_the_container_with_the_fixed_environment(tmp_path, sim_env):
    run = _render(tmp_path, sim_env, {"A": "1"})
    log, fixed = tmp_path / "calls.jsonl", tmp_path / "fixed-bin"
    _recorder(fixed, "fixed", log)
    done = _launch(sim_env, run, fixed, "8", "--cleanup")
    assert done.returncode == 0, done.stderr
    [call] = _calls(log)
    assert call["argv"] == ["rm", "-f", "mipart-vllm-8"] and "A" not in call["env"]


@pytest.mark.parametrize(
    "damage,words",
    [
        ("missing", "cannot be read (No such file or directory); restart mipart-agent to rewrite it"),
        ("readable", "has mode 0644 and owner uid"),
        ("stale", "does not say what spec"),
    ],
)
def test_an_env_file_that_is_missing_open_or_stale_is_refused(tmp_path, sim_env, damage, words):
    run = _render(tmp_path, sim_env, {"A": "1"})
    path = run / "instances/8.env"
    if damage == "missing":
        path.unlink()
    elif damage == "readable":
        path.chmod(0o644)
    else:
        path.write_text(path.read_text().replace("A=1", "A=2"))
    log, fixed = tmp_path / "calls.jsonl", tmp_path / "fixed-bin"
    _recorder(fixed, "fixed", log)
    done = _launch(sim_env, run, fixed, "8")
    [line] = done.stderr.splitlines()
    assert done.returncode == 1 and line.startswith(f"mipart: instance 8: env file {path} ") and words in line, line
    assert not log.exists()  # refused before the client ran at all


def test_a_client_missing_from_the_fixed_path_is_one_line(tmp_path, sim_env):
    run = _render(tmp_path, sim_env, {"A": "1"})
    done = _launch(sim_env, run, tmp_path / "empty", "8")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert (
        f"docker not found in {tmp_path / 'empty'} (the container client's fixed PATH); install it there" in done.stderr
    )


def test_secrets_files_go_to_the_client_as_they_are_never_into_mipart_s_env_file(tmp_path, sim_env):
    secret = tmp_path / "secrets/chat.env"
    secret.parent.mkdir()
    secret.write_text("HF_TOKEN=hf_TopSecret\n")
    secret.chmod(0o600)
    run = _render(tmp_path, sim_env, {"A": "1"}, env_files=[str(secret)])
    log, fixed = tmp_path / "calls.jsonl", tmp_path / "fixed-bin"
    _recorder(fixed, "fixed", log)
    done = _launch(sim_env, run, fixed, "8")
    assert done.returncode == 0, done.stderr
    _, call = _calls(log)
    assert call["argv"][:5] == ["run", "--env-file", str(run / "instances/8.env"), "--env-file", str(secret)]
    assert "hf_TopSecret" not in (run / "instances/8.env").read_text() + (run / "instances/8.json").read_text()
    assert "HF_TOKEN" not in call["env"]


def test_a_model_cache_that_is_a_link_to_a_system_directory_is_refused_at_start(tmp_path, sim_env):
    run = _render(tmp_path, sim_env, {"A": "1"})
    (tmp_path / "hf").symlink_to("/etc")  # the profile's hf_home, made a link after validation
    log, fixed = tmp_path / "calls.jsonl", tmp_path / "fixed-bin"
    _recorder(fixed, "fixed", log)
    done = _launch(sim_env, run, fixed, "8")
    [line] = done.stderr.splitlines()
    assert (
        done.returncode == 1
        and line
        == f"mipart: instance 8: instances.hf_home {tmp_path / 'hf'} resolves to /etc, which is inside the system directory /etc; give a directory of its own, e.g. /var/lib/mipart/huggingface"
    )
    assert not log.exists()
