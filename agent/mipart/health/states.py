"""The words an instance's health is known by: the API, `mipart status`, metrics and logs use these.

starting -> ready -> degraded -> unhealthy -> restarting -> ready ... or failed;
draining: out of rotation, finishing its requests before a planned restart.
"""

from __future__ import annotations

STARTING = "starting"
READY = "ready"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
RESTARTING = "restarting"
DRAINING = "draining"
FAILED = "failed"

# In nginx rotation first, then the others in the order an instance meets them.
STATES = (READY, DEGRADED, STARTING, UNHEALTHY, RESTARTING, DRAINING, FAILED)
IN_ROTATION = (READY, DEGRADED)  # the states nginx routes to
