"""Who holds a listening TCP address, as the kernel reports it (/proc/net/tcp and tcp6), and text fit for a terminal.

`mipart status` believes an answer only from a listener root (or its own user) holds: any user
may listen on 127.0.0.1:8049 while the agent is not (issue 20: a squatted API address), and
answer a perfect "all ready". The tables list the sockets of the reader's network namespace,
the one it connects in; their uid column is the socket's owner, which its holder cannot change.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import unicodedata
from pathlib import Path

LISTEN = "0A"
TABLES = (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6))


def _address(hex_ip: str, family: int) -> str:
    """An address as /proc/net/tcp writes it (32-bit words in host byte order), as text."""
    words = [int(hex_ip[i : i + 8], 16) for i in range(0, len(hex_ip), 8)]
    return socket.inet_ntop(family, b"".join(struct.pack("=I", word) for word in words))


def listener_uids(host: str, port: int) -> set[int]:
    """The owners of the listening sockets a connection to host:port may reach (a wildcard listener
    on the port included); empty when none is listed (another namespace, another host)."""
    try:
        wanted = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, ValueError):
        return set()
    owners = set()
    for path, family in TABLES:
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 8 or cols[3] != LISTEN:
                continue
            hex_ip, _, hex_port = cols[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            local = ipaddress.ip_address(_address(hex_ip, family))
            if local in wanted or local.is_unspecified:
                owners.add(int(cols[7]))
    return owners


def printable(text: str) -> str:
    """TEXT with every control and format character (escape sequences, bidi overrides) shown as `?`:
    what `mipart status` prints comes partly from the instances' own log lines."""
    return "".join("?" if unicodedata.category(c)[0] == "C" else c for c in text)
