"""Waiting for full serving after a reload: read from the agent's status API, then proven by one request per listener.

Full serving is: the profile the sweep expects is in force (its digest), no repartition runs,
the host matches that profile's gpus: (no drift), every planned instance is in rotation, and
one completion through each service's listener answers 200. The status's partition facts are
cached for about a second (api.server.HostCache) and may predate the reload, so each GPU's
wanted modes must be the expected profile's too, not only `matches`.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from mipart.api.contract import Status
from mipart.bench import tags
from mipart.errors import UserError
from mipart.profile.schema import Profile, ServiceSpec

POLL = 0.5
AGENT_SILENCE = 30.0  # the API keeps answering through a repartition; longer silence means the agent is gone

ReadStatus = Callable[[], Status]  # the agent's /v1/status; UserError when it does not answer


@dataclass(frozen=True)
class Before:
    """What the status said before the reload, so an old error is not taken for a new one."""

    repartition_finished: str | None
    profile_error: str

    @classmethod
    def of(cls, status: Status) -> Before:
        return cls(status.repartition.finished, status.profile_error)


def waiting_for(status: Status, profile: Profile) -> str:
    """What full serving on `profile` still waits for; "" once it is there."""
    if status.profile.digest != profile.digest:
        return f"the agent to run profile {profile.digest[:12]}"
    if status.repartition.phase:
        return f"repartitioning: {status.repartition.phase}"
    partition = status.partition
    wanted = all(
        (g.compute_want, g.memory_want) == (profile.gpus.compute_for(g.index), profile.gpus.memory)
        for g in partition.gpus
    )
    if partition.drift or partition.matches is not True or not wanted:
        return "the partitions to match the profile's gpus:"
    counts = status.instances
    if not counts.total or counts.in_rotation < counts.total:
        return f"instances: {counts.in_rotation}/{counts.total} ready"
    return ""


def failed(status: Status, digest: str, before: Before) -> str:
    """Why waiting is pointless (the agent refused the profile, the repartition failed, nothing fits); "" while it is
    not."""
    repartition, ours = status.repartition, status.profile.digest == digest
    if repartition.error and not repartition.phase and repartition.finished != before.repartition_finished:
        return f"the repartition failed: {repartition.error}"
    if not ours and status.profile_error and status.profile_error != before.profile_error:
        return f"the agent refused the profile: {status.profile_error}"
    if ours and not repartition.phase and status.reconcile.error:
        return f"the agent cannot place the instances: {status.reconcile.error}"
    return ""


def wait_status(read: ReadStatus, profile: Profile, before: Before, timeout: float, say) -> None:
    """Until the status shows full serving on `profile`; UserError naming what it still waited for."""
    deadline, silent_since, said = time.monotonic() + timeout, None, ""
    while True:
        try:
            status, silent_since = read(), None
        except UserError:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > AGENT_SILENCE:
                raise
            status = None
        if status is not None:
            problem = failed(status, profile.digest, before)
            if problem:
                raise UserError(problem)
            what = waiting_for(status, profile)
            if not what:
                return
            if what != said:
                say(f"mipart: waiting for {what}")
                said = what
        if time.monotonic() > deadline:
            raise UserError(
                f"full serving did not come within {timeout:g}s: still waiting for {said or 'the agent to answer'}; "
                "see `mipart status`"
            )
        time.sleep(POLL)


def one_request(service: ServiceSpec, timeout: float = 30.0) -> int | None:
    """The status of one short completion through the service's listener; None when nothing answers."""
    host, port = tags.client_address(service.listen)
    body = json.dumps({"model": service.model_name, "prompt": "hi", "max_tokens": 1})
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    return response.status


def wait_listeners(services: list[ServiceSpec], timeout: float) -> None:
    """One 200 through every listener (nginx may still be switching to the new config)."""
    deadline = time.monotonic() + timeout
    for service in services:
        while (code := one_request(service)) != 200:
            if time.monotonic() > deadline:
                raise UserError(
                    f"service {service.name}: a completion through {service.listen} answered {code or 'nothing'}; see "
                    "`mipart status`"
                )
            time.sleep(POLL)


def wait_full_serving(
    read: ReadStatus, profile: Profile, before: Before, services: list[ServiceSpec], timeout: float, say
) -> None:
    started = time.monotonic()
    wait_status(read, profile, before, timeout, say)
    wait_listeners(services, max(30.0, timeout - (time.monotonic() - started)))
