#!/usr/bin/python
"""Drain a mipart host (its readiness path answers 503, so load balancers stop sending) or undrain it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mipart_drain
short_description: Take a mipart host out of its load balancers' rotation, or put it back
description:
  - Every service listener of a mipart host answers C(GET /mipart/ready) for load balancers that
    health-check it. A drained host answers C(503) there, with its reason, so balancers stop sending it new
    requests; its instances keep serving whoever still sends. The state survives agent restarts and reboots.
  - O(state=drained) runs the host's C(mipart drain --json), with C(--wait) when O(wait) is set, which returns
    once every service's readiness path answers C(503) and the profile's C(gpus.drain_notice) has passed since,
    which is the time balancers were given to notice.
  - O(state=undrained) runs C(mipart undrain --json), which returns once the readiness path answers C(200)
    again.
  - A host already in the wanted state is left alone (C(changed=false)); a drained host keeps the reason it
    was drained for.
  - Returns what the host's readiness path answers afterwards, as the agent reports it in C(mipart status).
version_added: 1.1.0
author: mipart authors (@mipart)
extends_documentation_fragment:
  - mipart.host.host
  - mipart.host.host.agent
options:
  state:
    description:
      - Whether the host should be drained or serve its load balancers' traffic.
    type: str
    choices: [drained, undrained]
    default: drained
  reason:
    description:
      - Why the host is drained, shown in its readiness answer (after C(drained), then a colon) and in C(mipart status).
      - Used only when the host is not drained yet. mipart takes one line of at most 200 characters; by default
        its own (C(maintenance)).
    type: str
  wait:
    description:
      - With O(state=drained), return only once every readiness path answers C(503) and C(gpus.drain_notice)
        has passed (C(mipart drain --wait)).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reads whether the host is drained and reports what would change; runs no drain.
  diff_mode:
    support: none
    description: It writes no file to show a difference of.
notes:
  - Draining changes only what the readiness path answers; a load balancer that does not check it keeps sending.
seealso:
  - module: mipart.host.mipart_plan
  - module: mipart.host.mipart_apply
"""

EXAMPLES = r"""
- name: Take the host out of the balancers and wait out the notice
  mipart.host.mipart_drain:
    reason: "rollout: memory mode NPS2 needs a driver reload"

- name: Put it back once it serves the new profile
  mipart.host.mipart_drain:
    state: undrained
"""

RETURN = r"""
drained:
  description: Whether the host is drained now (or would be, in check mode).
  returned: always
  type: bool
reason:
  description: Why the host is drained; null when it is not.
  returned: always
  type: str
  sample: "rollout: memory mode NPS2 needs a driver reload"
since:
  description: When the host was drained (RFC 3339, UTC); null when it is not.
  returned: always
  type: str
  sample: "2026-12-07T10:00:00Z"
readiness:
  description:
    - What the readiness path answers, as the agent reports it (C(ready), C(reason), C(since), C(drained));
      null when the agent does not answer.
  returned: always
  type: dict
  sample: {"ready": false, "reason": "drained: rollout", "since": "2026-12-07T10:00:00Z", "drained": true}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mipart.host.plugins.module_utils.cli import DEFAULT_PROFILE, Mipart
from ansible_collections.mipart.host.plugins.module_utils.reports import drain_reason, readiness


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["drained", "undrained"], "default": "drained"},
            "reason": {"type": "str"},
            "wait": {"type": "bool", "default": True},
            "profile": {"type": "path", "default": DEFAULT_PROFILE},
            "api": {"type": "str"},
        },
        supports_check_mode=True,
    )
    mipart, want = Mipart(module), module.params["state"] == "drained"
    profile, api = module.params["profile"], module.params["api"]
    if module.check_mode:
        report = mipart.status(profile, api)
        ready = readiness(report)
        if ready is None:
            module.warn("mipart-agent does not answer, so whether the host is drained is not known; assumed not")
        now = drain_reason(report)
        module.exit_json(
            changed=(now is not None) != want,
            drained=want,
            reason=(now or module.params["reason"]) if want else None,
            since=ready["since"] if want and now is not None else None,
            readiness=ready,
        )
    if want:
        done = mipart.drain(profile, module.params["reason"], module.params["wait"])
    else:
        done = mipart.undrain(profile)
    report = mipart.status(profile, api)
    module.exit_json(
        changed=bool(done["changed"]),
        drained=bool(done["drained"]),
        reason=done.get("reason"),
        since=done.get("since"),
        readiness=readiness(report),
    )


if __name__ == "__main__":
    main()
