"""An HTTP client for the broker's API in tests: stdlib urllib over a real socket, no mocks.

    api = Api(bt.broker.http_port, token="s3cret")
    status, body = api.get("/api/v1/clients", page=2, limit=50)     # body: parsed JSON
    status, body = api.call("DELETE", "/api/v1/clients/" + quote("a/b", safe=""))

Every call returns (status, body); `body` is the parsed JSON when the response is JSON, else
the text. `last_headers` holds the last response's headers.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cymqtt.config import HttpConfig

__all__ = ["Api", "HTTP", "quote"]

HTTP = HttpConfig(port=0)        # an [http] listener on a free port, for Broker overrides


def quote(segment: str) -> str:
    """A client id or topic as one URL path segment ('/' encoded too)."""
    return urllib.parse.quote(segment, safe="")


class Api:
    def __init__(self, port: int, token: str | None = None, host: str = "127.0.0.1") -> None:
        self.base = f"http://{host}:{port}"
        self.token = token
        self.last_headers: dict[str, str] = {}

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, token: str | None = None,
             timeout: float = 10.0) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        hdrs = dict(headers or {})
        tok = token if token is not None else self.token
        if tok is not None and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Bearer {tok}"
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return self._result(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return self._result(err.code, err.headers, err.read())

    def _result(self, status: int, headers: Any, data: bytes) -> tuple[int, Any]:
        self.last_headers = dict(headers.items())
        if headers.get("Content-Type", "").startswith("application/json"):
            return status, json.loads(data)
        return status, data.decode("utf-8", "replace")

    def get(self, path: str, **query: Any) -> tuple[int, Any]:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return self.call("GET", path)

    def ok(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The body of a call that must answer 200."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        status, got = self.call(method, path, body)
        assert status == 200, (method, path, status, got)
        return got

    def all_pages(self, path: str, limit: int, **query: Any) -> list[dict]:
        """Every item of a paginated listing, page by page."""
        items: list[dict] = []
        page = 1
        while True:
            got = self.ok("GET", path, page=page, limit=limit, **query)
            items += got["items"]
            if page >= got["pages"]:
                return items
            page += 1
