"""`mipart validate`: every bad profile gets its exact one-line error, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest
from conftest import REPO, mipart

GOOD = """\
version: 1
gpus: {compute: DPX, memory: NPS2}
services:
  chat: {model: org/model, listen: 8040, runtime: docker, image: rocm/vllm:latest}
"""

# (name, profile text, the exact stderr line after "PATH:")
BAD = [
    ("unknown-key", "version: 1\ngpus:\n  computer: DPX\n", "3:3: unknown key gpus.computer; did you mean 'compute'?"),
    ("top-level-typo", "version: 1\nservice: {}\n", "2:1: unknown key profile.service; did you mean 'services'?"),
    ("missing-version", "gpus: {compute: SPX}\n", "1:1: profile is missing required key 'version'; add it"),
    ("bad-version", "version: 3\n", "1:10: unsupported version 3; this mipart reads version: 1"),
    (
        "compute-enum",
        "version: 1\ngpus: {compute: XPX}\n",
        "2:17: gpus.compute is 'XPX'; use one of SPX, DPX, TPX, QPX, CPX",
    ),
    ("compute-case", "version: 1\ngpus: {compute: dpx}\n", "2:17: gpus.compute is 'dpx'; did you mean 'DPX'?"),
    ("memory-enum", "version: 1\ngpus: {memory: NPS3}\n", "2:16: gpus.memory is 'NPS3'; use one of NPS1, NPS2, NPS4"),
    (
        "mode-pair",
        "version: 1\ngpus: {compute: SPX, memory: NPS4}\n",
        "2:17: gpus.compute SPX cannot run under memory mode NPS4 (the driver rejects it); SPX needs NPS1",
    ),
    # Kernels differ on DPX+NPS4 (docs/partitioning.md), so validate refuses only what none runs: SPX with NPS > 1.
    (
        "override-conflicts-memory",
        "version: 1\ngpus:\n  memory: NPS4\n  overrides: [{select: [6], compute: SPX}]\n",
        "4:38: gpus.overrides[0].compute SPX conflicts with the hive-wide gpus.memory NPS4; SPX needs NPS1, and memory mode is the same for every GPU",
    ),
    (
        "duration-no-unit",
        "version: 1\nhealth: {interval: 2}\n",
        "2:20: health.interval is '2'; write a duration with a unit, e.g. 2s, 500ms, 5m",
    ),
    (
        "duration-word",
        "version: 1\nhealth: {timeout: soon}\n",
        "2:19: health.timeout is 'soon'; write a duration with a unit, e.g. 2s, 500ms, 5m",
    ),
    (
        "port-range",
        "version: 1\nservices:\n  chat: {model: a/b, listen: 70000}\n",
        "3:30: services.chat.listen port 70000 is out of range; use 1-65535",
    ),
    (
        "duplicate-ports",
        "version: 1\nservices:\n  a: {model: a/b, listen: 8040, partitions: [0]}\n  b: {model: a/c, listen: 8040, partitions: [1]}\n",
        "4:27: services.b.listen port 8040 is already used by services.a.listen; give each listener its own port",
    ),
    (
        "partitions-overlap",
        'version: 1\nservices:\n  a: {model: a/b, listen: 8040, partitions: "0-3"}\n  b: {model: a/c, listen: 8041, partitions: [3, 4]}\n',
        "4:45: services.b.partitions 3 already used by service a; services' partitions must not overlap",
    ),
    (
        "all-and-list",
        "version: 1\nservices:\n  a: {model: a/b, listen: 8040}\n  b: {model: a/c, listen: 8041, partitions: [1]}\n",
        "4:45: services.b.partitions overlaps service a, which takes all partitions; give each service its own list",
    ),
    (
        "tp-divides",
        'version: 1\nservices:\n  a: {model: a/b, listen: 8040, partitions: "0-5", tensor_parallel: 4}\n',
        "3:69: services.a.tensor_parallel 4 does not divide the 6 partitions listed; use a divisor of 6 or list a multiple of 4 partitions",
    ),
    (
        "model-newline",
        'version: 1\nservices:\n  a: {model: "org/m\\nExecStart=/bin/sh", listen: 8040}\n',
        "3:14: services.a.model contains a control character (newline, tab, NUL...); remove it",
    ),
    (
        "model-not-id",
        "version: 1\nservices:\n  a: {model: ../etc/passwd, listen: 8040}\n",
        "3:14: services.a.model '../etc/passwd' is neither a Hugging Face id (org/name) nor an absolute path; e.g. meta-llama/Llama-3.1-8B-Instruct or /models/llama",
    ),
    (
        "args-control",
        'version: 1\nservices:\n  a: {model: a/b, listen: 8040, args: ["--x\\u0000y"]}\n',
        "3:40: services.a.args[0] contains a control character (newline, tab, NUL...); remove it",
    ),
    (
        "env-key",
        'version: 1\nservices:\n  a: {model: a/b, listen: 8040, env: {"A B": x}}\n',
        "3:39: services.a.env key 'A B' is not a variable name; use letters, digits and _, not starting with a digit",
    ),
    (
        "env-visible",
        "version: 1\nservices:\n  a: {model: a/b, listen: 8040, env: {CUDA_VISIBLE_DEVICES: '0'}}\n",
        "3:39: services.a.env.CUDA_VISIBLE_DEVICES is set by mipart for each instance; remove it (choose the variable with visible_devices_env, the cache with instances.hf_home)",
    ),
    (
        "docker-no-image",
        "version: 1\nservices:\n  a: {model: a/b, listen: 8040, runtime: docker}\n",
        "3:42: services.a: runtime docker needs an image; add 'image: rocm/vllm:latest' or use runtime: native",
    ),
    (
        "duplicate-key",
        "version: 1\ngpus:\n  compute: SPX\n  compute: DPX\n",
        "4:3: gpus.compute is given twice; keep one",
    ),
    ("empty", "", "1:1: profile is empty; start it with 'version: 1'"),
    ("not-mapping", "- version: 1\n", "1:1: profile must be a mapping (key: value lines), not a list"),
    (
        "range-backwards",
        'version: 1\ngpus: {select: "7-0"}\n',
        "2:16: gpus.select range '7-0' runs backwards; write it low-high, e.g. \"0-7\"",
    ),
    (
        "bad-service-name",
        "version: 1\nservices:\n  Chat!: {model: a/b, listen: 8040}\n",
        "3:3: service name 'Chat!' is not allowed; use lower-case letters, digits, '-' or '_', starting with a letter (at most 32)",
    ),
    (
        "unit-name",
        'version: 1\ngpus: {client_services: ["a b"]}\n',
        "2:26: gpus.client_services entry 'a b' is not a systemd unit name; e.g. my-inference.service",
    ),
]


def test_good_profile_and_shipped_example_are_valid(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    for target in (path, REPO / "etc/mipart/profile.yaml"):
        done = mipart("validate", target)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_profile_gets_exact_line(tmp_path, name, text, expected):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    done = mipart("validate", path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"{path}:{expected}"]


def test_yaml_syntax_error_points_at_the_spot(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ngpus: {compute: SPX\n")
    done = mipart("validate", path)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()  # the wording after "invalid YAML:" is libyaml's
    assert line.startswith(f"{path}:3:1: invalid YAML: ") and line.endswith("; fix the syntax at this point")


def test_all_problems_are_reported_not_just_the_first(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text(
        textwrap.dedent("""\
        version: 1
        gpus: {compute: SPX, memory: NPS2, selct: all}
        services:
          a: {model: a/b, listen: 99999}
        health: {interval: 2}
    """)
    )
    done = mipart("validate", "--profile", path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{path}:2:17",
        f"{path}:2:36",
        f"{path}:4:27",
        f"{path}:5:20",
    ]


@pytest.mark.parametrize("kind", ["directory", "missing", "binary", "unreadable"])
def test_unusable_files_get_one_line(tmp_path, kind):
    path = tmp_path / "p.yaml"
    expected = {
        "directory": "is a directory; pass the profile file itself, e.g. /etc/mipart/profile.yaml",
        "missing": "no such file; write a profile there or pass --profile PATH",
        "binary": "1:1: not valid UTF-8; save the profile as UTF-8 text",
        "unreadable": "cannot read: permission denied; run as root or make the file readable",
    }[kind]
    command = None
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00version")
    elif kind == "unreadable":
        path.write_text(GOOD)
        path.chmod(0)
        if os.geteuid() == 0:  # root reads anything: drop to nobody, as an operator without sudo would be
            tmp_path.chmod(0o755)
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if command:
        env = {**os.environ, "PYTHONPATH": str(REPO / "agent")}
        done = subprocess.run(
            command + [os.sys.executable, "-m", "mipart", "validate", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    else:
        done = mipart("validate", path)
    assert done.returncode == 1, done.stderr
    sep = ":" if expected[0].isdigit() else ": "
    assert done.stderr.splitlines() == [f"{path}{sep}{expected}"]


def test_json_names_the_digest_the_agent_reports_once_loaded(tmp_path):
    """Fleet tools (the Ansible collection's modules) wait for this digest in /v1/status."""
    from mipart.profile import load_profile

    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    done = mipart("validate", "--json", path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "path": str(path),
        "digest": load_profile(str(path)).digest,
        "services": ["chat"],
    }
    two = GOOD.replace("listen: 8040,", "listen: 8040, partitions: [0],")
    path.write_text(
        two + "  code: {model: o/c, listen: 8041, partitions: [1], runtime: docker, image: rocm/vllm:latest}\n"
    )
    assert json.loads(mipart("validate", "--json", path).stdout)["services"] == ["chat", "code"]
    path.write_text("version: 1\ngpus:\n  computer: DPX\n")
    bad = mipart("validate", "--json", path)
    assert (bad.returncode, bad.stdout) == (1, "")  # problems stay one line each on stderr
    assert bad.stderr.startswith(f"{path}:3:3: unknown key")


def test_usage_errors_exit_2(tmp_path):
    assert mipart("validate", "--no-such-flag").returncode == 2
    assert mipart("validate", "a.yaml", "b.yaml").returncode == 2


def test_default_path_is_etc_mipart(tmp_path):
    done = mipart("validate")
    if os.path.exists("/etc/mipart/profile.yaml"):
        pytest.skip("this host has a real /etc/mipart/profile.yaml")
    assert done.stderr.strip() == "/etc/mipart/profile.yaml: no such file; write a profile there or pass --profile PATH"


def test_fuzzed_inputs_never_traceback(tmp_path):
    """Mangled variants of a good profile: exit 0 or 1 with located lines, never a traceback."""
    import random

    rng = random.Random(1234)
    alphabet = ":{}[]-\n #'\"!&*|>%@`\t0xDPX"
    path = tmp_path / "fuzz.yaml"
    for _ in range(60):
        chars = list(GOOD)
        for _ in range(rng.randint(1, 6)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        path.write_text("".join(chars))
        done = mipart("validate", path)
        assert done.returncode in (0, 1), done.stderr
        assert "Traceback" not in done.stderr
        if done.returncode == 1:
            assert all(line.startswith(f"{path}:") for line in done.stderr.splitlines()), done.stderr
