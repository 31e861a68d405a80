"""Reading one mapping of the profile by its rows in the key table (profile/keys.py).

The mapping's allowed and required keys come from the table, and each value whose kind needs
no context is checked here by its kind and bounds. What needs other values (the overrides, a
service's health and routing, cross-key rules) is left to the section's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from mipart.profile import fields as f
from mipart.profile import keys
from mipart.profile.keys import Key

Check = Callable[[f.Checker, yaml.Node, str, Key], Any]

BY_KIND: dict[str, Check] = {
    "integer": lambda c, n, w, k: c.integer(n, w, k.low, k.high),
    "duration": lambda c, n, w, k: c.duration(n, w, k.bounds),
    "choice": lambda c, n, w, k: c.enum(n, w, k.choices),
    "physical GPUs": lambda c, n, w, k: c.index_set(n, w, "physical GPU", k.span[1]),
    "logical GPUs": lambda c, n, w, k: c.index_set(n, w, "logical GPU", k.span[1]),
    "unit names": lambda c, n, w, k: c.unit_names(n, w),
    "model": lambda c, n, w, k: c.model(n, w),
    "name": lambda c, n, w, k: c.safe_token(n, w),
    "listen": lambda c, n, w, k: c.listen(n, w),
    "api listen": lambda c, n, w, k: c.api_listen(n, w),
    "image": lambda c, n, w, k: c.image(n, w),
    "argv": lambda c, n, w, k: c.argv(n, w, non_empty=bool(k.low)),
    "env": lambda c, n, w, k: c.env(n, w),
    "paths": lambda c, n, w, k: c.env_files(n, w),
    "directory": lambda c, n, w, k: c.cache_dir(n, w),
    "user": lambda c, n, w, k: c.user_name(n, w),
    "header": lambda c, n, w, k: c.header_name(n, w),
}
# Kinds whose check needs more than the value: the section that holds them checks them.
BY_SECTION = ("version", "mapping", "overrides", "routing")


Section = tuple[dict[str, yaml.Node] | None, dict[str, Any]]


def read_section(c: f.Checker, node: yaml.Node, path: str, where: str) -> Section:
    """(value nodes by key, or None when it is no mapping; checked values by key, None where bad)."""
    items = c.mapping(node, where, keys.children(path), required=keys.required(path))
    if items is None:
        return None, {}
    values: dict[str, Any] = {}
    for row in keys.CHILDREN[path]:
        if row.name in items and row.kind in BY_KIND:
            values[row.name] = BY_KIND[row.kind](c, items[row.name], f"{where}.{row.name}", row)
    return items, values
