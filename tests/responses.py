"""An aiohttp response stand-in for probe tests: status, body text and JSON, used as `async with`."""

from __future__ import annotations


class Response:
    def __init__(self, status: int, text: str = "", data=None):
        self.status, self._text, self._data = status, text, data

    async def text(self) -> str:
        return self._text

    async def json(self, content_type=None):
        return self._data

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False
