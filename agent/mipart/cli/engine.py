"""`mipart sim engine`: the fake vLLM-like engine (a test double) behind its command line."""

from __future__ import annotations

import asyncio
import sys
import time

import click

from mipart.sim.engine import FAULTS, EngineConfig, serve


@click.command("engine")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--model", default="fake-model", show_default=True, help="Model (served under this name unless --served-model-name).")
@click.option("--served-model-name", default=None, help="Name clients use, as in vLLM.")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=1, help="Accepted as vLLM does; the fake has no GPUs.")
@click.option("--startup-delay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="SECONDS", help="Do not listen at all until this has elapsed (model loading).")
@click.option("--tokens-per-second", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Generation speed per request; 0 = instant.")
@click.option("--max-tokens-default", type=click.IntRange(min=1), default=16, show_default=True,
              help="Output length when a request gives no max_tokens.")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Concurrent requests generating; more wait (vllm:num_requests_waiting).")
@click.option("--fault", type=click.Choice(FAULTS), default="none", show_default=True,
              help="die: exit 1; hang: never answer again; 503: engine dead, port open.")
@click.option("--fault-after", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="SECONDS", help="When the fault starts, counted from process start.")
def engine(host, port, model, served_model_name, tensor_parallel_size, startup_delay, tokens_per_second, max_tokens_default, max_num_seqs,
           fault, fault_after):
    """Fake OpenAI-compatible engine behaving like vLLM (SIGUSR1: engine dies, SIGUSR2: hang)."""
    started = time.monotonic()
    cfg = EngineConfig(host=host, port=port, model=served_model_name or model, startup_delay=startup_delay,
                       tokens_per_second=tokens_per_second, max_tokens_default=max_tokens_default,
                       fault=fault, fault_after=fault_after, max_num_seqs=max_num_seqs)
    sys.exit(asyncio.run(serve(cfg, started)))
