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


def instances(report):
    listed = report.get("instances", [])
    return listed["instances"] if isinstance(listed, dict) else listed


def pending(report, digest):
    """What keeps the host from serving the profile DIGEST as it asks; [] once it does.

    Served means: the agent loaded that profile, no repartition runs, the partitions match it,
    and every instance is in rotation (a generation probe that fails takes its instance out).
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


def _short(digest):
    return digest[:12] or "none"
