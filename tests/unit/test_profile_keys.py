"""The key table (profile/keys.py) against what reads and shows it: the loader, the dataclasses'
defaults and docs/profile.md. A key in one but not the other fails here."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from conftest import REPO

from mipart.profile import keydoc
from mipart.profile.durations import parse_ms
from mipart.profile.keys import CHILDREN, KEYS, KINDS, ROWS, Key, children
from mipart.profile.load import check_profile
from mipart.profile.problems import ProfileError
from mipart.profile.schema import (
    ApiSpec,
    GenerationProbe,
    GpuSpec,
    HealthSpec,
    InstancesSpec,
    Profile,
    RolloutSpec,
    ServiceSpec,
)
from mipart.profile.sections import BY_KIND, BY_SECTION

PAGE = REPO / "docs" / "profile.md"
VALUE = "__value__"
STRANGER = "zzzzzz"  # close to no key, so the loader lists the allowed ones


def profile_with(path: str, value: str) -> str:
    """A valid profile but for `value` (YAML text) at `path`, where '*' is service s, '[]' item 0."""
    tree: dict = {"version": 1, "services": {"s": {"model": "org/m", "listen": 8040}}}
    node, parts = tree, path.split(".")
    for part in parts[:-1]:
        part = "s" if part == "*" else part
        if part.endswith("[]"):
            node = node.setdefault(part[:-2], [{"select": [0], "compute": "DPX"}])[0]
        else:
            node = node.setdefault(part, {})
    last = "s" if parts[-1] == "*" else parts[-1]
    node[last] = VALUE
    return yaml.safe_dump(tree, sort_keys=False).replace(VALUE, value)


def concrete(path: str) -> str:
    """The path as the loader names it in a problem about service s and the first override."""
    return path.replace("*", "s").replace("[]", "[0]") or "profile"


def problems(text: str) -> list[str]:
    with pytest.raises(ProfileError) as refused:
        check_profile(text)
    return [p.message for p in refused.value.problems]


# -- the table itself --------------------------------------------------------------------------


def test_every_kind_is_described_and_checked_once():
    assert {row.kind for row in ROWS} <= set(KINDS)
    assert set(BY_KIND).isdisjoint(BY_SECTION)
    assert set(KINDS) == set(BY_KIND) | set(BY_SECTION)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.path)
def test_bounds_and_defaults_are_of_the_rows_kind(row: Key):
    if row.kind in ("duration", "integer", "version", "physical GPUs", "logical GPUs"):
        low, high = row.span
        assert low <= high
    if row.kind == "choice" or row.kind == "routing":
        assert row.choices and (row.default is None or row.default in row.choices)
    if row.default is not None and row.kind in ("duration", "integer"):
        value = parse_ms(row.default, row.bounds)[0] if row.kind == "duration" else int(row.default)
        assert row.low <= value <= row.high
    assert not (row.required and row.default is not None), "a required key has no default"
    assert row.parent in KEYS or row.parent == "" or row.parent.endswith("[]"), "a key outside any mapping"


# -- the loader knows exactly the table's keys -------------------------------------------------


@pytest.mark.parametrize("path", sorted(p for p in CHILDREN if p != "services"), ids=lambda p: p or "top")
def test_each_mapping_allows_exactly_the_tables_keys(path: str):
    """The loader's answer to an unknown key lists what it allows: the table's children, no more."""
    if path:
        text = profile_with(f"{path}.{STRANGER}", "1")
    else:
        text = profile_with("version", "1") + f"{STRANGER}: 1\n"
    expected = f"unknown key {concrete(path)}.{STRANGER}; allowed keys are {', '.join(children(path))}"
    assert expected in problems(text)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.path)
def test_the_loader_checks_every_key_of_the_table(row: Key):
    """A list of a list fits no key: each key is read and its value refused, naming where."""
    where = concrete(row.path)
    found = problems(profile_with(row.path, "[[]]"))
    assert not [p for p in found if p.startswith("unknown key")], found
    assert [p for p in found if re.match(re.escape(where) + r"[ .\[]", p)], found


# -- the dataclasses' defaults are the table's -------------------------------------------------

# Where each mapping's values land in a loaded Profile, and the dataclass that holds its defaults.
BUILT = {
    "gpus": (GpuSpec, lambda p: p.gpus),
    "gpus.rollout": (RolloutSpec, lambda p: p.gpus.rollout),
    "instances": (InstancesSpec, lambda p: p.instances),
    "health": (HealthSpec, lambda p: p.health),
    "api": (ApiSpec, lambda p: p.api),
    "services.*": (ServiceSpec, lambda p: p.services[0]),
    "services.*.health.generation_probe": (GenerationProbe, lambda p: p.services[0].generation_probe),
}
FIELD = {"services.*.health": "generation_probe"}  # keys whose dataclass field is named otherwise


def field_default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


OPTIONAL = [row for row in ROWS if not row.required and row.parent in BUILT]


def test_every_key_with_a_default_is_compared():
    assert {row.path for row in ROWS if row.default is not None} <= {row.path for row in OPTIONAL}


@pytest.mark.parametrize("row", OPTIONAL, ids=lambda r: r.path)
def test_dataclass_defaults_equal_the_tables(row: Key):
    """The table's default, written into a profile as the docs show it, loads as the dataclass default."""
    cls, built = BUILT[row.parent]
    default = field_default(cls, FIELD.get(row.path, row.name))
    if row.default is None:
        assert default is None
        return
    loaded = check_profile(profile_with(row.path, row.default))
    assert getattr(built(loaded), FIELD.get(row.path, row.name)) == default


def test_the_profile_version_is_the_one_the_table_takes():
    assert KEYS["version"].span == (Profile().version, Profile().version)


# -- docs/profile.md ---------------------------------------------------------------------------


def documented_keys() -> set[str]:
    page = PAGE.read_text()
    table = page.partition(keydoc.BEGIN)[2].partition(keydoc.END)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", table, re.M))


def test_docs_list_every_key_of_the_schema():
    missing = set(KEYS) - documented_keys()
    assert not missing, f"docs/profile.md lacks {sorted(missing)}: run python -m mipart.profile.keydoc docs/profile.md"


def test_docs_list_no_key_the_schema_lacks():
    extra = documented_keys() - set(KEYS)
    assert not extra, f"docs/profile.md lists {sorted(extra)}, which the schema lacks"


def test_docs_table_is_the_one_the_schema_writes():
    page = PAGE.read_text()
    assert keydoc.with_tables(page) == page, "run python -m mipart.profile.keydoc docs/profile.md"


def test_keydoc_rewrites_the_page_between_its_markers(tmp_path):
    page = tmp_path / "profile.md"
    page.write_text(f"# head\n{keydoc.BEGIN}\nstale\n{keydoc.END}\ntail\n")
    assert keydoc.main([str(page)]) == 0
    assert page.read_text() == f"# head\n{keydoc.BEGIN}\n{keydoc.tables()}\n{keydoc.END}\ntail\n"
    page.write_text("no markers\n")
    assert keydoc.main([str(page)]) == 1
