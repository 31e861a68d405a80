"""Total validation, as a property: for profiles generated from the schema (valid-ish and
mutated) and for garbage, `mipart validate` either accepts and then the profile plans,
renders and execs, or it rejects with located `PATH:LINE:COL: ...` lines only.

Runs with a fixed seed (derandomize) and bounded example counts; tests/nginx/test_profile_nginx.py
feeds a sample of the accepted ones to the real `nginx -t`.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profilegen import PATH, SETTINGS, assert_located, profile_text, serve_or_refuse, sim_backend

from mipart.profile.load import check_profile, load_profile
from mipart.profile.problems import ProfileError


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return sim_backend(tmp_path_factory.mktemp("host"))


@settings(max_examples=250, **SETTINGS)
@given(text=profile_text())
def test_accepted_profiles_serve_and_rejected_ones_get_located_lines(text, backend):
    serve_or_refuse(text, backend)


@settings(max_examples=60, **SETTINGS)
@given(text=profile_text(rate=0.0))
def test_valid_by_construction_profiles_are_accepted(text, backend):
    """The generator's good values are good: without hostile values every profile passes, and serves."""
    check_profile(text, PATH)
    serve_or_refuse(text, backend)


YAMLISH = st.text(
    st.sampled_from(list("version: 1\nservices:gpus{}[]-,'\"!&*|>%@`\t?#~.0123456789abcDPX") + ["\u2028", "\x85", "٣"]),
    max_size=400,
)


@settings(max_examples=300, **SETTINGS)
@given(raw=st.one_of(st.binary(max_size=600), YAMLISH.map(str.encode)))
def test_garbage_never_raises_anything_but_located_lines(raw, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "garbage.yaml"
    path.write_bytes(raw)
    try:
        load_profile(str(path))
    except ProfileError as exc:
        assert_located(exc, str(path))
