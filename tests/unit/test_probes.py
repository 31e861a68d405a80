"""The probe registry (mipart.health.probes) on a stand-in HTTP session: results, order, error words."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from responses import Response
from specs import spec

from mipart.health.endpoint import HealthEndpoint
from mipart.health.generation import GenerationCheck
from mipart.health.gpu_errors import GpuErrors
from mipart.health.probe import PASSED, ProbeResult
from mipart.health.probes import PROBES, probe
from mipart.health.progress import SERIES, TokenProgress
from mipart.health.queue import QueueDepth
from mipart.profile.schema import HealthSpec
from mipart.unixhttp import HttpError

SPEC = replace(spec(3), model="m", served_model_name="m", argv=())
HEALTH = HealthSpec(timeout=1.0)


class Session:
    """Answers GETs from a list per path: a Response, or an exception to raise. The progress probe's
    series are answered with no request running unless `progress` says otherwise."""

    def __init__(self, progress=(Response(200, "vllm:num_requests_running 0\n"),), **answers):
        self.answers = {"/" + path: list(items) for path, items in answers.items()}
        self.answers[SERIES] = list(progress)
        self.asked: list[str] = []

    async def get(self, socket: str, path: str, timeout: float, limit: int = 0):
        assert socket == SPEC.socket
        self.asked.append(path)
        answer = self.answers[path].pop(0) if len(self.answers[path]) > 1 else self.answers[path][0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def run(session, health=HEALTH, probes=None) -> ProbeResult:
    """One probe round with fresh probes (the agent's keep what they read: the progress probe's last read)."""
    return asyncio.run(probe(session, SPEC, health, probes or tuple(type(p)() for p in PROBES)))


def test_the_registry_runs_the_gpu_errors_health_endpoint_progress_generation_then_the_queue_depth():
    assert [p.name for p in PROBES] == ["gpu_errors", "health", "progress", "generation", "queue_depth"]
    assert isinstance(PROBES[0], GpuErrors) and isinstance(PROBES[1], HealthEndpoint)
    assert isinstance(PROBES[2], TokenProgress) and isinstance(PROBES[3], GenerationCheck)
    assert isinstance(PROBES[4], QueueDepth)


def test_healthy_without_a_queue_limit_reads_only_the_progress_series():
    session = Session(health=[Response(200)])
    assert run(session) == ProbeResult(True, "")
    assert session.asked == ["/health", SERIES]


def test_a_refusal_stops_the_round():
    session = Session(health=[Response(503)], metrics=[Response(200, "vllm:num_requests_waiting 99\n")])
    assert run(session, HealthSpec(queue_depth_limit=10)) == ProbeResult(False, "/health answered 503")
    assert session.asked == ["/health"]


def test_queue_depth_over_the_limit_is_a_warning():
    metrics = 'vllm:num_requests_waiting{model_name="a"} 7.0\nvllm:num_requests_waiting{model_name="b"} 5.0\n'
    session = Session(health=[Response(200)], metrics=[Response(200, metrics)])
    assert run(session, HealthSpec(queue_depth_limit=10)) == ProbeResult(
        True, "12 requests waiting > health.queue_depth_limit 10"
    )
    session = Session(health=[Response(200)], metrics=[Response(200, metrics)])
    assert run(session, HealthSpec(queue_depth_limit=12)) == ProbeResult(True, "")


@pytest.mark.parametrize(
    "error, words",
    [
        (asyncio.TimeoutError(), "/health did not answer within 1s"),
        (ConnectionRefusedError(), "/health failed: ConnectionRefusedError"),
        (FileNotFoundError(), "/health failed: FileNotFoundError"),  # no socket yet
        (
            HttpError("an answer over the 65536 bytes this reader takes"),
            "/health failed: an answer over the 65536 bytes this reader takes",
        ),
    ],
)
def test_a_server_that_does_not_answer(error, words):
    assert run(Session(health=[error])) == ProbeResult(False, words)
    # the same words when it stops answering on /metrics: it is the same server
    assert run(
        Session(health=[Response(200)], metrics=[error]), HealthSpec(timeout=1.0, queue_depth_limit=5)
    ) == ProbeResult(False, words)
    slow = isinstance(error, asyncio.TimeoutError)  # after /health 200: slow, not hung; no verdict
    assert run(Session(progress=[error], health=[Response(200)])) == (PASSED if slow else ProbeResult(False, words))


def test_a_new_probe_slots_in_and_the_first_warning_is_kept():
    class Warns:
        name = "warns"

        def __init__(self, words):
            self.words = words

        async def check(self, session, spec, health):
            return ProbeResult(True, self.words)

    class Fails:
        name = "fails"

        async def check(self, session, spec, health):
            return ProbeResult(False, "ras: uncorrectable errors")

    session = Session(health=[Response(200)])
    assert run(session, probes=(*PROBES, Warns("first"), Warns("second"))) == ProbeResult(True, "first")
    assert run(session, probes=(*PROBES, Warns("first"), Fails())) == ProbeResult(False, "ras: uncorrectable errors")
