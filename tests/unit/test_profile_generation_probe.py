"""services.NAME.health.generation_probe in the profile: read per service, refused in one located line."""

from __future__ import annotations

import pytest

from mipart.profile.load import check_profile
from mipart.profile.problems import ProfileError
from mipart.profile.schema import GenerationProbe

BASE = """\
version: 1
services:
  chat:
    model: org/m
    listen: 8040
    partitions: [0]
{health}  other: {{model: org/n, listen: 8041, partitions: [1]}}
"""


def profile(health: str):
    return check_profile(BASE.format(health=health))


def test_a_service_without_it_has_no_generation_probe():
    p = profile("")
    assert p.health.generation_probes == () and p.health.generation_probe("chat") is None
    assert all(s.generation_probe is None for s in p.services)


def test_the_probe_is_per_service_with_defaults():
    p = profile("    health: {generation_probe: {idle: 45s}}\n")
    assert p.health.generation_probe("chat") == GenerationProbe(idle=45.0, timeout=10.0)
    assert p.health.generation_probe("other") is None
    p = profile("    health:\n      generation_probe: {idle: 500ms, timeout: 2s}\n")
    assert p.services[0].generation_probe == GenerationProbe(idle=0.5, timeout=2.0)
    assert profile("    health: {generation_probe: {}}\n").health.generation_probe("chat") == GenerationProbe()


@pytest.mark.parametrize(
    "health, line",
    [
        (
            "    health: {generation_probe: {idle: 30}}\n",
            "7:39: services.chat.health.generation_probe.idle is '30'; write a duration with a unit",
        ),
        (
            "    health: {generation_probe: {idle: 10ms}}\n",
            "7:39: services.chat.health.generation_probe.idle is 10ms; use at least 100ms",
        ),
        (
            "    health: {generation_probe: {idel: 30s}}\n",
            "7:33: unknown key services.chat.health.generation_probe.idel; did you mean 'idle'?",
        ),
        (
            "    health: {generation: {idle: 30s}}\n",
            "7:14: unknown key services.chat.health.generation; did you mean 'generation_probe'?",
        ),
        ("    health: [generation_probe]\n", "7:13: services.chat.health must be a mapping"),
    ],
)
def test_a_bad_generation_probe_is_one_located_line(health, line):
    with pytest.raises(ProfileError) as caught:
        profile(health)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"<profile>:{line}"), lines
