"""`mipart agent` options that do not fit together are one usage line, before anything starts."""

from __future__ import annotations

from conftest import mipart


def test_stop_on_exit_needs_the_process_runner(tmp_path):
    done = mipart("agent", "--stop-on-exit", "--profile", tmp_path / "missing.yaml")
    assert done.returncode == 2
    assert "--stop-on-exit works with --runner process only" in done.stderr
    assert "Traceback" not in done.stderr
