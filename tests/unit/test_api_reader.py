"""Reading the status responses back (api.reader, through Status/Instances/Instance.from_json): the writer's
own types, refusing another api_version, a missing field and a wrong type in one line, passing over new fields."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import statuses

from mipart.api.contract import ErrorBody, ErrorDetail, Instance, Instances, Status, to_json, to_json_text
from mipart.api.reader import ContractError, read_json


def wire(response) -> dict:
    """What the agent sends, parsed as a reader gets it."""
    return json.loads(to_json_text(response))


def parent_of(data, path: list):
    """The object or array holding the field at `path` (keys and indexes)."""
    for key in path[:-1]:
        data = data[key]
    return data


def refusal(cls, data) -> str:
    with pytest.raises(ContractError) as caught:
        cls.from_json(data)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "response",
    [
        statuses.status(),
        statuses.instances(3),
        statuses.instance(5, state="degraded"),
        ErrorBody(ErrorDetail(404, "no such path: /v2/status")),
    ],
    ids=["status", "instances", "instance", "error"],
)
def test_what_the_writer_sends_reads_back_as_the_same_value(response):
    cls = type(response)
    read = read_json(cls, wire(response), "here") if cls is ErrorBody else cls.from_json(wire(response))
    assert read == response


def test_null_reads_back_where_the_type_allows_it():
    data = wire(statuses.status())
    data["last_apply"] = None
    data["partition"]["matches"] = None
    data["partition"]["gpus"][0]["compute_want"] = None
    read = Status.from_json(data)
    assert read.last_apply is None and read.partition.matches is None and read.partition.gpus[0].compute_want is None


def test_fields_a_reader_does_not_know_are_passed_over():
    """Adding a field keeps api_version, so a newer agent's answer reads."""
    data = wire(statuses.status())
    data["gpu_temperature"] = 70
    data["instances"]["sleeping"] = 2
    data["services"][0]["routing"]["weights"] = [1, 2]
    assert Status.from_json(data) == statuses.status()


@pytest.mark.parametrize("version", [1, 3, 0, "2", None])
def test_another_api_version_is_refused(version):
    data = {**wire(statuses.status()), "api_version": version}
    assert (
        refusal(Status, data) == f"/v1/status: api_version {json.dumps(version)}, but this mipart reads api_version 2"
    )


def test_the_version_is_named_before_the_shape():
    """Another version's answer may have another shape: its version is what is wrong with it."""
    assert refusal(Instances, {"api_version": 1, "items": []}) == (
        "/v1/instances: api_version 1, but this mipart reads api_version 2"
    )
    assert refusal(Status, {"version": "0.1.0"}) == "/v1/status: field api_version missing"


def test_an_instance_of_another_version_in_the_list_is_named_by_its_place():
    data = wire(statuses.instances(3))
    data["instances"][1]["api_version"] = 1
    assert refusal(Instances, data) == "/v1/instances: instances[1].api_version 1, but this mipart reads api_version 2"


@pytest.mark.parametrize(
    "path, where",
    [
        (["instances", "ready"], "instances.ready"),
        (["version"], "version"),
        (["services", 0, "routing", "header"], "services[0].routing.header"),  # nullable, but it must be there
        (["partition", "gpus", 1, "logical_gpus"], "partition.gpus[1].logical_gpus"),
        (["last_apply", "result"], "last_apply.result"),
    ],
)
def test_a_missing_field_is_named_by_its_path(path, where):
    data = wire(statuses.status())
    del parent_of(data, path)[path[-1]]
    assert refusal(Status, data) == f"/v1/status: field {where} missing"


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["instances", "ready"], "3", 'field instances.ready is a string ("3"), not an integer'),
        (["instances", "ready"], True, "field instances.ready is a boolean (true), not an integer"),
        (["instances", "ready"], 3.5, "field instances.ready is a number (3.5), not an integer"),
        (["instances", "ready"], None, "field instances.ready is null, not an integer"),
        (["profile", "loaded"], 1, "field profile.loaded is a number (1), not a boolean"),
        (
            ["profile"],
            "/etc/mipart/profile.yaml",
            'field profile is a string ("/etc/mipart/profile.yaml"), not an object',
        ),
        (["services"], {}, "field services is an object, not an array"),
        (
            ["partition", "gpus", 0, "logical_gpus", 1],
            "1",
            'field partition.gpus[0].logical_gpus[1] is a string ("1"), not an integer',
        ),
        (["partition", "matches"], "yes", 'field partition.matches is a string ("yes"), not a boolean or null'),
        (["last_apply", "result"], [], "field last_apply.result is an array, not an object or null"),
    ],
)
def test_a_wrong_type_is_named_by_its_path_what_it_is_and_what_it_should_be(path, value, message):
    data = wire(statuses.status())
    parent_of(data, path)[path[-1]] = value
    assert refusal(Status, data) == f"/v1/status: {message}"


def test_a_long_value_is_cut_in_the_message():
    data = wire(statuses.status())
    data["version"] = 7 * 10**60
    message = refusal(Status, data)
    assert message.startswith("/v1/status: field version is a number (7000") and "...), not a string" in message
    assert len(message) < 120


@pytest.mark.parametrize(
    "data, kind",
    [([], "an array"), ("<html>", 'a string ("<html>")'), (None, "null"), (1, "a number (1)")],
)
def test_an_answer_that_is_no_object_is_refused_as_a_whole(data, kind):
    assert refusal(Status, data) == f"/v1/status: the answer is {kind}, not an object"


def test_reading_does_not_change_what_it_read():
    data = wire(statuses.status())
    before = copy.deepcopy(data)
    Status.from_json(data)
    assert data == before


def test_the_instance_alone_and_in_the_list_read_alike():
    one = statuses.instance(2)
    assert Instance.from_json(wire(one)) == Instances.from_json(wire(statuses.instances(3))).instances[2] == one
    assert to_json(Instance.from_json(wire(one))) == wire(one)


def test_a_type_the_reader_cannot_read_is_a_bug_said_at_once():
    @dataclass(frozen=True)
    class Odd:
        tags: set[str]

    with pytest.raises(TypeError, match=r"cannot read set\[str\] \(at tags\)"):
        read_json(Odd, {"tags": []}, "here")
