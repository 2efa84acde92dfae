"""What an API request may carry, checked before a handler sees it: query parameters (declared
per endpoint; unknown ones are refused, with the name they resemble), JSON bodies (fields,
types, no unknown ones) and the page of a listing. Every refusal is an `ApiError`, which the
server turns into ``{"error": message}`` with its status.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["ApiError", "Field", "Param", "PAGE", "LIMIT", "check_body", "page_of", "parse_json",
           "parse_query"]

MAX_LIMIT = 1000


class ApiError(Exception):
    """A request the API refuses: `status` (400, 404, ...) and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Param:
    """One query parameter of an endpoint: an int or a str, with its default and bounds."""

    name: str
    description: str
    type: type = str
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None

    def parse(self, raw: str) -> Any:
        if self.type is str:
            return raw
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter '{self.name}' must be an integer, "
                                f"not {raw[:40]!r}") from None
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            bounds = f">= {self.minimum}" if self.maximum is None else \
                f"{self.minimum}..{self.maximum}"
            raise ApiError(400, f"query parameter '{self.name}' must be {bounds}, "
                                f"not {raw[:40]}")
        return value


PAGE = Param("page", "page number, from 1; past the last page, `items` is empty", int, 1, 1)
LIMIT = Param("limit", f"items per page, 1..{MAX_LIMIT}", int, 100, 1, MAX_LIMIT)


def _unknown(kind: str, name: str, known: Sequence[str]) -> ApiError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else \
        f" (known: {', '.join(known) or 'none'})"
    return ApiError(400, f"unknown {kind} '{name[:40]}'{hint}")


def parse_query(params: Sequence[Param], query: Mapping[str, str]) -> dict[str, Any]:
    """The declared parameters, parsed (defaults for the absent ones); ApiError 400 for an
    unknown, repeated or malformed one."""
    known = {p.name: p for p in params}
    for name in query:
        if name not in known:
            raise _unknown("query parameter", name, list(known))
    values = {}
    for p in params:
        got = query.getall(p.name, ()) if hasattr(query, "getall") else \
            [query[p.name]] if p.name in query else []
        if len(got) > 1:
            raise ApiError(400, f"query parameter '{p.name}' given {len(got)} times")
        values[p.name] = p.parse(got[0]) if got else p.default
    return values


@dataclass(frozen=True)
class Field:
    """One field of a JSON request body."""

    name: str
    types: tuple[type, ...]
    description: str
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] | None = None


def parse_json(raw: bytes) -> Any:
    """The JSON document of a request body; ApiError 400 when it is not one."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}") from None


def check_body(fields: Sequence[Field], body: Any) -> dict[str, Any]:
    """The fields of a JSON object body, checked and defaulted; ApiError 400 naming the first
    problem (not an object, an unknown or missing field, a wrong type or value)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, not {_json_type(body)}")
    known = {f.name: f for f in fields}
    for name in body:
        if name not in known:
            raise _unknown("field", str(name), list(known))
    values = {}
    for f in fields:
        if f.name not in body:
            if f.required:
                raise ApiError(400, f"field '{f.name}' is required")
            values[f.name] = f.default
            continue
        value = body[f.name]
        # JSON true is not the integer 1 here, nor 1 a boolean.
        if not isinstance(value, f.types) or (isinstance(value, bool) and bool not in f.types):
            want = " or ".join(_TYPE_NAMES[t] for t in f.types)
            raise ApiError(400, f"field '{f.name}' must be {want}, not {_json_type(value)}")
        if f.choices is not None and value not in f.choices:
            raise ApiError(400, f"field '{f.name}' must be one of "
                                f"{', '.join(json.dumps(c) for c in f.choices)}, not "
                                f"{json.dumps(value)[:40]}")
        values[f.name] = value
    return values


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object",
               list: "an array", float: "a number"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def page_of(keys: Sequence[Any], query: Mapping[str, Any],
            render: Callable[[Any], Any]) -> dict[str, Any]:
    """One page of a sorted listing: `render` runs for the keys of the requested page only,
    so a listing of 20,000 clients builds at most `limit` dicts."""
    page, limit = query["page"], query["limit"]
    start = (page - 1) * limit
    total = len(keys)
    return {"total": total, "page": page, "limit": limit, "pages": -(-total // limit),
            "items": [render(k) for k in keys[start:start + limit]]}
