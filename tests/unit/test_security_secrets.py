"""Secrets: `env_files:` are read by the launcher at each start and never copied into a spec;
spec files (which carry `env`) are root's alone. Before issue 9 a token in `env` sat in a
world-readable spec file and there was no other way to give one."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace

import pytest
from conftest import mipart
from rendered import render_run_dir
from specs import SPEC as SAMPLE_SPEC

from mipart.daemon.specfiles import SPEC_MODE, write_specs
from mipart.serving.spec import InstanceSpec

TOKEN = "hf_TopSecret123=="
SPEC = replace(SAMPLE_SPEC, env=(("HF_TOKEN", TOKEN),))


def test_spec_files_are_readable_by_their_owner_only(tmp_path):
    assert write_specs(tmp_path, {3: SPEC}) == ""
    path = tmp_path / "instances/3.json"
    assert stat.S_IMODE(path.stat().st_mode) == SPEC_MODE == 0o600
    assert path.stat().st_uid == os.geteuid()


def test_a_world_readable_spec_left_by_an_older_mipart_is_closed_even_when_unchanged(tmp_path):
    path = tmp_path / "instances/3.json"
    path.parent.mkdir()
    path.write_text(SPEC.file_text())
    path.chmod(0o644)
    assert write_specs(tmp_path, {3: SPEC}) == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_new_spec_fields_leave_older_specs_and_their_digests_alone():
    data = json.loads(SPEC.file_text())
    assert "env_files" not in data and "cache_owner" not in data  # so a running server is not restarted by an upgrade
    with_files = replace(SPEC, env_files=("/etc/mipart/secrets/chat.env",), cache_owner="mipart")
    assert InstanceSpec.from_file_text(with_files.file_text()) == with_files
    assert with_files.digest() != SPEC.digest()


# -- env_files at exec time, through the real CLI ---------------------------------------------------


def _render(tmp_path, sim_env, env_files: list[str], env: str = "{FOO: bar}"):
    return render_run_dir(
        tmp_path,
        sim_env,
        f"partitions: [9], command: [/bin/sh, -c, env, sh], env: {env}, env_files: {json.dumps(env_files)}",
    )


def _secret(tmp_path, text: str, mode: int = 0o600, name: str = "chat.env"):
    path = tmp_path / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_a_secret_reaches_the_server_and_no_file_mipart_writes(tmp_path, sim_env):
    secret = _secret(tmp_path, f"# the hub token\nHF_TOKEN={TOKEN}\n\nOTHER=a b=c\n")
    run = _render(tmp_path, sim_env, [secret])
    spec_text = (run / "instances/9.json").read_text()
    assert TOKEN not in spec_text and secret in spec_text
    done = mipart("exec", "9", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert env["HF_TOKEN"] == TOKEN and env["OTHER"] == "a b=c" and env["FOO"] == "bar"
    assert TOKEN not in done.stderr
    assert not [p for p in run.rglob("*") if p.is_file() and TOKEN in p.read_text()]


@pytest.mark.parametrize(
    "text,mode,words",
    [
        ("HF_TOKEN=x\n", 0o644, "has mode 0644, so others may read or change it; chmod 600"),
        ("HF_TOKEN=x\n", 0o620, "has mode 0620"),
        ("HF_TOKEN\n", 0o600, "line 1 has no '='; write KEY=VALUE"),
        ("export HF_TOKEN=x\n", 0o600, "line 1 does not start with a variable name"),
        ("A=1\n  B=2\n", 0o600, "line 2 does not start with a variable name"),
        ("hf-abc123==\n", 0o600, "line 1 does not start with a variable name"),
        ('HF_TOKEN="x"\n', 0o600, "line 1: the value of HF_TOKEN starts with a quote"),
        ("HF_TOKEN=x \n", 0o600, "the value of HF_TOKEN starts or ends with whitespace"),
        (
            "CUDA_VISIBLE_DEVICES=0-7\n",
            0o600,
            "sets CUDA_VISIBLE_DEVICES, which mipart sets for each instance; remove it",
        ),
        ("MIPART_INSTANCE=9\n", 0o600, "sets MIPART_INSTANCE, which mipart sets for each instance"),
        ("FOO=other\n", 0o600, "sets FOO, which services.chat.env or another env file sets too; set it in one place"),
    ],
)
def test_a_secrets_file_mipart_cannot_trust_or_read_alike_is_one_line(tmp_path, sim_env, text, mode, words):
    secret = _secret(tmp_path, text, mode)
    run = _render(tmp_path, sim_env, [secret])
    done = mipart("exec", "9", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("mipart: instance 9: ") and secret in line and words in line, line
    assert "=x" not in line and "0-7" not in line and "abc123" not in line  # a value is never shown


def test_a_missing_or_linked_secrets_file_is_one_line(tmp_path, sim_env):
    real = _secret(tmp_path, "A=1\n")
    link = tmp_path / "secrets/link.env"
    link.symlink_to(real)
    run = _render(tmp_path, sim_env, [str(tmp_path / "secrets/none.env"), str(link)])
    done = mipart("exec", "9", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "none.env does not exist; create it (owner root, mode 0600) or remove it from the profile"
    )
    run = _render(tmp_path, sim_env, [str(link)])
    done = mipart("exec", "9", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert done.returncode == 1 and "it must be a regular file, not a symbolic link" in done.stderr, done.stderr


def test_one_key_in_two_secrets_files_is_refused(tmp_path, sim_env):
    first, second = _secret(tmp_path, "A=1\n"), _secret(tmp_path, "A=2\n", name="two.env")
    run = _render(tmp_path, sim_env, [first, second])
    done = mipart("exec", "9", env={**sim_env, "MIPART_RUN_DIR": str(run)})
    assert (
        done.returncode == 1 and f"{second} sets A, which services.chat.env or another env file sets too" in done.stderr
    )


def test_the_agent_writes_a_container_s_env_file_beside_its_spec_and_removes_both_with_it(tmp_path):
    from mipart.daemon.specfiles import remove_stale_specs

    container = replace(SPEC, runtime="docker", argv=("docker", "run", "rocm/vllm"), user=None)
    assert write_specs(tmp_path, {3: container}) == ""
    env_file = tmp_path / "instances/3.env"
    assert env_file.read_text() == f"HF_TOKEN={TOKEN}\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    remove_stale_specs(tmp_path, keep=())
    assert not list((tmp_path / "instances").iterdir())
