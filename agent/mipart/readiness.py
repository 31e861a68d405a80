"""The host's readiness for fleet load balancers, and what each service listener answers about it: pure.

Every listener answers `GET /mipart/ready` (names.READY_PATH): 200 while the host serves
normally, 503 with the reason and since when it is drained (`mipart drain`) or a host-wide
change is pending or running, and 503 on a listener whose service has no instance in rotation
(starting after a boot, every instance failed): a balancer sending there would get only 503s.
Only readiness changes: instances keep serving whoever still sends.
docs/routing.md#readiness-for-fleet-load-balancers says why and how balancers use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mipart.api.contract import iso_utc

DRAINED = "drained: "
HOST_WIDE = "host-wide change: "
NO_INSTANCE = "no instance of this service in rotation"


@dataclass(frozen=True)
class ReadyState:
    ready: bool
    reason: str | None = None  # why not ready ("drained: ...", "host-wide change: ..."); None when ready
    since: float | None = None  # wall clock it stopped being ready; None when ready
    drained: bool = False

    def answer(self, service: str) -> tuple[int, str]:
        """(HTTP status, JSON body) a service's listener answers on the readiness path."""
        if self.ready:
            return 200, json.dumps({"ready": True, "service": service})
        body = {"ready": False, "service": service, "reason": self.reason, "since": iso_utc(self.since)}
        return 503, json.dumps(body)

    def of_service(self, serving: bool) -> ReadyState:
        """What one listener answers: the host's state, or not ready when its service has no instance in rotation
        (since when is not the renderer's to know: null)."""
        return self if serving or not self.ready else ReadyState(False, NO_INSTANCE)


READY = ReadyState(True)


def state_of(drained: tuple[str, float] | None, change: tuple[str, float] | None) -> ReadyState:
    """Drained (the operator's reason, since) wins over a host-wide change (why, since): the operator's word stays."""
    if drained is not None:
        return ReadyState(False, DRAINED + drained[0], drained[1], drained=True)
    if change is not None:
        return ReadyState(False, HOST_WIDE + change[0], change[1])
    return READY
