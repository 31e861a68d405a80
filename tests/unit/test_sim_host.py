"""The simulated-host harness's pure parts: its ports and the profiles it writes (mipart.sim.host)."""

from __future__ import annotations

from mipart.profile.load import check_profile
from mipart.sim.host import FakeEngineProfile, Ports


def test_ports_are_one_block_api_listener_then_instances():
    ports = Ports.free(16, low=20000)
    assert (ports.listen, ports.base) == (ports.api + 1, ports.api + 2)
    assert ports.all(16) == list(range(ports.api, ports.api + 18))


def test_the_fake_engine_profile_is_one_the_agent_accepts():
    ports = Ports(api=20000, listen=20001, base=20002)
    plain = check_profile(FakeEngineProfile(ports).text())
    [chat] = plain.services
    assert (chat.name, chat.model, str(chat.listen), chat.partitions) == (
        "chat",
        "test/fake-llm",
        "127.0.0.1:20001",
        None,
    )
    assert chat.command[1:3] == ("-m", "mipart.sim.engine") and chat.args == ()
    assert (plain.instances.base_port, plain.api.listen, plain.health.restart_backoff) == (
        20002,
        "127.0.0.1:20000",
        0.2,
    )
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
    ports = Ports(api=20000, listen=20001, base=20002)
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
    text = FakeEngineProfile(Ports(api=20000, listen=20001, base=20002)).text()
    for anchor in ("    model: test/fake-llm\n", "    args: []\n"):
        assert anchor in text, anchor
