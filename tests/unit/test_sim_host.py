"""The simulated-host harness's parts: its ports, the profiles it writes, how it reads the status API
(mipart.sim.host), and the demo's progress line."""

from __future__ import annotations

import re

import pytest
import statuses
from answering import Answering

from mipart.api.contract import Instances, to_json_text
from mipart.api.reader import ContractError
from mipart.profile.load import check_profile
from mipart.sim.demo import ready_printer
from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost


def test_ports_are_the_api_then_the_listener_and_instances_need_none():
    ports = Ports.free(low=20000)
    assert ports.listen == ports.api + 1 and ports.all() == [ports.api, ports.listen]
    assert "base_port" not in FakeEngineProfile(ports).text()  # instances listen on unix sockets


def test_the_fake_engine_profile_is_one_the_agent_accepts():
    ports = Ports(api=20000, listen=20001)
    plain = check_profile(FakeEngineProfile(ports).text())
    [chat] = plain.services
    assert (chat.name, chat.model, str(chat.listen), chat.partitions) == (
        "chat",
        "test/fake-llm",
        "127.0.0.1:20001",
        None,
    )
    assert chat.command[1:3] == ("-m", "mipart.sim.engine") and chat.args == ()
    assert (plain.instances.user, plain.api.listen, plain.health.restart_backoff) == ("root", "127.0.0.1:20000", 0.2)
    bench = check_profile(
        FakeEngineProfile(
            ports, partitions='"0-7"', args=None, hf_home="/tmp/bench/hf", compute="CPX", memory="NPS4"
        ).text()
    )
    assert bench.services[0].partitions == tuple(range(8)) and bench.instances.hf_home == "/tmp/bench/hf"


def test_more_services_and_their_fields_are_written_as_data():
    """What the serving tests give as `services` reaches the agent as written: a field of `chat`
    replaces the harness's own, another name is a service of its own."""
    services = {
        "chat": {"args": ["--max-tokens-default", "4"], "routing": {"affinity": {"header": "X-Session-Id"}}},
        "other": {"model": "a/b", "listen": "127.0.0.1:20100", "partitions": [0]},
    }
    ports = Ports(api=20000, listen=20001)
    text = FakeEngineProfile(ports, partitions='"1-3"', max_restarts=3, services=services).text()
    assert text.count("    args:") == 1
    profile = check_profile(text)
    chat, other = profile.services
    assert chat.args == ("--max-tokens-default", "4") and chat.partitions == (1, 2, 3)
    assert str(chat.routing) == "affinity on X-Session-Id (hash consistent)"
    assert (other.name, other.model, str(other.listen), other.partitions) == ("other", "a/b", "127.0.0.1:20100", (0,))
    assert profile.health.max_restarts == 3


def test_the_lines_hostile_profile_tests_edit_are_spelled_as_they_expect():
    """tests/nginx/test_agent_input.py turns these lines into YAML no data can spell (tags, dates,
    unclosed nesting); they must stay as they are."""
    text = FakeEngineProfile(Ports(api=20000, listen=20001)).text()
    for anchor in ("    model: test/fake-llm\n", "    args: []\n"):
        assert anchor in text, anchor


def test_the_harness_reads_the_status_api_by_its_types(tmp_path):
    with Answering() as server:
        host = SimulatedHost(tmp_path, FakeEngineProfile(Ports(api=server.port, listen=20001)))
        try:
            assert (host.api_counts(), host.api_ready()) == (None, None)  # a 404 page: not answering yet
            planned = statuses.counts(total=32, ready=16, starting=16)
            server.answer("/v1/status", to_json_text(statuses.status(instances=planned)))
            server.answer(
                "/v1/instances", to_json_text(Instances((statuses.instance(0), statuses.instance(1, "starting"))))
            )
            assert (host.api_counts(), host.api_ready()) == (planned, 1)
            server.answer("/v1/status", '{"api_version": 1}')  # a shape the harness does not know is a bug: said
            with pytest.raises(
                ContractError, match=r"^/v1/status: api_version 1, but this mipart reads api_version 2$"
            ):
                host.api_counts()
        finally:
            host.close()  # its run and serving dirs under /tmp go with it


def test_the_demo_counts_ready_against_what_is_planned_now(capsys):
    """After a live repartition 16 -> 32 the line says 16/32, then 32/32 (it said 32/16)."""
    answers = iter(
        [
            None,
            statuses.counts(total=16, ready=16),
            statuses.counts(total=16, ready=16),
            statuses.counts(total=32, ready=15, degraded=1, starting=16),
            statuses.counts(total=32, ready=32),
        ]
    )

    class Host:
        def api_counts(self):
            return next(answers)

    show = ready_printer(Host())
    for _ in range(5):
        show()
    lines = capsys.readouterr().out.splitlines()
    shown = [re.fullmatch(r"  \d\d:\d\d:\d\d (.*) \(\+\d+\.\ds\)", line).group(1) for line in lines]
    assert shown == [
        "status API not answering",
        "16/16 instances ready",
        "16/32 instances ready",
        "32/32 instances ready",
    ]
