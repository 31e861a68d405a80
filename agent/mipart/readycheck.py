"""Asking the service listeners their readiness as a fleet balancer does: `GET /mipart/ready` through each one.

`mipart drain --wait` and `mipart undrain` wait here until every listener answers what they
asked for, bounded: what balancers see is the proof, not what the agent says it did.
"""

from __future__ import annotations

import http.client
import time

from mipart.api.client import UnixHTTPConnection
from mipart.bench.tags import client_address
from mipart.errors import UserError
from mipart.names import READY_PATH
from mipart.profile.schema import ServiceSpec

POLL = 0.2
TIMEOUT = 2.0
GLIMPSE = 120  # characters of the last answer shown when the wait gives up


def ask(service: ServiceSpec, timeout: float = TIMEOUT) -> tuple[int | None, str]:
    """(status, body) of the readiness path through the service's listener; (None, why) when nothing answers."""
    listen = service.listen
    if listen.path is not None:
        conn: http.client.HTTPConnection = UnixHTTPConnection(listen.path, timeout)
    else:
        conn = http.client.HTTPConnection(*client_address(listen), timeout=timeout)
    try:
        conn.request("GET", READY_PATH)
        response = conn.getresponse()
        body = response.read(4096).decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc) or exc.__class__.__name__
    finally:
        conn.close()
    return response.status, body


def wait_for(services: tuple[ServiceSpec, ...], want: int, limit: float) -> float:
    """Until every listener answers `want`; the wall clock when they all first did. UserError after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        answers = {s.name: ask(s) for s in services}
        late = {name: got for name, got in answers.items() if got[0] != want}
        if not late:
            return time.time()
        if time.monotonic() > deadline:
            name, (status, body) = next(iter(late.items()))
            said = " ".join(body.split())[:GLIMPSE]
            raise UserError(
                f"service {name}: {READY_PATH} answered {status or 'nothing'} ({said}), not {want}, after {limit:g}s; "
                "see `mipart status`"
            )
        time.sleep(POLL)
