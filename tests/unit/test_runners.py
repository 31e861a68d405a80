"""Every registered runner satisfies the runner protocol, by name and by signature."""

from __future__ import annotations

import importlib
import inspect

import pytest

from mipart.runners import RUNNERS, make_runner
from mipart.runners.base import Runner

PROTOCOL_METHODS = ("list_instances", "start", "stop", "restart", "ensure_nginx", "nginx_running")


def runner_class(kind: str) -> type:
    module, name = RUNNERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def test_systemd_and_process_are_registered():
    assert sorted(RUNNERS) == ["process", "systemd"]


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_each_runner_is_a_runner(kind, tmp_path):
    runner = make_runner(kind, tmp_path)  # building one touches neither D-Bus nor a process
    assert isinstance(runner, Runner)


@pytest.mark.parametrize("kind", sorted(RUNNERS))
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_each_method_takes_what_the_protocol_says(kind, method):
    expected = inspect.signature(getattr(Runner, method))
    actual = inspect.signature(getattr(runner_class(kind), method))
    assert list(actual.parameters) == list(expected.parameters)
    assert actual.return_annotation == expected.return_annotation
