"""Listen addresses read the way nginx (services) and the agent (api.listen) will read them: pure.

nginx takes `port`, `address:port`, `[ipv6]:port` and `unix:path`; it looks host names up
once, when it starts, and reads a relative unix path against its prefix directory; a
unix socket path fits sockaddr_un.sun_path, 108 bytes with its NUL. Each function returns
(value, "") or (None, the rest of a problem line after the field's name). Pure but for
one read: an API socket path has its symbolic links resolved before it is checked.
"""

from __future__ import annotations

import ipaddress
import os
import re

from mipart.names import DEFAULT_RUN_DIR
from mipart.profile.nodes import cut, shown
from mipart.profile.schema import Listen

UNIX_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
SUN_PATH_MAX = 107  # bytes before the NUL in sockaddr_un.sun_path
API_SOCKET_DIR = DEFAULT_RUN_DIR + "/"
LOOPBACK = "127.0.0.1"
EXAMPLE = "e.g. 8040 or 127.0.0.1:8040"
HOST_HINT = "use an IP address such as 127.0.0.1 or [::1], or * or localhost (nginx looks names up only when it starts)"


def parse_port(text: str) -> tuple[int | None, str]:
    if not (text.isascii() and text.isdigit()):
        return None, f"port {shown(text)} is not a number; use 1-65535"
    if len(text) > 1 and text[0] == "0":
        return None, f"port {text} has a leading zero; write it without one"
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        return None, f"port {text} is out of range; use 1-65535"
    return int(text), ""


def parse_listen(text: str) -> tuple[Listen | None, str]:
    """A service's listener: 8040, 127.0.0.1:8040, [::1]:8040, *:8040 or unix:/absolute/path."""
    if text.startswith("unix:"):
        path, error = unix_path(text[5:])
        return (Listen("", 0, path) if path else None), error
    if text.isascii() and text.isdigit():
        port, error = parse_port(text)
        return (Listen("0.0.0.0", port) if port else None), error
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        return None, f"{shown(text)} is not a port or host:port; {EXAMPLE}"
    host, error = parse_host(host)
    if error:
        return None, error
    port, error = parse_port(port_text)
    return (Listen(host, port) if port else None), error


def parse_host(host: str) -> tuple[str, str]:
    """The host as nginx and sockets take it ([::1] -> ::1), or ("", the problem)."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            inner = ""
        if not inner or "%" in inner:  # a zone (fe80::1%eth0) is not for a listener
            return "", f"host {shown(host)} is not an IPv6 address; e.g. [::1]:8040"
        return inner, ""
    if ":" in host:
        return "", f"host {shown(host)} looks like an IPv6 address; put it in brackets, e.g. [::1]:8040"
    if host in ("*", "localhost"):
        return host, ""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return "", f"host {shown(host)} is not an IP address; {HOST_HINT}"
    return host, ""


def unix_path(path: str, under: str = "") -> tuple[str | None, str]:
    if not path.startswith("/"):
        return None, (
            f"socket unix:{cut(path)} is relative, and nginx would read it against its own prefix directory; "
            f"give an absolute path, e.g. unix:{under or '/run/'}NAME.sock"
        )
    if any(part in (".", "..") for part in path.split("/")):
        return (
            None,
            f"socket {shown(path)} is not a plain absolute path: it has a '.' or '..' component; write the path it "
            f"means, e.g. unix:{under or '/run/'}NAME.sock",
        )
    if not UNIX_PATH.fullmatch(path) or path.endswith("/"):
        return None, f"socket {shown(path)} is not a plain absolute path; use letters, digits and . _ / + @ - only"
    if len(path.encode()) > SUN_PATH_MAX:
        return None, f"socket path is {len(path.encode())} bytes; a unix socket path has at most {SUN_PATH_MAX}"
    if under and not path.startswith(under):
        return None, f"socket {shown(path)} must be a plain path under {under}, e.g. unix:{under}api.sock"
    return path, ""


def parse_api_listen(text: str) -> tuple[str | None, str]:
    """The agent's own API: host:port, a bare port (loopback: every other address must be
    written out) or unix:/run/mipart/NAME.sock."""
    if text.startswith("unix:"):
        path, error = unix_path(text[5:], under=API_SOCKET_DIR)
        if path and not resolves_under(path, API_SOCKET_DIR):
            return (
                None,
                f"socket {shown(path)} resolves to {shown(os.path.realpath(path))} through a symbolic link, outside "
                f"{API_SOCKET_DIR}; give a path under {API_SOCKET_DIR} without links",
            )
        return (f"unix:{path}" if path else None), error
    if text.isascii() and text.isdigit():
        port, error = parse_port(text)
        return (f"{LOOPBACK}:{port}" if port else None), error
    listen, error = parse_listen(text)
    if listen is not None and listen.host == "*":
        return None, "host * is nginx's word, the agent binds an address; use 0.0.0.0 or [::] for every address"
    return (str(listen) if listen else None), error


def resolves_under(path: str, directory: str) -> bool:
    """PATH, its symbolic links followed (it need not exist yet), still inside DIRECTORY."""
    top = os.path.realpath(directory)
    return os.path.realpath(path).startswith(top.rstrip("/") + "/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_port(listen: str) -> int | None:
    if listen.startswith("unix:"):
        return None
    return int(listen.rsplit(":", 1)[1])
