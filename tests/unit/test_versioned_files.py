"""The versioned files between mipart's parts: the instance spec and the partition record."""

from __future__ import annotations

import json

import pytest
from specs import SPEC

from mipart.partition.apply import ApplyResult
from mipart.partition.record import RECORD_NAME, RECORD_VERSION, last_apply, record_apply
from mipart.serving.spec import SPEC_VERSION, InstanceSpec, SpecVersionError


def test_a_spec_file_carries_its_version_and_reads_back():
    data = json.loads(SPEC.file_text())
    assert data["version"] == SPEC_VERSION == 2
    assert InstanceSpec.from_file_text(SPEC.file_text()) == SPEC


def test_a_spec_file_from_before_versions_is_version_1_and_refused():
    """Version 1 (and the files before versions) had instances on loopback ports."""
    legacy = json.dumps(SPEC.to_json(), indent=1, sort_keys=True) + "\n"
    assert "version" not in legacy
    with pytest.raises(SpecVersionError, match="^version 1, but this mipart reads version 2$"):
        InstanceSpec.from_file_text(legacy)


@pytest.mark.parametrize("version", [1, 3])
def test_a_spec_file_of_another_version_is_refused(version):
    with pytest.raises(SpecVersionError) as caught:
        InstanceSpec.from_file_text(json.dumps({**SPEC.to_json(), "version": version}))
    assert str(caught.value) == f"version {version}, but this mipart reads version 2"


def test_the_digest_is_about_the_server_not_the_file_format():
    assert "version" not in SPEC.to_json()
    assert SPEC.digest() == InstanceSpec.from_file_text(SPEC.file_text()).digest()


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIPART_RUN_DIR", str(tmp_path))
    return tmp_path


def test_the_partition_record_carries_its_version(run_dir):
    record_apply(True, "abc", ApplyResult(writes=2, reloads=1, logical_gpus=16))
    stored = json.loads((run_dir / RECORD_NAME).read_text())
    assert stored["version"] == RECORD_VERSION == 1
    assert stored["ok"] is True and stored["result"]["reloads"] == 1
    assert last_apply() == stored


def test_a_record_from_before_versions_reads_as_version_1(run_dir):
    old = {"time": 1700000000.5, "ok": False, "error": "GPU busy", "profile_digest": "abc", "result": None}
    (run_dir / RECORD_NAME).write_text(json.dumps(old))
    assert last_apply() == {**old, "version": 1}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"version": 2, "time": 1.0, "ok": True}),  # a newer mipart's format: not guessed at
        "[1, 2]",
        "{not json",
    ],
)
def test_a_record_this_mipart_cannot_read_is_none(run_dir, text):
    (run_dir / RECORD_NAME).write_text(text)
    assert last_apply() is None


def test_no_record_is_none(run_dir):
    assert last_apply() is None
