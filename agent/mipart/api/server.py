"""The agent's read-only HTTP API server: status, instances, Prometheus metrics and targets.

It runs on the agent's own event loop, so handlers read only an AgentSnapshot, taken per
request from the StatusSource (the agent), and a HostSnapshot (sysfs, the last apply,
unit states) taken in a worker thread at most about once a second. Every error is JSON:
{"error": {"code": 404, "message": "..."}}. See openapi.yaml beside this file. How many
connections it holds, and for how long, is api.connections' concern.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from mipart.api import views
from mipart.api.connections import GUARD_KEY, IDLE_TIMEOUT, ConnectionGuard, GuardedSite, connection_limit, mark_busy
from mipart.api.contract import ErrorBody, ErrorDetail, Instance, Instances, Status, to_json_text
from mipart.api.host import HostSnapshot
from mipart.api.metrics import prometheus_metrics
from mipart.daemon.snapshot import AgentSnapshot, InstanceView
from mipart.errors import UserError
from mipart.names import DEFAULT_API_LISTEN
from mipart.profile.addresses import API_SOCKET_DIR, is_loopback
from mipart.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from mipart.unixhttp import METRICS_LIMIT, HttpError, InstanceClient

HOST_CACHE_SECONDS = 1.0
SOCKET_MODE = 0o660
# Instance metrics read at once, each within PROXY_TIMEOUT and METRICS_LIMIT: a flood of them
# costs the agent at most this many reads (and MiB) and never delays /v1/status.
PROXY_READS = 8
PROXY_TIMEOUT = 5.0
SOURCE_KEY = web.AppKey("source", object) if hasattr(web, "AppKey") else "source"
CACHE_KEY = web.AppKey("host_cache", object) if hasattr(web, "AppKey") else "host_cache"
PROXY_KEY = web.AppKey("proxy_reads", object) if hasattr(web, "AppKey") else "proxy_reads"


class StatusSource(Protocol):
    """What the API reads: the agent (daemon.agent.Agent), or a test's stand-in."""

    log: Any

    def snapshot(self) -> AgentSnapshot: ...

    def host_snapshot(self) -> HostSnapshot:
        """Blocking: the API calls it in its own worker thread."""


class HostCache:
    """source.host_snapshot() in a worker thread, shared by requests for HOST_CACHE_SECONDS.

    The thread is the API's own: the agent's many to_thread() jobs (unit starts, nginx -t)
    never make a status request queue behind them.
    """

    def __init__(self, source: StatusSource, max_age: float = HOST_CACHE_SECONDS):
        self.source = source
        self.max_age = max_age
        self._snapshot: HostSnapshot | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mipart-api")

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    async def get(self) -> HostSnapshot:
        """The snapshot at once; a stale one is refreshed in the background (only the first request waits)."""
        if self._snapshot is None:
            async with self._lock:
                if self._snapshot is None:
                    await self._refresh()
            return self._snapshot
        if not self._fresh() and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self._snapshot

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self._snapshot = await loop.run_in_executor(self._executor, self.source.host_snapshot)

    def _fresh(self) -> bool:
        return self._snapshot is not None and time.monotonic() - self._snapshot.taken < self.max_age


def error_response(code: int, message: str, headers: dict | None = None) -> web.Response:
    body = to_json_text(ErrorBody(ErrorDetail(code, message)))
    return web.Response(status=code, text=body, content_type="application/json", headers=headers)


def _json(response) -> web.Response:
    """A response type of api.contract (or, for /v1/targets and /healthz, plain JSON values)."""
    text = to_json_text(response) if is_dataclass(response) else json.dumps(response) + "\n"
    return web.Response(text=text, content_type="application/json")


@web.middleware
async def _errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405, f"method {request.method} not allowed on {request.path}; use {allowed}", {"Allow": allowed}
        )
    except web.HTTPNotFound:
        return error_response(404, f"no such path: {request.path}; see /openapi.yaml for the API")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug must answer 500 JSON, and never take the agent down
        log = getattr(request.app[SOURCE_KEY], "log", None)
        if log is not None:
            log.error("api.error", path=request.path, reason=f"{exc.__class__.__name__}: {exc}")
        return error_response(500, f"internal error: {exc.__class__.__name__}")


def _snapshot(request: web.Request) -> AgentSnapshot:
    return request.app[SOURCE_KEY].snapshot()


async def _status(request: web.Request) -> web.Response:
    host = await request.app[CACHE_KEY].get()
    return _json(views.status(_snapshot(request), host))


async def _instances(request: web.Request) -> web.Response:
    host = await request.app[CACHE_KEY].get()
    return _json(views.instances(_snapshot(request), host))


def _asked_instance(request: web.Request) -> InstanceView | web.Response:
    """The instance the path names, or the error response saying why there is none."""
    raw = request.match_info["n"]
    if not (raw.isascii() and raw.isdigit()):
        return error_response(400, f"instance number must be a non-negative integer, not {raw!r}")
    number, snap = int(raw), _snapshot(request)
    if number not in snap.instances:
        known = ", ".join(map(str, snap.instances)) or "none"
        return error_response(404, f"no instance {number}; instances: {known}")
    return snap.instances[number]


async def _instance(request: web.Request) -> web.Response:
    view = _asked_instance(request)
    if isinstance(view, web.Response):
        return view
    host = await request.app[CACHE_KEY].get()
    return _json(views.instance(view, host))


