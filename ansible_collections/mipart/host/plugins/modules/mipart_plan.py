#!/usr/bin/python
"""The host's plan for a profile, as facts: what `mipart plan --json` says, and whether applying it changes the host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mipart_plan
short_description: What applying a mipart profile would do to a host, as facts
description:
  - Runs the host's own C(mipart plan --json) on the profile (by default C(/etc/mipart/profile.yaml), or the
    text given as O(content) or O(src), planned from a temporary file), which gives the partition writes,
    whether a driver reload is needed, the instances, the upstreams and the rollout (how the change reaches
    the host, not at all, GPU by GPU while the rest serves, or host-wide with the host out of service).
  - Reads C(mipart status --json) to learn which profile the agent runs and what the host's readiness path
    answers.
  - Sets the fact C(mipart_plan) and reports C(changed) when applying the profile would change the
    host (partition writes, a driver reload, a profile the agent has not loaded, an agent that is not
    running); C(changes) says which, one a line. It changes nothing itself.
  - C(outage) tells a playbook whether to drain the host first (M(mipart.host.mipart_drain)), true when the
    change is host-wide or a step of a rolling one leaves a service with no instance.
version_added: 1.0.0
author: mipart authors (@mipart)
extends_documentation_fragment:
  - mipart.host.host
  - mipart.host.host.agent
options:
  content:
    description:
      - A profile's text to plan instead of the file O(profile), for instance the one a later
        M(mipart.host.mipart_profile) task puts there; it is written to a temporary file only.
      - The agent's status is still asked at the address O(profile) gives.
    type: str
    version_added: 1.1.0
  src:
    description:
      - A profile file on the controller, read byte for byte by this module's action plugin and sent as
        O(content) (as M(mipart.host.mipart_profile) does).
    type: path
    version_added: 1.1.0
attributes:
  check_mode:
    support: full
    description: The module only reads; check mode reports the same.
  diff_mode:
    support: none
    description: It writes no file to show a difference of.
  facts:
    support: full
    description: Sets the fact C(mipart_plan).
seealso:
  - module: mipart.host.mipart_profile
  - module: mipart.host.mipart_drain
  - module: mipart.host.mipart_apply
"""

EXAMPLES = r"""
- name: What the new profile would do
  mipart.host.mipart_plan:
  register: plan

- name: Say when a host needs a driver reload
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} reloads its GPU driver"
  when: ansible_facts.mipart_plan.partition.reload

- name: Plan a profile from the controller before it is put on the host
  mipart.host.mipart_plan:
    src: profiles/chat.yaml
  register: plan

- name: Drain the host first when the change takes it out of service
  mipart.host.mipart_drain:
    reason: "rollout: {{ plan.rollout.reason }}"
  when: plan.outage
"""

RETURN = r"""
digest:
  description: The planned profile's digest (C(mipart validate --json)).
  returned: always
  type: str
loaded_digest:
  description: The digest of the profile the agent runs; empty when it does not answer.
  returned: always
  type: str
changes:
  description: Why applying the profile would change the host, one a line; empty when it would not.
  returned: always
  type: list
  elements: str
  sample: ["2 partition write(s) on GPU(s) 0, 1", "the agent loads profile 3f0a5e2b9c1d (it runs 77aa01c4e5f6)"]
outage:
  description:
    - Whether the host's service listeners go dark while the change runs (RV(rollout.mode) C(host-wide), or a
      step that leaves a service no instance); drain the host before applying it.
  returned: always
  type: bool
rollout:
  description: How the change reaches the host, from C(mipart plan --json), with RV(outage) and RV(rollout.capacity).
  returned: always
  type: dict
  contains:
    mode:
      description: C(none) (no repartition), C(rolling) (GPU by GPU while the rest serves) or C(host-wide).
      type: str
      sample: rolling
    reason:
      description: Why this mode, in mipart's words.
      type: str
    steps:
      description: The rolling steps, in order; each with C(gpus), the instances it C(stop)s and C(start)s, and
        each service's C(capacity) (instances serving) during it.
      type: list
      elements: dict
    dark:
      description: The steps during which a service has no instance, by service.
      type: dict
    capacity:
      description: The fewest instances each service keeps serving while the change runs, as the steps count them
        (0 in a host-wide change); with no repartition, the instances the profile plans.
      type: dict
      sample: {"chat": 2}
    description:
      description: The rollout in one line.
      type: str
      sample: "rolling: compute changes on GPUs 1 need no driver reload: 1 steps; chat keeps 2"
readiness:
  description: What the host's readiness path answers, as the agent reports it (C(ready), C(reason), C(since),
    C(drained)); null when the agent does not answer.
  returned: always
  type: dict
ansible_facts:
  description: The plan.
  returned: always
  type: dict
  contains:
    mipart_plan:
      description: What C(mipart plan --json) printed, with RV(digest), RV(loaded_digest), RV(changes), RV(outage),
        RV(rollout) and RV(readiness).
      type: dict
      contains:
        partition:
          description: The partition plan (C(reload), C(writes), C(gpus), C(logical_gpus), C(rules), C(warnings)).
          type: dict
        instances:
          description: The instance specs the profile plans on this host.
          type: list
          elements: dict
        upstreams:
          description: Each service's listener, model, routing and servers.
          type: list
          elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mipart.host.plugins.module_utils.cli import DEFAULT_PROFILE, Mipart
from ansible_collections.mipart.host.plugins.module_utils.reports import (
    describe_rollout,
    loaded_digest,
    plan_changes,
    readiness,
    rollout,
)
from ansible_collections.mipart.host.plugins.module_utils.staging import stage


def main():
    module = AnsibleModule(
        argument_spec={
            "profile": {"type": "path", "default": DEFAULT_PROFILE},
            "api": {"type": "str"},
            "content": {"type": "str"},
            "src": {"type": "path"},
        },
        mutually_exclusive=[("content", "src")],
        supports_check_mode=True,
    )
    if module.params["src"] is not None:
        module.fail_json(
            msg="src is read on the controller by the action plugin; call the module as mipart.host.mipart_plan"
        )
    mipart, profile = Mipart(module), module.params["profile"]
    content = module.params["content"]
    planned = profile if content is None else stage(content, module.tmpdir)
    valid, problems = mipart.validate(planned)
    if valid is None:
        named = profile if content is None else "the profile given as content"
        problems = [line.replace(planned, named) for line in problems]
        module.fail_json(msg=f"mipart refuses {named}: {problems[0]}", problems=problems)
    plan = mipart.plan(planned)
    facts = rollout(plan)
    if facts is None:
        module.fail_json(
            msg="this host's `mipart plan --json` gives no rollout: its mipart predates rolling repartition; upgrade it"
        )
    facts["description"] = describe_rollout(facts)
    report = mipart.status(profile, module.params["api"])
    changes = plan_changes(plan, report, valid["digest"])
    result = {
        "digest": valid["digest"],
        "loaded_digest": loaded_digest(report),
        "changes": changes,
        "outage": facts["outage"],
        "rollout": facts,
        "readiness": readiness(report),
    }
    module.exit_json(changed=bool(changes), ansible_facts={"mipart_plan": dict(plan, **result)}, **result)


if __name__ == "__main__":
    main()
