"""Two real vLLM CPU servers for the balancer bench: tests/vllm/vllm_env.py's cached venv and tiny model.

Started as the real-vLLM test tier starts them (tests/vllm/test_real_vllm.py: its args and env,
OMP threads unpinned so two servers share the 2 cores), served under the bench's model name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from balancer_setup import Procs, wait_for
from host import health_ok

TESTS = Path(__file__).resolve().parents[1] / "tests"
STARTUP = 300.0  # two servers loading at once on 2 cores take 25-80 s here
ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def start_vllm(procs: Procs, ports: list[int], logs: Path, model: str) -> tuple[list[int], Path, str]:
    """PIDs of vLLM servers on `ports` once all answer /health, the model's directory (its tokenizer), a description."""
    sys.path[:0] = [str(TESTS), str(TESTS / "vllm")]
    from vllm_env import VLLM_VERSION, ensure_tiny_model, ensure_vllm_venv

    python, weights = ensure_vllm_venv(), ensure_tiny_model()
    pids = []
    for port in ports:
        argv = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(weights),
            "--served-model-name",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
        ]
        pids.append(procs.start(argv, logs / f"vllm-{port}.log", env={**os.environ, **ENV}).pid)
    wait_for(lambda: all(health_ok(p) for p in ports), STARTUP, f"vLLM on {ports} (logs in {logs})")
    return pids, weights, f"2 vLLM {VLLM_VERSION} CPU servers, tiny random Llama ({weights.name})"
