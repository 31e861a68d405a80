"""The agent's profile reload (daemon.profiles): whatever goes wrong, one line and the last good profile kept."""

from __future__ import annotations

import asyncio
import threading

import pytest
from eventlog import Log

from mipart.daemon import profiles

GOOD = "version: 1\nservices:\n  chat: {model: org/m, listen: 8040}\n"


def test_a_crash_inside_validation_is_one_line_and_nothing_is_adopted(tmp_path, monkeypatch):
    path = tmp_path / "profile.yaml"
    path.write_text(GOOD)

    def broken(_path):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(profiles, "load_profile", broken)
    log = Log()
    profile, error = profiles.read_profile(str(path), log, "0123456789abcdef")
    assert profile is None
    assert error == (
        f"{path}: the profile could not be checked (RecursionError: maximum recursion depth exceeded); "
        "the last good profile is kept; please report this with the file"
    )
    [(level, event, fields)] = log.events
    assert (level, event, fields["kept"]) == ("error", "profile.check_failed", "0123456789ab") and fields[
        "at"
    ].endswith(".py:" + fields["at"].rsplit(":", 1)[1])


def test_reading_off_the_event_loop_keeps_the_loop_running_and_is_bounded(tmp_path, monkeypatch):
    path = tmp_path / "profile.yaml"
    path.write_text(GOOD)
    release = threading.Event()
    threads = []

    def slow(_path):
        threads.append(threading.current_thread())
        release.wait(10)
        raise AssertionError("given up on: its answer must be dropped")

    monkeypatch.setattr(profiles, "load_profile", slow)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        result = await profiles.read_profile_off_loop(str(path), Log(), "", timeout=0.3)
        task.cancel()
        release.set()  # the thread ends; asyncio.run() waits for it
        return result, ticks

    (profile, error), ticks = asyncio.run(scenario())
    assert (
        profile is None and error == f"{path}: reading the profile took longer than 0.3s; the last good profile is kept"
    )
    assert ticks > 3  # the loop ran while the profile was read
    assert threads and threads[0] is not threading.main_thread()


def test_a_good_profile_read_off_the_loop_is_returned(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text(GOOD)
    profile, error = asyncio.run(profiles.read_profile_off_loop(str(path), Log(), ""))
    assert error == "" and profile.services[0].name == "chat"


def test_validate_turns_a_crash_inside_validation_into_one_line(tmp_path, monkeypatch, capsys):
    from mipart.cli import main

    path = tmp_path / "profile.yaml"
    path.write_text(GOOD)

    def broken(_text, _path):
        raise MemoryError("out of memory")

    monkeypatch.setattr("mipart.profile.load.check_profile", broken)
    with pytest.raises(SystemExit) as exited:
        main(["validate", str(path)])
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: the profile could not be checked (MemoryError: out of memory); please report this with the file"
    ]
