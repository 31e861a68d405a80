"""mipart_profile's controller side: read O(src) here, byte for byte, and send it as O(content).

Byte for byte because the agent identifies a profile by the digest of its exact text: the file
lookup's default rstrip would change it.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        src = args.pop("src", None)
        if src is not None:
            if args.get("content") is not None:
                raise AnsibleActionFail("give the profile as src or as content, not both")
            path = self._find_needle("files", src)
            with open(path, "rb") as f:
                args["content"] = to_text(f.read(), errors="surrogate_or_strict")
        result.update(self._execute_module(module_args=args, task_vars=task_vars))
        return result
