"""The fake engine's server: the app, model "loading", shutdown and its vLLM-like flags."""

from __future__ import annotations

import asyncio
import functools
import os
import time

from aiohttp import web

from mipart.errors import UserError
from mipart.sim.devices import open_devices
from mipart.sim.engine.gpus import GpuRefused, engine_gpus
from mipart.sim.engine.openai import (
    chat_completions,
    completions,
    health,
    metrics,
    models,
)
from mipart.sim.engine.state import (
    FAULTS,
    HUNG,
    EngineConfig,
    EngineState,
    hang_forever,
    install_signals,
    log,
    schedule_fault,
)


def make_guard(state: EngineState):
    """Middleware: count connections, track handler tasks (cancelled at shutdown) and stall everything when hung."""

    @web.middleware
    async def guard(request: web.Request, handler):
        transport = request.transport  # weakly held: aiohttp's handler cannot be
        if transport is not None and transport not in state.connections:
            state.connections.add(transport)
            state.connections_opened += 1
        task = asyncio.current_task()
        state.tasks.add(task)
        try:
            if state.mode == HUNG:
                return await hang_forever(state)
            return await handler(request)
        finally:
            state.tasks.discard(task)

    return guard


def make_app(cfg: EngineConfig, state: EngineState) -> web.Application:
    """Routes, the hang/shutdown middleware and the X-Fake-Engine header on every response."""
    app = web.Application(middlewares=[make_guard(state)])

    async def tag(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Fake-Engine"] = cfg.instance

    app.on_response_prepare.append(tag)
    bind = functools.partial
    app.router.add_get("/health", bind(health, cfg, state))
    app.router.add_get("/v1/models", bind(models, cfg, state))
    app.router.add_get("/metrics", bind(metrics, cfg, state))
    app.router.add_post("/v1/completions", bind(completions, cfg, state))
    app.router.add_post("/v1/chat/completions", bind(chat_completions, cfg, state))
    app.router.add_get("/mipart/devices", bind(devices_report, state))
    return app


async def load_model(cfg: EngineConfig, state: EngineState) -> bool:
    """Sleep --startup-delay without listening (vLLM refuses connections while loading).

    Returns False if asked to stop meanwhile."""
    if cfg.startup_delay <= 0:
        return True
    try:
        await asyncio.wait_for(state.stopping.wait(), cfg.startup_delay)
        return False
    except asyncio.TimeoutError:
        return True


async def shutdown(state: EngineState, runner: web.AppRunner) -> None:
    """Cancel in-flight (possibly hung) handlers so the exit is quick, then close."""
    for task in list(state.tasks):
        task.cancel()
    try:
        await asyncio.wait_for(runner.cleanup(), 5)
    except asyncio.TimeoutError:
        pass


async def devices_report(state: EngineState, request: web.Request) -> web.Response:
    """What the engine enumerated and runs on (sim/engine/gpus.py); {} off a simulated host."""
    return web.json_response(state.gpus)


async def serve(cfg: EngineConfig, started: float, gpus: dict | None = None) -> int:
    """Run the engine until SIGTERM; returns the exit code."""
    state = EngineState(slots=asyncio.Semaphore(cfg.max_num_seqs), gpus=gpus or {})
    install_signals(cfg, state)
    schedule_fault(cfg, state, started)
    log(cfg, f"loading model={cfg.model} for {cfg.startup_delay}s (not listening yet)")
    if not await load_model(cfg, state):
        log(cfg, "stopped while loading")
        return 0
    runner = web.AppRunner(make_app(cfg, state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.UnixSite(runner, cfg.uds) if cfg.uds else web.TCPSite(runner, cfg.host, cfg.port)
    try:
        await site.start()  # a unix socket made as vLLM makes it, its mode from the umask
    except OSError as exc:
        log(cfg, f"cannot listen: {exc}")
        await runner.cleanup()
        return 1
    log(cfg, f"listening on http://{cfg.instance} model={cfg.model}")
    await state.stopping.wait()
    await shutdown(state, runner)
    log(cfg, "stopped")
    return 0


def parse_args(argv: list[str] | None = None) -> EngineConfig:
    """vLLM-like flags; argparse keeps the double free of the CLI package (it is exec'd 64 times)."""
    import argparse

    def at_least(low, kind):
        def check(text: str):
            value = kind(text)
            if value < low:
                raise argparse.ArgumentTypeError(f"must be >= {low}")
            return value

        return check

    parser = argparse.ArgumentParser(
        prog="mipart sim engine",
        description="Fake OpenAI-compatible engine behaving like vLLM (SIGUSR1: engine dies, SIGUSR2: hang, SIGWINCH: "
        "wedged).",
    )

    def seconds(flag: str, help_text: str) -> None:
        parser.add_argument(flag, type=at_least(0, float), default=0.0, metavar="SECONDS", help=help_text)

    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=at_least(1, int), help="Port to listen on (unless --uds).")
    parser.add_argument("--uds", metavar="PATH", help="Listen on this unix socket instead, as vLLM's --uds.")
    parser.add_argument(
        "--model", default="fake-model", help="Model (served under this name unless --served-model-name)."
    )
    parser.add_argument("--served-model-name", default=None, help="Name clients use, as in vLLM.")
    parser.add_argument(
        "--tensor-parallel-size", type=at_least(1, int), default=1, help="Accepted as vLLM does; the fake has no GPUs."
    )
    seconds("--startup-delay", "Do not listen at all until this has elapsed (model loading).")
    parser.add_argument(
        "--tokens-per-second", type=at_least(0, float), default=50.0, help="Generation speed per request; 0 = instant."
    )
    seconds(
        "--first-token-delay",
        "Each request's first token comes this long after it is admitted (a long prefill), then it streams.",
    )
    parser.add_argument(
        "--max-tokens-default",
        type=at_least(1, int),
        default=16,
        help="Output length when a request gives no max_tokens.",
    )
    parser.add_argument(
        "--max-num-seqs",
        type=at_least(1, int),
        default=256,
        help="Concurrent requests generating; more wait (vllm:num_requests_waiting).",
    )
    parser.add_argument(
        "--fault",
        choices=FAULTS,
        default="none",
        help="die: exit 1; hang: never answer again; 503: engine dead, port open; "
        "wedge: /health 200, generations hang.",
    )
    seconds("--fault-after", "When the fault starts, counted from process start.")
    args = parser.parse_args(argv)
    if args.port is None and args.uds is None:
        parser.error("one of --port and --uds is required")
    if args.port is not None and args.port > 65535:
        parser.error("--port must be <= 65535")
    return EngineConfig(
        host=args.host,
        port=args.port or 0,
        uds=args.uds,
        model=args.served_model_name or args.model,
        startup_delay=args.startup_delay,
        first_token_delay=args.first_token_delay,
        tokens_per_second=args.tokens_per_second,
        max_tokens_default=args.max_tokens_default,
        fault=args.fault,
        fault_after=args.fault_after,
        max_num_seqs=args.max_num_seqs,
    )


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    cfg = parse_args(argv)
    try:
        gpus = engine_gpus(os.environ)  # as ROCm would see them here; refused like a vLLM without its GPU
    except (GpuRefused, UserError) as exc:
        log(cfg, f"refusing to start: {exc}")
        return 1
    if gpus:
        log(cfg, gpus.line())
    try:
        held = open_devices()  # vLLM holds its GPUs' /dev/kfd and render nodes until it exits
    except OSError as exc:
        log(cfg, f"cannot open GPU device {exc.filename}: {exc.strerror}")
        return 1
    if held:
        log(cfg, f"holding {len(held)} GPU device files")
    return asyncio.run(serve(cfg, started, gpus.report() if gpus else None))
