"""The probes run on every instance, in order, and how their results combine.

To add a probe, write a sibling module with a class implementing health.probe.Probe and add
one line to PROBES. The GPU's own errors come first: a faulted GPU needs no HTTP round.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mipart.health.endpoint import HealthEndpoint
from mipart.health.generation import GenerationCheck
from mipart.health.gpu_errors import GpuErrors
from mipart.health.probe import Probe, ProbeResult
from mipart.health.progress import TokenProgress
from mipart.health.queue import QueueDepth
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec
from mipart.unixhttp import HttpError

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient

PROBES: tuple[Probe, ...] = (
    GpuErrors(),
    HealthEndpoint(),
    TokenProgress(),
    GenerationCheck(),
    QueueDepth(),
)


async def probe(
    client: InstanceClient, spec: InstanceSpec, health: HealthSpec, probes: tuple[Probe, ...] = PROBES
) -> ProbeResult:
    """The first failure decides (later probes are not run); else the first warning, if any.

    A server that does not answer is reported in /health's words whichever probe asked:
    it is the same server, and these are the words operators and tests know.
    """
    warning = ""
    for one in probes:
        try:
            result = await one.check(client, spec, health)
        except asyncio.TimeoutError:
            return ProbeResult(False, f"/health did not answer within {health.timeout:g}s")
        except OSError as exc:  # no socket yet, refused: the server is not listening
            return ProbeResult(False, f"/health failed: {exc.__class__.__name__}")
        except HttpError as exc:
            return ProbeResult(False, f"/health failed: {exc}")
        if not result.ok:
            return result
        warning = warning or result.error
    return ProbeResult(True, warning)
