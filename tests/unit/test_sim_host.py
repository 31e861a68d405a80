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


def test_the_lines_serving_tests_edit_are_spelled_as_they_expect():
    """tests/nginx edit the profile text in place; these anchors must stay as they are."""
    text = FakeEngineProfile(Ports(api=20000, listen=20001, base=20002)).text()
    for anchor in (
        "    model: test/fake-llm\n",
        "    args: []\n",
        "instances:",
        "timeout: 300ms",
        "restart_backoff: 200ms",
        '"--tokens-per-second"',
    ):
        assert anchor in text, anchor
