"""The OpenAPI 3.1 description of the REST API, built from the endpoint table (api.ENDPOINTS)
that routes the requests, so every path and parameter in it is one that is served. The
response shapes are written out here, in `SCHEMAS`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cymqtt._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.http.api import Endpoint
    from cymqtt.http.params import Field, Param

__all__ = ["SCHEMAS", "document"]

_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}


def _object(required: bool = True, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(props)
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return _object(total={**_INT, "description": "items in the whole listing"},
                   page=_INT, limit=_INT, pages={**_INT, "description": "pages in all"},
                   items={"type": "array", "items": _ref(item)})


_CLIENT = {
    "client_id": _STR,
    "protocol": {"enum": ["3.1", "3.1.1", "5.0"], "description": "MQTT version"},
    "address": {**_STR, "description": "peer address, host:port"},
    "username": {"type": ["string", "null"]},
    "keepalive": {**_INT, "description": "seconds, as agreed at CONNECT"},
    "listener": {**_STR, "description": "the listener it connected through"},
    "subscription_count": _INT,
    "inflight": {**_INT, "description": "QoS 1/2 messages sent, not yet acknowledged"},
    "queued": {**_INT, "description": "messages waiting behind the inflight window"},
    "retained_pending": {**_INT, "description": "retained messages still to send"},
    "received": {**_INT, "description": "PUBLISH packets received from it"},
    "sent": {**_INT, "description": "PUBLISH packets sent to it"},
    "dropped": {**_INT, "description": "messages for it dropped (queue full, stalled)"},
}

SCHEMAS: dict[str, Any] = {
    "Error": _object(error={**_STR, "description": "what was wrong, in one line"}),
    "Client": _object(**_CLIENT),
    "ClientPage": _page("Client"),
    "ClientDetail": _object(**_CLIENT, subscriptions={"type": "array",
                                                      "items": _ref("Subscription")}),
    "Disconnected": _object(disconnected=_STR),
    "Subscription": _object(
        client_id=_STR,
        topic_filter={**_STR, "description": "as subscribed, $share/{group}/ included"},
        group={"type": ["string", "null"], "description": "shared subscription group"},
        qos={"enum": [0, 1, 2]}, no_local=_BOOL, retain_as_published=_BOOL,
        retain_handling={"enum": [0, 1, 2]},
        subscription_identifier={"type": ["integer", "null"]},
        connected={**_BOOL, "description": "whether its client is connected"}),
    "SubscriptionPage": _page("Subscription"),
    "RetainedItem": _object(
        topic=_STR, qos={"enum": [0, 1, 2]}, size={**_INT, "description": "payload bytes"},
        preview={**_STR, "description": "the payload's first characters as UTF-8"}),
    "RetainedPage": _page("RetainedItem"),
    "RetainedMessage": _object(
        topic=_STR, qos={"enum": [0, 1, 2]}, size=_INT,
        payload={**_STR, "description": "UTF-8 text, or base64 (see encoding)"},
        encoding={"enum": ["utf-8", "base64"]},
        expires_in={"type": ["number", "null"], "description": "seconds; null: never"},
        properties={"type": "object", "description": "MQTT 5 properties by name "
                    "(content_type, user_property, ...); bytes as base64"}),
    "Deleted": _object(deleted=_STR),
    "Published": _object(topic=_STR, delivered={
        "type": ["integer", "null"], "description": "sessions it was delivered or queued to"}),
    "Stats": {"type": "object", "required": ["version", "uptime", "connections"],
              "properties": {"version": _STR, "uptime": {**_INT, "description": "seconds"}},
              "additionalProperties": _INT,
              "description": "Broker.stats(): every counter and gauge by name"},
    "Listener": _object(name=_STR, host=_STR, port=_INT, protocol=_STR, tls=_BOOL, mtls=_BOOL,
                        clients=_INT, max_connections={**_INT, "description": "-1: no limit"}),
    "Listeners": _object(
        listeners={"type": "array", "items": _ref("Listener")},
        http=_object(host=_STR, port=_INT, url=_STR, token_required=_BOOL)),
    "OpenAPI": {"type": "object", "description": "this document"},
}

_STATUS = {400: "Bad input (query, path or body)", 401: "Missing or wrong bearer token",
           404: "No such client, topic or subscription", 413: "Body too large"}


def _parameter(p: Param) -> dict[str, Any]:
    schema: dict[str, Any] = dict(_INT if p.type is int else _STR)
    for key in ("default", "minimum", "maximum"):
        if getattr(p, key) is not None:
            schema[key] = getattr(p, key)
    return {"name": p.name, "in": "query", "required": False, "description": p.description,
            "schema": schema}


def _field(f: Field) -> dict[str, Any]:
    types = [{str: "string", int: "integer", bool: "boolean"}[t] for t in f.types]
    schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types,
                              "description": f.description}
    if f.choices is not None:
        schema["enum"] = list(f.choices)
    if not f.required:
        schema["default"] = f.default
    return schema


def _operation(e: Endpoint, token: bool) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": _STR,
               "description": "percent-encoded" + (" (it may hold '/')" if n == "topic" else
                                                   "")} for n in e.path_params]
    op: dict[str, Any] = {
        "summary": e.summary, "operationId": e.handler.__name__,
        "parameters": params + [_parameter(p) for p in e.query],
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": _ref(e.response)}}}},
    }
    if e.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "required": [f.name for f in e.body if f.required],
            "properties": {f.name: _field(f) for f in e.body}}}}}
    for status in sorted({*e.errors, *((401,) if token else ())}):
        op["responses"][str(status)] = {"description": _STATUS[status], "content": {
            "application/json": {"schema": _ref("Error")}}}
    return op


def document(endpoints: tuple[Endpoint, ...], token: bool) -> dict[str, Any]:
    """The OpenAPI document of `endpoints`; `token`: the API asks for a bearer token."""
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.full_path, {})[e.method.lower()] = _operation(e, token)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "cymqtt broker API", "version": __version__,
                 "description": "Clients, subscriptions, retained messages, publishing and "
                                "statistics of a running cymqtt broker. Errors are "
                                "{\"error\": message}. Lists are paginated (page, limit)."},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
