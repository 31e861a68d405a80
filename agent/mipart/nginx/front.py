"""nginx.conf for the front layer, as a pure function of the profile and the planned instances.

The front holds the clients' connections, keep-alive included, and passes each request,
streaming both ways, to the back layer (nginx.conf) over the service's unix socket, on
connections it keeps (upstream `keepalive`). The back is reloaded on every membership
change, and its old workers close the idle ones: a request the front sent on one that was
closing failed on a cached connection, which nginx tries again on another at no cost to its
tries (ngx_http_upstream_next), POST included (`non_idempotent`), before any byte of an
answer reached the client. The back never read it, so nothing runs twice. The front's own
text depends on the listeners and services only, so it reloads on a profile change of those
alone (docs/routing.md). When the back cannot be reached (down, restarting), the front answers
the same JSON 503 as the back does when no instance is ready.
"""

from __future__ import annotations

from pathlib import Path

from mipart.nginx.conf import head, server_timeouts, service_socket, unavailable_block, with_generation
from mipart.profile.schema import Profile, ServiceSpec
from mipart.serving.spec import InstanceSpec

# nginx's default; clients (and fleet balancers) keep their connections this long between requests.
CLIENT_KEEPALIVE = "75s"
# The front is sized for this many instances per service (8 GPUs in CPX), or more when more run, so a
# change of layout (a rolling repartition) never changes its text: a reload would close idle clients.
FRONT_SIZED_FOR = 64
# Idle connections to the back each front worker keeps per service: one per client stream it may
# pass on at once, up to this; more are opened and closed as needed.
BACK_CONNECTIONS = 256


def render_front(profile: Profile, specs: tuple[InstanceSpec, ...], back_prefix: Path, prefix: Path) -> str:
    """SPECS size worker_connections as in the back (nginx.conf.worker_connections), for at least FRONT_SIZED_FOR
    instances a service; readiness plays no part."""
    lines = head(profile, specs, prefix, at_least=FRONT_SIZED_FOR)
    lines += [
        f"    keepalive_timeout {CLIENT_KEEPALIVE};",
        # The body is read whole before the back is reached (in memory up to 1 MiB; prompts are
        # small). Unread, a body nginx cannot discard when the back is down makes it close the
        # connection after its 503: clients saw "Can not write request body" and reconnected.
        "    proxy_request_buffering on;",
        "    client_body_buffer_size 1m;",
        "    proxy_connect_timeout 2s;",
        # A request that failed on a kept connection the back's reload closed is sent again on a
        # new one; only that (`error`): a timeout is a back that took it, and may have passed it on.
        "    proxy_next_upstream error non_idempotent;",
    ]
    for service in profile.services:
        lines += _service_block(service, back_prefix)
    lines.append("}")
    return with_generation(profile, lines)


def _service_block(service: ServiceSpec, back_prefix: Path) -> list[str]:
    name = f"mipart_back_{service.name.replace('-', '_')}"
    return [
        f"    # service {service.name}: to the back layer",
        f"    upstream {name} {{ server unix:{service_socket(back_prefix, service.name)}; "
        f"keepalive {BACK_CONNECTIONS}; }}",
        "    server {",
        f"        listen {service.listen};",
        # $host, passed to the back, is this name when a client sent none (HTTP/1.0, as HAProxy's default
        # health check): an empty Host made the back answer 400.
        f"        server_name {service.name};",
        *server_timeouts(service),
        *unavailable_block(service),
        f"        location / {{ proxy_pass http://{name}; }}",
        "    }",
    ]
