"""The fake engine's configuration, run-time state and injected faults."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import weakref
from dataclasses import dataclass, field

from aiohttp import web

FAULTS = ("none", "die", "hang", "503", "wedge")
HEALTHY, DEAD, HUNG, WEDGED = "healthy", "dead", "hung", "wedged"


@dataclass(frozen=True)
class EngineConfig:
    """What the command line fixed; never changes while the engine runs."""

    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None  # a unix socket to listen on instead (vLLM's --uds): host and port are ignored
    model: str = "fake-model"
    startup_delay: float = 0.0
    first_token_delay: float = 0.0
    tokens_per_second: float = 50.0
    max_tokens_default: int = 16
    fault: str = "none"
    fault_after: float = 0.0
    max_num_seqs: int = 256
    max_model_len: int = 4096
    kv_cache_tokens: int = 65536

    @property
    def instance(self) -> str:
        """Where it listens, as its X-Fake-Engine header says: host:port, or unix:PATH."""
        return f"unix:{self.uds}" if self.uds else f"{self.host}:{self.port}"


@dataclass
class EngineState:
    """Everything that changes at run time: fault mode, load and counters."""

    mode: str = HEALTHY
    running: int = 0
    waiting: int = 0
    kv_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0})
    next_id: int = 0
    tasks: set = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    slots: asyncio.Semaphore | None = None
    gpus: dict = field(default_factory=dict)  # what it enumerated and runs on (sim/engine/gpus.py)
    # Connections it was asked on (each counted at its first request): what a test reads to tell kept
    # connections from ones opened per request. The fake's own series, not vLLM's.
    connections: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    connections_opened: int = 0


class EngineDead(Exception):
    """Raised inside a generation when the engine dies under it (SIGUSR1/503 fault)."""


class BadRequest(Exception):
    """A request vLLM would refuse; carries the HTTP status and OpenAI error type."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status = status
        self.kind = kind


# ---------------------------------------------------------------- logging


def log(cfg: EngineConfig, message: str) -> None:
    """One plain line on stderr; journald and test logs keep it as is."""
    print(f"fake-engine {cfg.instance} pid={os.getpid()}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- faults


def set_mode(cfg: EngineConfig, state: EngineState, mode: str) -> None:
    """Switch fault mode; a hung engine stays hung (like a stopped process), only SIGTERM ends it."""
    if state.mode == HUNG or state.mode == mode:
        return
    state.mode = mode
    log(cfg, f"fault injected: {mode}")


def die(cfg: EngineConfig) -> None:
    """Crash like an engine that hit a fatal error: no cleanup, exit code 1."""
    log(cfg, "fault injected: die (exit 1)")
    os._exit(1)


def apply_fault(cfg: EngineConfig, state: EngineState) -> None:
    """Start the --fault chosen on the command line."""
    if cfg.fault == "die":
        die(cfg)
    elif cfg.fault == "hang":
        set_mode(cfg, state, HUNG)
    elif cfg.fault == "503":
        set_mode(cfg, state, DEAD)
    elif cfg.fault == "wedge":
        set_mode(cfg, state, WEDGED)


def schedule_fault(cfg: EngineConfig, state: EngineState, started: float) -> None:
    """Fire the fault --fault-after seconds after process start (so it may hit during loading)."""
    if cfg.fault == "none":
        return
    delay = max(0.0, cfg.fault_after - (time.monotonic() - started))
    asyncio.get_running_loop().call_later(delay, apply_fault, cfg, state)


def install_signals(cfg: EngineConfig, state: EngineState) -> None:
    """Signals are the run-time fault switch; SIGTERM/SIGINT ask for a graceful stop."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, state.stopping.set)
    loop.add_signal_handler(signal.SIGINT, state.stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, set_mode, cfg, state, DEAD)
    loop.add_signal_handler(signal.SIGUSR2, set_mode, cfg, state, HUNG)
    loop.add_signal_handler(signal.SIGWINCH, set_mode, cfg, state, WEDGED)


async def hang_forever(state: EngineState) -> web.Response:
    """Never answer; only shutdown (which cancels this task) ends the wait."""
    await state.stopping.wait()
    raise web.HTTPServiceUnavailable()


# ---------------------------------------------------------------- responses


def error_response(message: str, status: int, kind: str) -> web.Response:
    """vLLM's OpenAI error body."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


def engine_dead_response() -> web.Response:
    """What vLLM answers to a completion once its engine core is dead."""
    return error_response(
        "EngineCore encountered an issue. See stack trace for the root cause.", 500, "InternalServerError"
    )
