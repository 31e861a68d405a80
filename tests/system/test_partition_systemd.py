"""The partition engine with GPU client units, on a real systemd (booted nspawn container)."""

from __future__ import annotations

import pytest

from .nspawn import Machine, create_sim_host, install_deb

pytestmark = pytest.mark.system

SIM = "/var/lib/mipart-sim"
CLIENT_UNIT = f"""\
[Unit]
Description=A ROCm application holding a GPU (test stand-in)

[Service]
ExecStart=/bin/sleep infinity
ExecStartPost=/bin/sh -c 'mipart sim hold {SIM} 0 --pid $MAINPID'
"""


def _setup(machine: Machine, deb, client_services: str) -> None:
    install_deb(machine, deb)
    create_sim_host(machine, SIM)
    machine.run(
        f"printf 'MIPART_SYSFS_ROOT={SIM}\\nMIPART_RELOAD_CMD=mipart sim reload {SIM}\\n' > /etc/default/mipart"
    )
    machine.run(
        f"cat > /etc/mipart/profile.yaml <<'EOF'\nversion: 1\ngpus: {{compute: DPX, memory: NPS2, client_services: {client_services}}}\nEOF"
    )
    machine.run(f"cat > /etc/systemd/system/gpu-client.service <<'EOF'\n{CLIENT_UNIT}EOF")
    machine.run("systemctl daemon-reload && systemctl start gpu-client.service")


def _pid(machine: Machine, unit: str) -> str:
    return machine.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()


def test_busy_gpu_names_the_pid_and_its_unit_and_changes_nothing(machine: Machine, deb):
    _setup(machine, deb, "[]")
    pid = _pid(machine, "gpu-client.service")
    done = machine.run("MIPART_SYSFS_ROOT=/var/lib/mipart-sim mipart partition apply", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"mipart: GPUs in use: PID {pid} (sleep, gpu-client.service) on GPU 0 (a driver reload needs every /dev/kfd, "
        "card and render node of it closed); nothing was changed: stop these processes, or list their units in "
        "gpus.client_services, then rerun `mipart partition apply`"
    )
    shown = machine.run(f"mipart sim show {SIM} --json").stdout
    assert '"writes": 0' in shown and '"reloads": 0' in shown
    assert machine.run("systemctl is-active gpu-client.service").stdout.strip() == "active"


def test_client_services_are_stopped_and_only_active_ones_restarted(machine: Machine, deb):
    _setup(machine, deb, "[gpu-client.service, idle-client.service]")
    machine.run(
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/idle-client.service && systemctl daemon-reload"
    )
    before = _pid(machine, "gpu-client.service")
    # The boot unit, exactly as at boot: it reads /etc/default/mipart and the profile.
    machine.run("systemctl start mipart-partition.service", timeout=300)
    assert machine.run("systemctl is-active mipart-partition.service").stdout.strip() == "active"
    assert machine.run("MIPART_SYSFS_ROOT=/var/lib/mipart-sim mipart partition assert", check=False).returncode == 0
    assert machine.run("systemctl is-active gpu-client.service").stdout.strip() == "active"
    assert _pid(machine, "gpu-client.service") != before  # stopped for the reload, started again
    assert machine.run("systemctl is-active idle-client.service", check=False).stdout.strip() == "inactive"
    journal = machine.run("journalctl -u mipart-partition.service --no-pager -o cat").stdout
    assert "event='partition.client_stopped' unit='gpu-client.service'" in journal
    assert "event='partition.reload'" in journal
    assert "idle-client" not in journal
