"""Rollout choice (daemon.rollout), driven directly: which changed instances restart in which batch."""

from __future__ import annotations

from mipart.daemon.rollout import batch_size, next_batch

CHAT = {n: "chat" for n in range(8)}


def test_a_serving_service_restarts_a_quarter_at_a_time_in_queue_order():
    states = dict.fromkeys(CHAT, "ready")
    plan = next_batch([5, 1, 2, 7, 0, 3, 4, 6], set(), CHAT, states)
    assert plan.batch == (5, 1)
    assert plan.waiting == (2, 7, 0, 3, 4, 6)
    assert plan.active == {5, 1}


def test_a_service_that_serves_nothing_restarts_all_at_once():
    states = dict.fromkeys(CHAT, "starting")
    plan = next_batch(list(CHAT), set(), CHAT, states)
    assert plan.batch == tuple(CHAT) and plan.waiting == ()
    assert batch_size("chat", CHAT, {**states, 3: "failed"}, set()) == 8


def test_degraded_counts_as_serving():
    states = {**dict.fromkeys(CHAT, "starting"), 4: "degraded"}
    assert batch_size("chat", CHAT, states, set()) == 2


def test_at_least_one_at_a_time():
    services = {0: "chat", 1: "chat", 2: "chat"}
    assert batch_size("chat", services, dict.fromkeys(services, "ready"), set()) == 1


def test_the_next_batch_waits_until_the_previous_one_is_settled():
    states = {**dict.fromkeys(CHAT, "ready"), 5: "draining", 1: "starting"}
    plan = next_batch([2, 7, 0], {5, 1}, CHAT, states)
    assert plan.batch == () and plan.waiting == (2, 7, 0) and plan.active == {5, 1}
    states[5] = "ready"
    plan = next_batch([2, 7, 0], {5, 1}, CHAT, states)
    assert plan.batch == () and plan.active == {1}  # 1 is not back yet
    states[1] = "failed"  # given up on: it no longer holds the rollout
    plan = next_batch([2, 7, 0], {1}, CHAT, states)
    assert plan.batch == (2, 7) and plan.waiting == (0,) and plan.active == {2, 7}


def test_services_roll_independently():
    services = {**CHAT, 8: "embed", 9: "embed"}
    states = dict.fromkeys(services, "ready")
    states[0] = "starting"
    plan = next_batch([1, 8, 9], {0}, services, states)
    assert plan.batch == (8,)  # chat is busy with 0; embed (2 instances, serving) goes one by one
    assert plan.waiting == (1, 9) and plan.active == {0, 8}


def test_instances_gone_from_the_profile_leave_the_queue_and_the_rollout():
    services = {n: "chat" for n in range(4)}
    states = dict.fromkeys(services, "ready")
    plan = next_batch([9, 2, 3], {8}, services, states)
    assert 9 not in plan.waiting and 9 not in plan.batch and 8 not in plan.active
    assert plan.batch == (2,) and plan.waiting == (3,)


def test_nothing_queued_nothing_to_do():
    plan = next_batch([], set(), CHAT, dict.fromkeys(CHAT, "ready"))
    assert plan.batch == () and plan.waiting == () and plan.active == frozenset()
