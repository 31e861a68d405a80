"""What mipart's reports say of a host, for the modules: pure (reads parsed JSON, runs nothing).

A report is what `mipart status --json` printed: {"agent": {"answering": ...}, "status": the
agent's /v1/status, "instances": its /v1/instances}; a plan is what `mipart plan --json` printed.
The field names are mipart's API contract (agent/mipart/api/contract.py, docs/api.md).
"""

from __future__ import annotations

# health.states.IN_ROTATION: the states nginx routes to (degraded still serves, as `mipart status` counts).
IN_ROTATION = ("ready", "degraded")


def answering(report):
    return bool(report.get("agent", {}).get("answering"))


def loaded_digest(report):
    """The digest of the profile the agent runs; "" when it does not answer."""
    return report["status"]["profile"]["digest"] if answering(report) else ""


def readiness(report):
    """What the host's readiness path (GET /mipart/ready on every service listener) answers, as the agent
    reports it in /v1/status: {"ready", "reason", "since", "drained"}; None when the agent does not answer."""
    return report["status"].get("readiness") if answering(report) else None


# How the readiness reason of a drained host starts (mipart's contract); the operator's reason follows.
DRAINED = "drained: "


def drain_reason(report):
    """Why the host is drained on purpose (`mipart drain`), as the operator said; None when it is not."""
    ready = readiness(report)
    if not ready or not ready["drained"]:
        return None
    reason = ready["reason"] or ""
    return reason[len(DRAINED) :] if reason.startswith(DRAINED) else reason


def instances(report):
    listed = report.get("instances", [])
    return listed["instances"] if isinstance(listed, dict) else listed


def pending(report, digest):
    """What keeps the host from serving the profile DIGEST as it asks; [] once it does.

    Served means: the agent loaded that profile, no repartition runs, the partitions match it,
    every instance is in rotation (a generation probe that fails takes its instance out), and the
    readiness path answers 200 unless the host is drained on purpose.
    """
    if not answering(report):
        agent = report.get("agent", {})
        return [f"mipart-agent is not answering on {agent.get('api', '?')} ({agent.get('reason', 'no reason given')})"]
    status = report["status"]
    waits = []
    if status["profile"]["digest"] != digest:
        waits.append(f"the agent runs profile {_short(status['profile']['digest'])}, not {_short(digest)}")
    if status["repartition"]["phase"]:
        waits.append(f"a repartition is {status['repartition']['phase']}")
    if status["partition"]["matches"] is not True:
        waits.append("the partitions do not match the profile")
    waits.extend(f"{i['unit']} is {i['state']}" for i in instances(report) if i["state"] not in IN_ROTATION)
    ready = readiness(report)
    if ready is not None and not ready["ready"] and not ready["drained"]:
        waits.append(f"the readiness path answers 503 ({ready['reason']})")
    return waits


def agent_words(report):
    """Every problem the agent states, in its own words: one line each, named by where it reports it."""
    if not answering(report):
        return pending(report, "")
    status = report["status"]
    found = [
        ("profile_error", status["profile_error"]),
        ("profile.override", status["profile"]["override"]),
        ("partition.error", status["partition"]["error"]),
        ("partition.action", status["partition"]["action"]),
        ("repartition.error", status["repartition"]["error"]),
        ("reconcile.error", status["reconcile"]["error"]),
        ("units_error", status["units_error"]),
        ("files_error", status["files_error"]),
        ("nginx.problem", status["nginx"]["problem"]),
    ]
    ready = readiness(report)
    if ready is not None and not ready["drained"]:
        found.append(("readiness.reason", ready["reason"]))
    words = [f"{where}: {text}" for where, text in found if text]
    words.extend(
        f"{i['unit']} {i['state']}: {i['last_error'] or 'no error recorded'}"
        for i in instances(report)
        if i["state"] not in IN_ROTATION
    )
    return words


def refusal(report, before):
    """The agent's profile_error when it is new since the report BEFORE a reload: the file was refused."""
    if not answering(report):
        return ""
    error = report["status"]["profile_error"]
    return error if error and error != before else ""


def plan_changes(plan, report, digest):
    """Why applying the profile DIGEST would change the host (one line each); [] when it would not."""
    partition = plan["partition"]
    changes = []
    if partition["reload"]:
        changes.append("a driver reload (the memory partition changes)")
    if partition["writes"]:
        gpus = ", ".join(str(g) for g in sorted({w["gpu"] for w in partition["writes"]}))
        changes.append(f"{len(partition['writes'])} partition write(s) on GPU(s) {gpus}")
    if not answering(report):
        changes.append("mipart-agent starts (it is not answering)")
    elif loaded_digest(report) != digest:
        changes.append(f"the agent loads profile {_short(digest)} (it runs {_short(loaded_digest(report))})")
    return changes


def rollout(plan):
    """The plan's rollout (`mipart plan --json` key "rollout": mode none|rolling|host-wide, reason, steps, dark)
    with what a playbook decides on: whether the host's service listeners go dark while it runs, and the fewest
    instances each service keeps serving meanwhile. None when the host's mipart plans no rollout (too old)."""
    found = plan.get("rollout")
    if found is None:
        return None
    planned = {u["service"]: 0 for u in plan["upstreams"]}
    for spec in plan["instances"]:
        planned[spec["service"]] += 1
    floor = {s: min([n] + [step["capacity"].get(s, n) for step in found["steps"]]) for s, n in planned.items()}
    outage = found["mode"] == "host-wide" or any(found["dark"].values())
    return dict(found, outage=outage, capacity=floor)


def describe_rollout(facts):
    """One line: how the change reaches the host, and what each service keeps serving meanwhile."""
    if facts["mode"] == "none":
        return f"none: {facts['reason']}"
    keeps = ", ".join(f"{service} keeps {n}" for service, n in sorted(facts["capacity"].items()))
    return f"{facts['mode']}: {facts['reason']}; {keeps}"


def _short(digest):
    return digest[:12] or "none"
