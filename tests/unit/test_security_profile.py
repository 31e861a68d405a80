"""What `mipart validate` refuses so a careless profile edit cannot widen what mipart exposes:
the model cache (mounted read-write into every container), container env values, secrets
files, and the API's address. Each case failed before issue 9: the bad value was accepted."""

from __future__ import annotations

import asyncio
import json

import pytest

from mipart.profile import addresses
from mipart.profile.load import check_profile
from mipart.profile.problems import ProfileError

B = "version: 1\ngpus: {compute: DPX, memory: NPS2}\n"


def problems(text: str) -> list[str]:
    try:
        check_profile(text, "p")
    except ProfileError as exc:
        return [line[2:] for line in str(exc).splitlines()]
    return []


def hf_home(path: str) -> list[str]:
    return problems(B + f"instances: {{hf_home: {json.dumps(path)}}}\n")


@pytest.mark.parametrize(
    "path,words",
    [
        ("/", "is a directory many things share"),
        ("//", "is a directory many things share"),
        ("/etc", "is inside the system directory /etc"),
        ("/etc/mipart/hf", "is inside the system directory /etc"),
        ("/usr/share/hf", "is inside the system directory /usr"),
        ("/lib64", "is inside the system directory /lib64"),
        ("/boot/", "is inside the system directory /boot"),
        ("/proc/self", "is inside the system directory /proc"),
        ("/run/mipart", "is inside the system directory /run"),
        ("/root/.cache", "is inside /root, a home directory"),
        ("/home", "is inside /home, a home directory"),
        ("/home/models/hf", "is inside /home, a home directory"),
        ("/var/spool/cron/crontabs", "is inside /var/spool, a spool (mail, cron and at jobs, print queues)"),
        ("/var/mail", "is inside /var/mail, a spool"),
        ("/var/lib/docker", "is inside /var/lib/docker, a container runtime's state"),
        ("/var/lib/containers/storage/overlay", "is inside /var/lib/containers, a container runtime's state"),
        ("/var/lib/machines/debian", "is inside /var/lib/machines, a container runtime's state"),
        ("/var/log/journal", "is inside /var/log, the system's logs"),
        ("/var", "is a directory many things share"),
        ("/var/lib", "is a directory many things share"),
        ("/tmp", "is a directory many things share"),
        ("relative/hf", "is not a plain absolute path"),
        ("/data/../etc", "is not a plain absolute path"),
        ("/data:/etc", "is not a plain absolute path"),
    ],
)
def test_hf_home_must_be_a_directory_of_its_own(path, words):
    [line] = hf_home(path)
    assert line.startswith("3:22: instances.hf_home ") and words in line, line


@pytest.mark.parametrize(
    "path",
    ["/var/lib/mipart/huggingface", "/data/hf-cache", "/tmp/bench/hf", "/srv/hf", "/library/hf", "/var/lib/dockerish"],
)
def test_dedicated_cache_directories_are_taken(path):
    assert hf_home(path) == []


@pytest.mark.parametrize(
    "value,words",
    [
        ('"\\"quoted\\""', "starts with a quote"),
        ("\"'single'\"", "starts with a quote"),
        ('" padded"', "starts or ends with whitespace"),
        ('"padded "', "starts or ends with whitespace"),
    ],
)
@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_container_env_values_an_env_file_cannot_carry_are_refused(runtime, value, words):
    text = (
        B
        + f"services:\n  chat: {{model: a/b, listen: 8040, runtime: {runtime}, image: rocm/vllm, env: {{TOKEN: {value}}}}}\n"
    )
    [line] = problems(text)
    assert f"services.chat.env.TOKEN {words}" in line and f"(runtime {runtime} gets env through an env file)" in line, (
        line
    )


def test_the_same_values_are_fine_for_a_native_server_which_gets_them_by_execve():
    assert problems(B + 'services:\n  chat: {model: a/b, listen: 8040, env: {A: " padded ", B: "\\"q\\""}}\n') == []


