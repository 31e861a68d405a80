"""Total validation: each input once observed to crash, hang or slip through `mipart validate`
(issue 8), and the class each belongs to, across every position of that type."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import mipart
from gpus import logical_gpus

from mipart.nginx.conf import render_nginx
from mipart.profile.load import check_profile
from mipart.profile.problems import ProfileError
from mipart.profile.source import MAX_BYTES
from mipart.serving.instances import plan_instances

B = "version: 1\ngpus: {compute: DPX, memory: NPS2}\n"


def problems(text: str) -> list[str]:
    """The problem lines of a profile, without the path; [] when it is valid."""
    try:
        check_profile(text, "p")
    except ProfileError as exc:
        lines = str(exc).splitlines()
        assert all(line.startswith("p:") for line in lines), lines
        return [line[2:] for line in lines]
    return []


def service(fields: str) -> str:
    return B + "services:\n  chat: {" + fields + "}\n"


# -- the catalogue ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,expected",
    [
        ("model: a/b, listen: 8040, args: [null]", "4:43: services.chat.args[0] is empty; give a string"),
        ("model: , listen: 8040", "4:17: services.chat.model is empty; give a model"),
        ("model: a/b, listen: ", "4:30: services.chat.listen is empty; give a port or host:port"),
        (
            "model: a/b, listen: 8040, runtime: docker, image: ",
            "4:60: services.chat.image is empty; give an image reference",
        ),
        (
            "model: a/b, listen: 8040, served_model_name: 3.10",
            '4:55: services.chat.served_model_name 3.10 would be read by YAML as a number (3.1); write it in quotes: "3.10"',
        ),
        (
            "model: a/b, listen: 8040, args: [--seed, 010]",
            '4:51: services.chat.args[1] 010 would be read by YAML as a number (8); write it in quotes: "010"',
        ),
        (
            'model: a/b, listen: "unix:rel.sock"',
            "4:30: services.chat.listen socket unix:rel.sock is relative, and nginx would read it against its own prefix directory; "
            "give an absolute path, e.g. unix:/run/NAME.sock",
        ),
        (
            'model: a/b, listen: "٨٠٤٠"',
            "4:30: services.chat.listen '٨٠٤٠' is not a port or host:port; e.g. 8040 or 127.0.0.1:8040",
        ),
        ('model: a/b, listen: "127.0.0.1:٨٠٤٠"', "4:30: services.chat.listen port '٨٠٤٠' is not a number; use 1-65535"),
    ],
)
def test_catalogue_values_get_their_line(fields, expected):
    assert problems(service(fields)) == [expected]


def test_an_env_value_over_the_kernels_argument_limit_is_refused_and_one_at_it_is_taken():
    at_limit = "x" * (131072 - len("A=") - 1)  # KEY=value and its NUL: MAX_ARG_STRLEN
    assert problems(service(f'model: a/b, listen: 8040, env: {{A: "{at_limit}"}}')) == []
    [line] = problems(service(f'model: a/b, listen: 8040, env: {{A: "{at_limit}x"}}'))
    assert "services.chat.env.A makes a 131073-byte KEY=value entry" in line and "MAX_ARG_STRLEN" in line
    [line] = problems(service('model: a/b, listen: 8040, env: {A: "' + "x" * 140000 + '"}'))
    assert "MAX_ARG_STRLEN" in line
    assert problems(service(f'model: a/b, listen: 8040, args: ["{at_limit}xx"]')) == []  # 131071 bytes and a NUL
    [line] = problems(service(f'model: a/b, listen: 8040, args: ["{at_limit}xxx"]'))
    assert "services.chat.args[0] is 131072 bytes" in line


def test_a_400_digit_duration_is_refused():
    [line] = problems(B + "health: {interval: " + "9" * 400 + "s}\n")
    assert line.startswith("3:20: health.interval is '9999") and line.endswith("far too long; use at most 1h")


def test_sub_second_timeouts_render_exactly():
    profile = check_profile(service('model: a/b, listen: "127.0.0.1:8040", request_timeout: 500ms'))
    conf = render_nginx(profile, plan_instances(profile, logical_gpus("DPX")), frozenset(), Path("/run/mipart/nginx"))
    assert "proxy_read_timeout 500ms;" in conf and "proxy_send_timeout 500ms;" in conf
    assert "worker_shutdown_timeout 500ms;" in conf and " 0s;" not in conf
    profile = check_profile(service("model: a/b, listen: 8040, request_timeout: 1.5s"))
    assert profile.services[0].request_timeout == 1.5
    assert "proxy_read_timeout 1500ms;" in render_nginx(profile, (), frozenset(), Path("/x"))


@pytest.mark.parametrize(
    "shape", ["[" * 5000, "[" * 100_000, "- " * 100_000 + "x", "{a: " * 100_000, "? " * 100_000 + "x"]
)
def test_deep_nesting_is_one_line_not_a_crash(shape):
    [line] = problems(B + "x:\n  " + shape + "\n")
    assert "nested more than 16 levels deep" in line


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "big", "deep"])
def test_unusual_files_get_one_line_in_bounded_time(tmp_path, kind):
    path = tmp_path / "p.yaml"
    expected = {
        "fifo": "is a FIFO (named pipe), not a regular file",
        "dev-zero": "is a character device, not a regular file",
        "big": "is larger than 1024 KiB",
        "deep": "nested more than",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "big":
        path.write_text(B + "#" * MAX_BYTES + "\n")
    else:
        path.write_text(B + "services: " + "[" * 200_000 + "\n")
    done = mipart("validate", path, timeout=30)  # a hang fails here, on the timeout
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"{path}") and expected in line, line


# -- the classes, in every position of their type ------------------------------------------------

STRING_FIELDS = ["model", "served_model_name", "image", "args[0]", "command[0]", "env.A"]


def with_value(field: str, raw: str) -> str:
    values = {"model": "a/b", "listen": "8040", "runtime": "docker", "image": "rocm/vllm:latest"}
    if field.endswith("[0]"):
        values[field[:-3]] = f"[{raw}]"
    elif field == "env.A":
        values["env"] = "{A: " + raw + "}"
    else:
        values[field] = raw
    return service(", ".join(f"{k}: {v}" for k, v in values.items()))


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize(
    "raw,read_as",
    [
        ("yes", "a boolean (true)"),
        ("off", "a boolean (false)"),
        ("0x1F", "a number (31)"),
        ("1:30", "a number (90)"),
        ("1_000", "a number (1000)"),
        ("0.50", "a number (0.5)"),
        ("2001-12-14", "a date (2001-12-14)"),
        (".inf", "a number (inf)"),
    ],
)
def test_values_yaml_would_coerce_in_string_positions_say_to_quote_them(field, raw, read_as):
    [line] = problems(with_value(field, raw))
    assert f'services.chat.{field} {raw} would be read by YAML as {read_as}; write it in quotes: "{raw}"' in line


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("raw", ["", "~", "null", "''", '""'])
def test_empty_values_in_string_positions_are_errors(field, raw):
    if field.endswith("[0]") and raw == "":
        raw = "~"  # [] is an empty list, not an empty item
    [line] = problems(with_value(field, raw))
    assert f"services.chat.{field} is empty" in line


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("raw", ["!!binary aGk=", "!foo bar", '!!int "5"', "!!int abc", "2001-13-45", "9" * 5000])
def test_tags_and_values_yaml_cannot_build_are_one_line(field, raw):
    [line] = problems(with_value(field, raw))
    assert line.split(": ", 1)[1].startswith(f"services.chat.{field} ")


@pytest.mark.parametrize(
    "where,template",
    [
        ("services.chat.tensor_parallel", "model: a/b, listen: 8040, tensor_parallel: {}"),
        ("services.chat.max_concurrency", "model: a/b, listen: 8040, max_concurrency: {}"),
        ("instances.base_port", None),
        ("health.max_restarts", None),
        ("version", None),
    ],
)
@pytest.mark.parametrize(
    "raw", ["010", "0x10", "0o10", "1:30", "1_0", "+5", "yes", "'5'", "5.0", "٣", "9" * 5000, "2001-13-45", ""]
)
def test_numbers_are_plain_decimal_digits_everywhere(where, template, raw):
    if template:
        text = service(template.format(raw))
    elif where == "version":
        text = f"version: {raw}\n"
    else:
        section, key = where.split(".")
        text = f"version: 1\n{section}: {{{key}: {raw}}}\n"
    lines = problems(text)
    assert lines and any(f"{where} " in line for line in lines), lines


def test_yaml_numbers_that_print_back_as_written_are_taken_as_strings():
    profile = check_profile(
        service("model: a/b, listen: 8040, args: [--max-num-seqs, 512, --gpu-memory-utilization, 0.9], env: {A: 1}")
    )
    assert profile.services[0].args == ("--max-num-seqs", "512", "--gpu-memory-utilization", "0.9")
    assert profile.services[0].env == (("A", "1"),) and profile.services[0].max_concurrency == 512


@pytest.mark.parametrize(
    "key,raw,words",
    [
        ("interval", "0.5ms", "not a whole number of milliseconds"),
        ("interval", "2h", "use at most 1h"),
        ("interval", "0s", "longer than zero"),
        ("startup_timeout", "500ms", "use at least 1s"),
        ("startup_timeout", "2d", "use at most 1d"),
        ("timeout", "٣s", "write a duration"),
        ("restart_backoff_max", "1.0000000000000001s", "far too long"),
    ],
)
def test_durations_have_bounds(key, raw, words):
    [line] = problems(f"version: 1\nhealth: {{{key}: {raw}}}\n")
    assert f"health.{key}" in line and words in line, line


@pytest.mark.parametrize(
    "listen,words",
    [
        ('"[::1]:8040"', None),
        ('"*:8040"', None),
        ('"localhost:8040"', None),
        ('"unix:/run/mipart/chat.sock"', None),
        ('"::1:8040"', "put it in brackets"),
        ('"[fe80::1%eth0]:8040"', "is not an IPv6 address"),
        ('"[zz]:8040"', "is not an IPv6 address"),
        ('"example.com:8040"', "is not an IP address"),
        ('"127.0.0.01:8040"', "is not an IP address"),
        ('"1.2.3:8040"', "is not an IP address"),
        ('"127.0.0.1:08040"', "has a leading zero"),
        ('"127.0.0.1:0"', "out of range"),
        ('"127.0.0.1:"', "is not a number"),
        ('"unix:/run/' + "x" * 100 + '.sock"', "a unix socket path has at most 107"),
        ('"unix:/run/../x.sock"', "not a plain absolute path"),
        ("1:30", "is not an IP address"),
    ],
)
def test_listen_addresses_are_read_the_way_nginx_reads_them(listen, words):
    lines = problems(service(f"model: a/b, listen: {listen}"))
    assert (lines == []) if words is None else (len(lines) == 1 and words in lines[0]), lines


def test_two_services_without_their_own_partitions_are_refused():
    text = (
        B + "services:\n  a: {model: a/b, listen: 8040, partitions: }\n  b: {model: a/c, listen: 8041, partitions: }\n"
    )
    assert [line.split(": ", 1)[1] for line in problems(text)] == [
        'services.a.partitions is empty; give all, a list like [0, 1], or a range like "0-7" of logical GPU indices',
        'services.b.partitions is empty; give all, a list like [0, 1], or a range like "0-7" of logical GPU indices',
    ]
    text = B + "services:\n  a: {model: a/b, listen: 8040}\n  b: {model: a/c, listen: 8041}\n"
    assert "services.b.partitions is all but service a also needs partitions" in problems(text)[0]
    lines = problems(B + "services:\n  a: {model: a/b, listen: 8040}\n  b: {}\n")  # b has no value node to point at
    assert [line.split(": ", 1)[0] for line in lines] == [
        "5:3",
        "5:6",
        "5:6",
    ] and "services.b.partitions is all" in lines[0]


def test_logical_gpus_past_the_instance_ports_and_lists_too_long_are_refused():
    # 72 slots: 8 per GPU, at most 9 partitionable GPUs a host (gpu.modes)
    assert "goes past 71" in problems(service('model: a/b, listen: 8040, partitions: "0-72"'))[0]
    assert "use a number from 0 to 71" in problems(service("model: a/b, listen: 8040, partitions: [72]"))[0]
    assert (
        "more than the 1024 physical GPUs"
        in problems(B.replace("}", ', select: "' + ",".join(["0-1023"] * 2000) + '"}'))[0]
    )


@pytest.mark.parametrize(
    "fields,words",
    [
        ("model: a/b, listen: 8040, env: {MIPART_INSTANCE: '3'}", "is reserved"),
        ('model: a/b, listen: 8040, runtime: docker, image: "a:b:c"', "is not an image reference"),
        ("model: a/b, listen: 8040, runtime: docker, image: UPPER/x", "is not an image reference"),
    ],
)
def test_values_that_would_misfire_at_run_time(fields, words):
    [line] = problems(service(fields))
    assert words in line
    [line] = problems(B + "instances: {hf_home: '/data:/etc'}\n")
    assert "is not a plain absolute path" in line
    [line] = problems(B + "health: {max_restarts: 5000}\n")
    assert "use a number from 1 to 1000" in line
    assert problems("version: 1\ninstances: {base_port: 8000}\n") == []  # unused: instances listen on sockets


def test_a_flood_of_problems_is_capped_with_a_last_line_saying_how_many_more():
    lines = problems(B + "services:\n" + "".join(f"  s{i}: {{model: , listen: 8040}}\n" for i in range(300)))
    assert len(lines) == 101 and lines[-1].endswith("more problems from here on; fix the ones above first")


def test_validate_of_a_hostile_file_stays_fast(tmp_path):
    """A 1 MiB file of repeated aliases and ranges: answered, in bounded time (the subprocess timeout)."""
    path = tmp_path / "p.yaml"
    body = B + 'x: &r "0-1023"\ngpus2: [' + ", ".join(["*r"] * 100_000) + "]\n"
    path.write_text(body[: MAX_BYTES - 10])
    done = mipart("validate", path, timeout=30)
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_status_api_option_with_a_non_ascii_port_is_one_line():
    done = subprocess.run(
        [os.sys.executable, "-m", "mipart", "status", "--api", "127.0.0.1:²"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "agent")},
    )
    assert (
        done.returncode == 1
        and done.stderr.strip() == "mipart: --api 127.0.0.1:²: port ² is not a port; use 1-65535, e.g. 127.0.0.1:8049"
    )
