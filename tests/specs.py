"""Instance specs to build tests on, as the agent plans them: `spec(n)` is the server on logical
GPU n, SPECS four of them, SPEC one with vLLM's command line, its env and its user. A test
`replace()`s the fields it is about."""

from __future__ import annotations

from dataclasses import replace

from mipart.serving.spec import InstanceSpec


def spec(n: int, service: str = "chat") -> InstanceSpec:
    return InstanceSpec(
        number=n,
        service=service,
        model="org/m",
        served_model_name="org/m",
        logical_gpus=(n,),
        physical_gpus=(n // 2,),
        render_nodes=(f"/dev/dri/renderD{128 + n}",),
        socket=f"/run/mipart-vllm/sockets/{n}/http.sock",
        runtime="native",
        argv=("vllm",),
        env=(),
        user=None,
        hf_home="/tmp",
    )


SPECS = {n: spec(n) for n in range(4)}
SPEC = replace(
    spec(3),
    render_nodes=("/dev/dri/renderD137",),  # GPU 1, partition 1 of a DPX host
    argv=("vllm", "serve", "org/m"),
    env=(("CUDA_VISIBLE_DEVICES", "3"),),
    user="mipart",
    hf_home="/var/lib/mipart/huggingface",
)