def test_env_values_with_an_equals_sign_are_carried_as_written():
    profile = check_profile(
        B + 'services:\n  chat: {model: a/b, listen: 8040, runtime: docker, image: rocm/vllm, env: {A: "x=y=z"}}\n'
    )
    assert profile.services[0].env == (("A", "x=y=z"),)


@pytest.mark.parametrize(
    "value,words",
    [
        ("[relative.env]", "is not a plain absolute path"),
        ("[/etc/mipart/a.env, /etc/mipart/a.env]", "lists '/etc/mipart/a.env' more than once"),
        ("/etc/mipart/a.env", "must be a list of absolute paths"),
    ],
)
def test_env_files_are_absolute_paths_listed_once(value, words):
    [line] = problems(B + f"services:\n  chat: {{model: a/b, listen: 8040, env_files: {value}}}\n")
    assert "services.chat.env_files" in line and words in line, line


def test_env_files_reach_the_spec_as_paths():
    profile = check_profile(
        B + "services:\n  chat: {model: a/b, listen: 8040, env_files: [/etc/mipart/secrets/chat.env]}\n"
    )
    assert profile.services[0].env_files == ("/etc/mipart/secrets/chat.env",)


# -- the API ------------------------------------------------------------------------------------


def api(listen: str):
    return check_profile(B + f"api: {{listen: {json.dumps(listen)}}}\n").api.listen


def test_a_bare_api_port_means_loopback():
    assert api("8049") == "127.0.0.1:8049"
    assert api("0.0.0.0:8049") == "0.0.0.0:8049"  # every address only when written out
    assert api("[::1]:8049") == "[::1]:8049"


def test_an_api_socket_must_stay_under_the_run_dir():
    [line] = problems(B + 'api: {listen: "unix:/run/mipart/../../etc/x.sock"}\n')
    assert (
        "api.listen socket '/run/mipart/../../etc/x.sock' is not a plain absolute path: it has a '.' or '..' component"
        in line
    )
    [line] = problems(B + 'api: {listen: "unix:/tmp/api.sock"}\n')
    assert "must be a plain path under /run/mipart/" in line


def test_an_api_socket_behind_a_symbolic_link_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "ok").mkdir(parents=True)
    (run / "out").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setattr(addresses, "API_SOCKET_DIR", f"{run}/")
    assert addresses.parse_api_listen(f"unix:{run}/ok/api.sock") == (f"unix:{run}/ok/api.sock", "")
    value, error = addresses.parse_api_listen(f"unix:{run}/out/api.sock")
    assert (
        value is None
        and "through a symbolic link, outside" in error
        and error.endswith(f"give a path under {run}/ without links")
    )


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
    ],
)
def test_loopback_addresses(host, loopback):
    assert addresses.is_loopback(host) is loopback


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))

    error = info = warning


class Source:
    def __init__(self):
        self.log = Log()


def _start_and_stop(source, listen: str) -> None:
    from mipart.api.server import start_api

    async def run():
        runner = await start_api(source, listen)
        await runner.cleanup()

    asyncio.run(run())


def test_the_agent_warns_when_its_api_is_not_on_loopback(monkeypatch):
    from mipart.api import server
    from mipart.sim.ports import free_block

    quiet = Source()
    _start_and_stop(quiet, f"127.0.0.1:{free_block(1, low=24000)}")
    assert [e for e, _ in quiet.log.lines] == []
    # Tests bind loopback only: the address is taken as if it were another interface's.
    monkeypatch.setattr(server, "is_loopback", lambda host: False)
    loud = Source()
    _start_and_stop(loud, f"127.0.0.1:{free_block(1, low=24000)}")
    [(event, fields)] = loud.log.lines
    assert event == "api.exposed" and "not a loopback address" in fields["reason"]


def test_the_agent_refuses_an_api_socket_directory_that_is_a_symbolic_link(tmp_path):
    from mipart.errors import UserError

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is a symbolic link to .*elsewhere; remove the link"):
        _start_and_stop(Source(), f"unix:{tmp_path}/run/api.sock")
    assert not (tmp_path / "elsewhere/api.sock").exists()
