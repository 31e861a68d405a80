"""A docker-runtime instance on real systemd: the hardened mipart-vllm@ unit runs the real
`mipart exec`, which runs the container client. The client is a stand-in `docker` on the
fixed PATH (/usr/bin/docker in the machine) that records the environment execve(2) gave it
and its argv, then waits like a client attached to its container.

The profile's env tries every way the client used to be steerable (issue 9): PATH (with
another `docker` there), LD_PRELOAD, DOCKER_HOST, CONTAINERS_CONF; /etc/default/mipart (the
unit's environment) tries DOCKER_HOST and LD_LIBRARY_PATH. None of it may reach the client;
the values reach the container only through the 0600 env file and the secrets file.
"""

from __future__ import annotations

import time

import pytest
import recorder

from mipart.sim.ports import free_block

from .nspawn import Machine, install_deb

pytestmark = pytest.mark.system

SIM = "/var/lib/mipart-sim"
CALLS = "/var/lib/mipart/docker-calls"  # writable for mipart-vllm@ (ReadWritePaths=/var/lib/mipart)
FIXED_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
HOSTILE = {
    "PATH": "/opt/evil",
    "LD_PRELOAD": "/opt/evil/x.so",
    "DOCKER_HOST": "tcp://198.51.100.7:2375",
    "CONTAINERS_CONF": "/opt/evil/containers.conf",
    "HF_TOKEN": "hf_in_env_1",
}
PROFILE = """\
version: 1
gpus: {{compute: DPX, memory: NPS2}}
services:
  chat: {{model: test/chat, partitions: [9], listen: "127.0.0.1:{listen}", runtime: docker, image: "rocm/vllm:latest",
         env: {{{env}}}, env_files: [/etc/mipart/secrets/chat.env]}}
instances: {{hf_home: /var/lib/mipart/hf-docker}}
api: {{listen: "127.0.0.1:{api}"}}
"""


def _put(m: Machine, path: str, text: str, mode: str) -> None:
    m.run(f"mkdir -p {path.rsplit('/', 1)[0]} && cat >{path} <<'EOF'\n{text}EOF\nchmod {mode} {path}")


def test_the_container_client_runs_with_a_fixed_environment(tmp_path, system_ready, deb):
    first = free_block(2)
    with Machine(tmp_path / "machine") as m:
        install_deb(m, deb)
        m.run(f"mipart sim create {SIM} --model mi300x --gpus 8 --compute DPX --memory NPS2")
        _put(m, "/usr/bin/docker", recorder.script("fixed", CALLS, then='[ "$1" = run ] && exec sleep 3600'), "0755")
        _put(m, "/opt/evil/docker", recorder.script("evil", CALLS), "0755")
        _put(
            m,
            "/etc/default/mipart",
            f'MIPART_SYSFS_ROOT={SIM}\nMIPART_RELOAD_CMD="mipart sim reload {SIM}"\n'
            "DOCKER_HOST=tcp://198.51.100.8:2375\nLD_LIBRARY_PATH=/opt/evil\n",
            "0644",
        )
        _put(m, "/etc/mipart/secrets/chat.env", "# the hub token\nHF_TOKEN_FILE_SECRET=hf_in_file_2\n", "0600")
        env = ", ".join(f'{k}: "{v}"' for k, v in HOSTILE.items())
        _put(m, "/etc/mipart/profile.yaml", PROFILE.format(listen=first, api=first + 1, env=env), "0640")
        m.run("mipart validate /etc/mipart/profile.yaml")
        started = m.run("systemctl start mipart-partition mipart-agent", check=False, timeout=180)
        assert started.returncode == 0, started.stderr
        deadline, calls = time.monotonic() + 120, []
        while time.monotonic() < deadline and not any(c["argv"][:1] == ["run"] for c in calls):
            time.sleep(0.5)
            calls = recorder.calls(m.run(f"cat {CALLS} 2>/dev/null", check=False).stdout)
        journal = m.run("journalctl -q --no-pager -o cat -u mipart-agent -u mipart-vllm@9", check=False).stdout
        assert any(c["argv"][:1] == ["run"] for c in calls), journal[-6000:]

        assert {c["who"] for c in calls} == {"fixed"}, calls  # the profile's PATH found nothing
        remove, run = calls[0], next(c for c in calls if c["argv"][:1] == ["run"])
        assert remove["argv"] == ["rm", "-f", "mipart-vllm-9"]
        for call in (remove, run):
            client_env = dict(call["env"])
            assert client_env.pop("PATH") == FIXED_PATH and client_env.pop("HOME") == "/root"
            assert client_env.pop("MIPART_INSTANCE") == "9" and client_env.pop("MIPART_RUN_DIR") == "/run/mipart"
            assert client_env == {}, client_env

        argv = run["argv"]
        assert argv[:7] == [
            "run",
            "--env-file",
            "/run/mipart/instances/9.env",
            "--env-file",
            "/etc/mipart/secrets/chat.env",
            "-v",
            "/var/lib/mipart/hf-docker:/root/.cache/huggingface",  # the cache as the launcher resolved it
        ], argv
        sockets = "/run/mipart-vllm/sockets/9"
        assert argv[argv.index("-v", 6) + 1] == f"{sockets}:{sockets}" and "-p" not in argv  # its socket, no port
        assert argv[-4:-2] == ["--uds", f"{sockets}/http.sock"], argv
        assert m.run(f"stat -c %U:%G:%a {sockets}").stdout.strip() == "root:www-data:750"
        assert not any(v in " ".join(argv) for v in (*HOSTILE.values(), "hf_in_file_2")), argv
        assert "-e" not in argv and "--privileged" not in argv
        assert m.run("stat -c '%a %U' /run/mipart/instances/9.env /run/mipart/instances/9.json").stdout.split("\n")[
            :2
        ] == ["600 root", "600 root"]
        lines = m.run("cat /run/mipart/instances/9.env").stdout.splitlines()
        for key, value in HOSTILE.items():
            assert f"{key}={value}" in lines
        assert "hf_in_file_2" not in m.run("cat /run/mipart/instances/9.env /run/mipart/instances/9.json").stdout
        assert "hf_in_file_2" not in journal and "hf_in_env_1" not in journal
        # The model cache, created by the launcher for instances.user, shared through its group.
        assert m.run("stat -c '%U:%G:%a' /var/lib/mipart/hf-docker").stdout.strip() == "mipart:mipart:770"
