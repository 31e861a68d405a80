"""Reading the agent's status API as `mipart status` and `mipart bench sweep` do: over TCP or a unix socket.

Three outcomes besides the response: nothing answers (AgentDown: the caller falls back to
what the units report), something answers but not as mipart's status API does (NotStatusApi:
a user error naming what it answered), or the agent answers 5xx (AgentDown with its message:
it is there but cannot say). A listener another user holds (the kernel's word: its socket's
owner) is not asked at all: any user may listen where the agent would (mipart.listeners).
"""

from __future__ import annotations

import http.client
import json
import os
import socket

from mipart.api.contract import API_VERSION, ErrorBody, R
from mipart.api.reader import ContractError, read_json
from mipart.errors import UserError
from mipart.listeners import listener_uids

TIMEOUT = 2.0
MAX_BODY = 8 << 20  # /v1/instances of 64 instances is about 40 KiB
GLIMPSE = 60  # characters of an answer that is not ours, shown to say what it was


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket (the agent's api.listen: unix:/run/mipart/api.sock)."""

    def __init__(self, socket_path: str, timeout: float = TIMEOUT):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AgentDown(Exception):
    """The agent did not answer; str() is the reason, e.g. 'connection refused'."""


class NotStatusApi(UserError):
    """Something answers there, but not as mipart's status API; str() says where and what it answered."""


class Api:
    """Where the agent answers: host:port, http://host:port, unix:/path or /path."""

    def __init__(self, where: str):
        where = where.strip()
        self.unix = None
        if where.startswith("unix:"):
            self.unix = where[5:]
        elif where.startswith("/"):
            self.unix = where
        else:
            rest = where.split("://", 1)[1] if "://" in where else where
            rest = rest.split("/", 1)[0]
            host, sep, port = rest.rpartition(":")
            if not sep or not port.isdigit():
                host, port = rest, "80"
            if not (port.isascii() and len(port) <= 5 and 1 <= int(port) <= 65535):
                raise UserError(f"--api {where}: port {port} is not a port; use 1-65535, e.g. 127.0.0.1:8049")
            self.host, self.port = host.strip("[]"), int(port)
        self.label = f"unix:{self.unix}" if self.unix else rest

    def read(self, response: type[R]) -> R:
        """GET the response type's path and read it as that type; AgentDown or NotStatusApi when that fails."""
        self._check_listener()
        path = response.path
        code, content_type, body = self._get(path)
        try:
            data = json.loads(body)
        except ValueError:
            raise self._not_ours(
                f"{path} answered {code} ({content_type or 'no Content-Type'}): {glimpse(body)}"
            ) from None
        if code != 200:
            try:
                message = read_json(ErrorBody, data, path).error.message
            except ContractError:
                raise self._not_ours(f"{path} answered {code}: {glimpse(body)}") from None
            if code >= 500:  # the agent is there, and says what went wrong
                raise AgentDown(f"{path} answered {code}: {message}")
            raise self._not_ours(f"{path} answered {code}: {message}")
        try:
            return response.from_json(data)
        except ContractError as exc:
            raise self._not_ours(str(exc)) from None

    def _get(self, path: str) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) of GET `path`; AgentDown when nothing answers."""
        conn = (
            UnixHTTPConnection(self.unix)
            if self.unix
            else http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        )
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read(MAX_BODY + 1)
        except ConnectionRefusedError:
            raise AgentDown("connection refused") from None
        except FileNotFoundError:
            raise AgentDown("no such socket") from None
        except PermissionError:
            raise AgentDown("permission denied; run as root or as a member of the socket's group") from None
        except TimeoutError:
            raise AgentDown(f"no answer within {TIMEOUT:g}s") from None
        except http.client.RemoteDisconnected as exc:  # a BadStatusLine too, but the agent closing, as at its stop
            raise AgentDown(str(exc)) from None
        except http.client.BadStatusLine as exc:
            raise self._not_ours(f"{path}: the answer is not HTTP: {glimpse(str(exc).encode())}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentDown(getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__) from None
        finally:
            conn.close()
        if len(body) > MAX_BODY:
            raise self._not_ours(f"{path} answered {response.status} with more than {MAX_BODY} bytes")
        return response.status, response.getheader("Content-Type", "").split(";")[0].strip(), body

    def _check_listener(self) -> None:
        """NotStatusApi when the listener is another user's: neither root (the agent's) nor ours."""
        if self.unix:
            try:
                owners = {os.lstat(self.unix).st_uid}
            except OSError:
                return  # nothing there: connecting says so
        else:
            owners = listener_uids(self.host, self.port)
        strangers = owners - {0, os.geteuid()}
        if strangers:
            raise self._not_ours(f"its listener belongs to uid {min(strangers)}, not root (the agent's user)")

    def _not_ours(self, what: str) -> NotStatusApi:
        return NotStatusApi(f"{self.label} does not answer as mipart's status API v{API_VERSION}: {what}")


def glimpse(body: bytes) -> str:
    """The start of an answer on one line, quoted; 'nothing' for an empty one."""
    text = " ".join(body[: GLIMPSE * 4].decode(errors="replace").split())
    if not text:
        return "nothing"
    return json.dumps(text if len(text) <= GLIMPSE else text[: GLIMPSE - 3] + "...")
