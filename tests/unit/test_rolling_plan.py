"""The rolling repartition plan (partition.rolling), driven directly: steps, what stops and starts, who serves."""

from __future__ import annotations

from mipart.partition.plan import GpuChange, PartitionPlan, Write
from mipart.partition.rolling import HOST_WIDE, NONE, ROLLING, Placement, describe, plan_rollout

SLOTS = 8  # instance number = 8 x GPU + partition


def plan(changes: dict[int, tuple[str, str]], gpus: int = 2, reload: bool = False) -> PartitionPlan:
    """A partition plan: GPU -> (compute now, compute wanted); the others stay as they are."""
    rows, writes = [], []
    for index in range(gpus):
        now, want = changes.get(index, ("DPX", "DPX"))
        rows.append(GpuChange(index, f"0000:{index:02x}:00.0", now, want, want, "NPS1", "NPS2" if reload else None))
        if now != want:
            writes.append(Write(index, "current_compute_partition", want, after_reload=reload))
    return PartitionPlan(gpus=tuple(rows), writes=tuple(writes), reload=reload)


def placements(layout: dict[int, int], service_of=lambda gpu: "chat") -> list[Placement]:
    """One instance per partition: GPU -> how many partitions it has."""
    return [Placement(SLOTS * gpu + p, service_of(gpu), (gpu,)) for gpu, parts in layout.items() for p in range(parts)]


def test_one_gpu_moving_to_qpx_stops_only_its_own_instances_and_the_other_serves():
    rollout = plan_rollout(plan({1: ("DPX", "QPX")}), placements({0: 2, 1: 2}), placements({0: 2, 1: 4}), ["chat"])
    assert rollout.mode == ROLLING
    [step] = rollout.steps
    assert step.gpus == (1,)
    assert step.stop == (8, 9) and step.start == (8, 9, 10, 11)
    assert step.capacity == {"chat": 2}  # GPU 0's two instances serve throughout
    assert rollout.dark == {}


def test_every_gpu_switching_goes_one_at_a_time_and_keeps_the_service_up():
    rollout = plan_rollout(
        plan({g: ("DPX", "CPX") for g in range(4)}, gpus=4),
        placements(dict.fromkeys(range(4), 2)),
        placements(dict.fromkeys(range(4), 8)),
        ["chat"],
    )
    assert [s.gpus for s in rollout.steps] == [(0,), (1,), (2,), (3,)]
    assert [s.capacity["chat"] for s in rollout.steps] == [6, 12, 18, 24]  # old on the rest, new on the switched
    started = [n for s in rollout.steps for n in s.start]
    assert sorted(started) == sorted(p.number for p in placements(dict.fromkeys(range(4), 8)))


def test_max_unavailable_batches_gpus():
    rollout = plan_rollout(
        plan({g: ("SPX", "DPX") for g in range(8)}, gpus=8),
        placements(dict.fromkeys(range(8), 1)),
        placements(dict.fromkeys(range(8), 2)),
        ["chat"],
        max_unavailable=2,
    )
    assert len(rollout.steps) == 4 and all(len(s.gpus) == 2 for s in rollout.steps)
    assert min(s.capacity["chat"] for s in rollout.steps) == 6


def test_the_order_never_drains_a_service_s_last_instance_when_another_order_avoids_it():
    """s moves from GPU 0 to GPU 1: switching GPU 0 first would stop its only instance before its new
    one exists; switching GPU 1 first keeps the old one serving until the new one is ready."""
    before = [Placement(0, "s", (0,)), Placement(1, "t", (0,)), Placement(8, "t", (1,))]
    after = [Placement(0, "t", (0,)), Placement(8, "s", (1,)), Placement(9, "t", (1,))]
    rollout = plan_rollout(plan({0: ("DPX", "QPX"), 1: ("DPX", "QPX")}), before, after, ["s", "t"])
    assert [s.gpus for s in rollout.steps] == [(1,), (0,)]
    assert rollout.dark == {}
    assert all(min(s.capacity.values()) >= 1 for s in rollout.steps)


def test_a_service_living_only_on_the_changing_gpu_is_reported_dark():
    rollout = plan_rollout(
        plan({1: ("DPX", "QPX")}),
        placements({0: 2, 1: 2}, lambda g: f"s{g}"),
        placements({0: 2, 1: 4}, lambda g: f"s{g}"),
        ["s0", "s1"],
    )
    assert rollout.dark == {"s1": (1,)}
    assert rollout.steps[0].capacity == {"s0": 2, "s1": 0}
    assert any("service s1 has no instance in rotation during step 1" in line for line in describe(rollout))


def test_a_tensor_parallel_instance_across_two_changing_gpus_stops_at_the_first_and_starts_after_the_last():
    before = [Placement(0, "chat", (0, 1))]
    after = [Placement(0, "chat", (0, 1)), Placement(1, "chat", (0, 1))]
    rollout = plan_rollout(plan({0: ("SPX", "DPX"), 1: ("SPX", "DPX")}), before, after, ["chat"])
    assert [(s.stop, s.start) for s in rollout.steps] == [((0,), ()), ((), (0, 1))]


def test_a_memory_change_is_one_host_wide_step_that_says_why():
    rollout = plan_rollout(plan({}, reload=True), placements({0: 2, 1: 2}), placements({0: 2, 1: 2}), ["chat"])
    assert rollout.mode == HOST_WIDE and "driver reload" in rollout.reason
    [step] = rollout.steps
    assert step.gpus == (0, 1) and step.capacity == {"chat": 0} and len(step.stop) == 4


def test_nothing_to_change():
    rollout = plan_rollout(plan({}), placements({0: 2}), placements({0: 2}), ["chat"])
    assert rollout.mode == NONE and rollout.steps == ()
    assert rollout.to_json() == {"mode": "none", "reason": rollout.reason, "steps": [], "dark": {}}
