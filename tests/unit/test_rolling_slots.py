"""With slot numbers (N = 8 x GPU + partition) a compute change of several GPUs rolls GPU by GPU:
`mipart plan --json` on simulated hosts, through the same planning the agent executes (serving.planned)."""

from __future__ import annotations

import json

import pytest
from conftest import create_sim

SLOTS = 8


def rollout(tmp_path, gpus: int, memory: str) -> dict:
    sim = create_sim(tmp_path, model="mi300x", gpus=gpus, compute="DPX", memory=memory, rules="rocm-mi300x")
    profile = sim.profile(
        f"gpus: {{compute: CPX, memory: {memory}}}\nservices:\n  chat: {{model: org/m, listen: 8040}}\n"
    )
    done = sim.run("plan", "--json", "--profile", str(profile))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["rollout"]


@pytest.mark.parametrize(("gpus", "memory"), [(2, "NPS1"), (8, "NPS2")])
def test_dpx_to_cpx_on_every_gpu_rolls_one_gpu_a_step_in_its_own_slots(tmp_path, gpus, memory):
    planned = rollout(tmp_path, gpus, memory)
    assert planned["mode"] == "rolling" and planned["dark"] == {}, planned["reason"]
    steps = planned["steps"]
    assert [s["gpus"] for s in steps] == [[g] for g in range(gpus)]
    for gpu, step in enumerate(steps):
        first = SLOTS * gpu  # each GPU's instances keep their numbers: DPX's two are CPX's first two
        assert step["stop"] == [first, first + 1]
        assert step["start"] == list(range(first, first + SLOTS))
        # meanwhile: DPX's two on each GPU not yet switched, CPX's eight on each switched one
        assert step["capacity"] == {"chat": 2 * (gpus - gpu - 1) + SLOTS * gpu}
