"""Total validation against the real nginx: every generated profile `mipart validate` accepts
(and this host can plan) renders both layers' nginx.conf, and `nginx -t` passes each.

The generator (tests/profilegen.py) listens on loopback only here, on a block of ports found
free, and on unix sockets in a directory of the test's own; a fixed seed and a bounded
example count keep it short.
"""

from __future__ import annotations

import socket
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profilegen import SETTINGS, profile_text, serve_or_refuse, sim_backend

from mipart.nginx.files import TEMP_DIRS, NginxFiles, check_config
from mipart.sim.ports import free_block

pytestmark = pytest.mark.nginx


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """The simulated host, a short socket directory (sun_path is 108 bytes), free ports, IPv6 or not."""
    with tempfile.TemporaryDirectory(prefix="mp-") as sockets:
        yield (
            sim_backend(tmp_path_factory.mktemp("host")),
            sockets,
            free_block(500, low=23000, high=29500),
            ipv6_loopback(),
        )


@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_every_accepted_profile_passes_nginx_t(data, place, tmp_path_factory):
    backend, sockets, ports, ipv6 = place
    text = data.draw(
        profile_text(
            sock_dir=sockets,
            loopback_only=True,
            rate=data.draw(st.sampled_from([0.0, 0.0, 0.02])),
            port_base=ports,
            ipv6=ipv6,
        ),
        label="profile",
    )
    prefix = tmp_path_factory.mktemp("host") / "nginx"
    confs = serve_or_refuse(text, backend, prefix)
    if confs is None:
        return
    for layer, conf in zip(("back", "front"), confs, strict=True):
        files = NginxFiles(prefix.parent / ("nginx" if layer == "back" else "nginx-front"), layer)
        for name in TEMP_DIRS:
            (files.prefix / name).mkdir(parents=True)
        files.conf.write_text(conf)
        check_config(files, files.conf)  # NginxRejected carries nginx's own line