async def _instance_metrics(request: web.Request) -> web.Response:
    """The instance's own /metrics, read over its socket with a bound (Prometheus cannot reach the socket)."""
    view = _asked_instance(request)
    if isinstance(view, web.Response):
        return view
    number, reads = view.spec.number, request.app[PROXY_KEY]
    if reads.locked():
        return error_response(503, f"{PROXY_READS} instance metrics reads are under way; retry")
    async with reads:
        try:
            reply = await InstanceClient().get(view.spec.socket, "/metrics", PROXY_TIMEOUT, METRICS_LIMIT)
        except asyncio.TimeoutError:
            return error_response(504, f"instance {number} did not answer /metrics within {PROXY_TIMEOUT:g}s")
        except (OSError, HttpError) as exc:
            return error_response(502, f"instance {number}: /metrics failed: {exc.__class__.__name__}: {exc}")
    if reply.status != 200:
        return error_response(502, f"instance {number} answered /metrics with {reply.status}")
    return web.Response(body=reply.body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def _healthz(request: web.Request) -> web.Response:
    if _snapshot(request).stopping:
        return error_response(503, "the agent is stopping")
    return _json({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    host = await request.app[CACHE_KEY].get()
    text = prometheus_metrics(_snapshot(request), host)
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def _targets(request: web.Request) -> web.Response:
    return _json(views.targets(_snapshot(request), request.host))


def openapi_text() -> str:
    return resources.files("mipart.api").joinpath("openapi.yaml").read_text(encoding="utf-8")


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(text=openapi_text(), content_type="application/yaml")


def make_app(source: StatusSource) -> web.Application:
    app = web.Application(middlewares=[mark_busy, _errors_as_json])
    app[SOURCE_KEY] = source
    app[CACHE_KEY] = HostCache(source)
    app[GUARD_KEY] = ConnectionGuard(connection_limit())
    app[PROXY_KEY] = asyncio.Semaphore(PROXY_READS)

    async def close_cache(app: web.Application) -> None:
        app[CACHE_KEY].close()

    app.on_cleanup.append(close_cache)
    app.router.add_get(Status.path, _status)
    app.router.add_get(Instances.path, _instances)
    app.router.add_get(Instance.path, _instance)
    app.router.add_get(views.METRICS_PATH, _instance_metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/targets", _targets)
    app.router.add_get("/openapi.yaml", _openapi)
    return app


# -- listening ------------------------------------------------------------------------------


def _protocol_log():
    """aiohttp logs every malformed request (a port scan, a bad method) as an ERROR with a
    traceback; those never reach a handler and are no fault of the agent: keep them out of
    the journal. Handler failures are logged by _errors_as_json instead."""
    import logging

    log = logging.getLogger("mipart.api.protocol")
    log.setLevel(logging.CRITICAL)
    return log


def parse_listen(listen: str) -> tuple[str, int] | str:
    """ "host:port" / "[v6]:port" -> (host, port); "unix:/path" -> "/path"."""
    if listen.startswith("unix:"):
        return listen[5:]
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise UserError(f"api.listen {listen!r}: expected host:port or unix:/run/mipart/NAME.sock")
    return host.strip("[]"), int(port)


async def start_api(source: StatusSource, listen: str) -> web.AppRunner:
    """Serve the API on `listen`; returns the AppRunner to `await runner.cleanup()` at exit."""
    where = parse_listen(listen or DEFAULT_API_LISTEN)
    _log_accept_failures(asyncio.get_running_loop(), getattr(source, "log", None))
    app = make_app(source)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, logger=_protocol_log(), keepalive_timeout=IDLE_TIMEOUT
    )
    await runner.setup()
    try:
        if isinstance(where, str):
            _prepare_socket_path(listen, Path(where))
        await GuardedSite(runner, app[GUARD_KEY], where).start()
        if isinstance(where, str):
            os.chmod(where, SOCKET_MODE)
        elif not is_loopback(where[0]) and getattr(source, "log", None) is not None:
            source.log.warning(
                "api.exposed",
                listen=listen,
                reason="api.listen is not a loopback address: anyone who reaches it reads status and metrics",
                action="keep it behind a firewall, or use 127.0.0.1 or a unix socket under " + API_SOCKET_DIR,
            )
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            hint = (
                "choose a free port in api.listen"
                if not isinstance(where, str)
                else "stop the other agent or choose another path in api.listen"
            )
            raise UserError(f"api.listen {listen}: address already in use; {hint}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"api.listen {listen}: permission denied; use a port above 1023 or run as root") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(
                f"api.listen {listen}: no such local address; use 127.0.0.1 or an address of this host"
            ) from None
        raise UserError(f"api.listen {listen}: cannot listen: {exc.strerror or exc}") from None
    except BaseException:
        await runner.cleanup()
        raise
    return runner


ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _log_accept_failures(loop: asyncio.AbstractEventLoop, log) -> None:
    """accept() out of file descriptors: asyncio retries a second later (the listener keeps
    serving) and reports it with a traceback; log it as one line instead."""
    previous = loop.get_exception_handler()

    def handler(loop, context) -> None:
        exc = context.get("exception")
        if (
            log is not None
            and isinstance(exc, OSError)
            and exc.errno in ACCEPT_ERRNOS
            and "accept" in context.get("message", "")
        ):
            log.error(
                "api.accept_failed",
                reason=os.strerror(exc.errno),
                action="retry in 1s; see LimitNOFILE in mipart-agent.service",
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _prepare_socket_path(listen: str, path: Path) -> None:
    """Make the socket's directory; remove a socket nobody answers on (left by a killed agent).

    No symbolic link on the way, checked here too and not only by `mipart validate`: a link
    made since then must not move the socket out of the run directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(path.parent)
    if real != os.path.normpath(path.parent):
        raise UserError(
            f"api.listen {listen}: {path.parent} is a symbolic link to {real}; remove the link or choose a path under "
            f"{API_SOCKET_DIR} without one"
        )
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError(f"api.listen {listen}: {path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # stale: nobody listens there
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "address already in use")
