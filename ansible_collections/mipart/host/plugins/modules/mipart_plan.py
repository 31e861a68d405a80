#!/usr/bin/python
"""The host's plan for a profile, as facts: what `mipart plan --json` says, and whether applying it changes the host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mipart_plan
short_description: What applying a mipart profile would do to a host, as facts
description:
  - Runs the host's own C(mipart plan --json) on the profile (by default C(/etc/mipart/profile.yaml)),
    which gives the partition writes, whether a driver reload is needed, the instances and the upstreams.
  - Reads C(mipart status --json) to learn which profile the agent runs.
  - Sets the fact C(mipart_plan) and reports C(changed) when applying the profile would change the
    host (partition writes, a driver reload, a profile the agent has not loaded, an agent that is not
    running); C(changes) says which, one a line. It changes nothing itself.
version_added: 1.0.0
author: mipart authors (@mipart)
extends_documentation_fragment:
  - mipart.host.host
  - mipart.host.host.agent
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
ansible_facts:
  description: The plan.
  returned: always
  type: dict
  contains:
    mipart_plan:
      description: What C(mipart plan --json) printed, with RV(digest), RV(loaded_digest) and RV(changes).
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
from ansible_collections.mipart.host.plugins.module_utils.reports import loaded_digest, plan_changes


def main():
    module = AnsibleModule(
        argument_spec={"profile": {"type": "path", "default": DEFAULT_PROFILE}, "api": {"type": "str"}},
        supports_check_mode=True,
    )
    mipart, profile = Mipart(module), module.params["profile"]
    valid, problems = mipart.validate(profile)
    if valid is None:
        module.fail_json(msg=f"mipart refuses {profile}: {problems[0]}", problems=problems)
    plan = mipart.plan(profile)
    report = mipart.status(profile, module.params["api"])
    changes = plan_changes(plan, report, valid["digest"])
    facts = dict(plan, digest=valid["digest"], loaded_digest=loaded_digest(report), changes=changes)
    module.exit_json(
        changed=bool(changes),
        digest=valid["digest"],
        loaded_digest=facts["loaded_digest"],
        changes=changes,
        ansible_facts={"mipart_plan": facts},
    )


if __name__ == "__main__":
    main()
