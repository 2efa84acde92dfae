"""The REST API under `/api/v1/`: every endpoint declared once, in `ENDPOINTS`, which both
routes requests (server.py) and describes them (openapi.py), so the OpenAPI document cannot
drift from what is served.

A handler gets a `Call` (the broker, the checked query, the path parameters, the request) and
returns a JSON-able value, or raises `ApiError`. Handlers run on the broker's loop between MQTT
events and only read the `Broker` facade, so a response is a consistent snapshot.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from cymqtt._version import __version__
from cymqtt.http.openapi import document
from cymqtt.http.params import (
    LIMIT, PAGE, ApiError, Field, Param, check_body, page_of, parse_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from aiohttp import web

    from cymqtt.broker import Broker
    from cymqtt.http.server import HttpServer

__all__ = ["API_PREFIX", "Call", "Endpoint", "ENDPOINTS", "PUBLISH_FIELDS"]

API_PREFIX = "/api/v1"
PROTOCOLS = {3: "3.1", 4: "3.1.1", 5: "5.0"}
PREVIEW = 120          # characters of a retained payload shown in a listing


@dataclass
class Call:
    """One API request as its handler sees it."""

    broker: Broker
    query: dict[str, Any]              # the endpoint's query parameters, checked
    path: dict[str, str]               # its path parameters, percent-decoded
    request: web.Request
    server: HttpServer                 # the HTTP listener answering

    async def body(self, fields: tuple[Field, ...]) -> dict[str, Any]:
        """The JSON object body, checked against `fields` (ApiError 400 when it does not fit;
        413 past the size limit comes from aiohttp)."""
        return check_body(fields, parse_json(await self.request.read()))


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One method on one path: what it takes, what it answers, who handles it."""

    method: str
    path: str                          # OpenAPI form, under API_PREFIX: "/clients/{client_id}"
    handler: Handler
    summary: str
    response: str                      # schema name (openapi.SCHEMAS) of the 200 body
    query: tuple[Param, ...] = ()
    body: tuple[Field, ...] | None = None
    errors: tuple[int, ...] = ()       # statuses besides 200 and 401 (all may answer 401)

    @property
    def full_path(self) -> str:
        """The path as OpenAPI writes it: "/api/v1/clients/{client_id}"."""
        return API_PREFIX + self.path

    @property
    def route(self) -> str:
        """The aiohttp route: a path parameter may hold '/' (client ids, topics)."""
        path = self.full_path
        for name in self.path_params:
            path = path.replace("{" + name + "}", "{" + name + ":.+}")
        return path

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


# -- rendering -------------------------------------------------------------------------------

def payload_json(payload: bytes) -> dict[str, str]:
    """A payload as JSON: UTF-8 text when it is, else base64; `encoding` says which."""
    try:
        return {"payload": payload.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode("ascii"), "encoding": "base64"}


def _jsonable(value: Any) -> Any:
    # MQTT 5 property values: bytes (correlation data) as base64, pairs as lists.
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _client_json(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "client_id": info["client_id"], "protocol": PROTOCOLS.get(info["protocol"], "?"),
        "address": info["peer"], "username": info["username"], "keepalive": info["keepalive"],
        "listener": info["listener"], "subscription_count": info["subscriptions"],
        "inflight": info["inflight"], "queued": info["queued"],
        "retained_pending": info["retained_pending"], "received": info["received"],
        "sent": info["sent"], "dropped": info["dropped"],
    }


# -- listings of the whole broker -----------------------------------------------------------
# In a cluster (or with --workers) each node knows its own clients and sessions: a listing
# asks every node (Broker.everywhere) for its sorted keys, merges them, and asks again for the
# details of one page's keys only.

async def _keys(broker: Broker, question: str, *args: Any) -> list:
    answers = await broker.everywhere(question, *args)
    if len(answers) == 1:
        return answers[0]
    return sorted({tuple(k) if isinstance(k, list) else k for a in answers for k in a})


async def _page(broker: Broker, keys: list, query: dict[str, Any], question: str,
                key_of: Callable[[dict], Any], render: Callable[[dict], Any]) -> dict[str, Any]:
    page = page_of(keys, query, lambda key: key)
    found = {key_of(info): info for answer in await broker.everywhere(question, page["items"])
             for info in answer}
    page["items"] = [render(found[k]) for k in page["items"] if k in found]
    return page


def _sub_key(info: dict) -> tuple[str, str]:
    return info["client_id"], info["topic_filter"]


async def _connected_client(broker: Broker, client_id: str) -> dict[str, Any]:
    for answer in await broker.everywhere("client_infos", [client_id]):
        if answer:
            return answer[0]
    raise ApiError(404, f"no connected client {client_id[:100]!r}")


# -- handlers --------------------------------------------------------------------------------

async def list_clients(call: Call) -> Any:
    b = call.broker
    ids = await _keys(b, "client_ids", call.query["search"])
    return await _page(b, ids, call.query, "client_infos", lambda info: info["client_id"],
                       _client_json)


async def get_client(call: Call) -> Any:
    b = call.broker
    client_id = call.path["client_id"]
    out = _client_json(await _connected_client(b, client_id))
    keys = await _keys(b, "subscriptions", client_id)
    out["subscriptions"] = [info for answer in await b.everywhere("subscription_infos", keys)
                            for info in answer]
    return out


async def disconnect_client(call: Call) -> Any:
    client_id = call.path["client_id"]
    if not any(await call.broker.everywhere("disconnect", client_id)):
        raise ApiError(404, f"no connected client {client_id[:100]!r}")
    return {"disconnected": client_id}


async def list_subscriptions(call: Call) -> Any:
    b = call.broker
    keys = await _keys(b, "subscriptions", call.query["client_id"], call.query["search"])
    return await _page(b, keys, call.query, "subscription_infos", _sub_key, lambda info: info)


def _retained_item(broker: Broker, topic: str) -> dict[str, Any]:
    msg = broker.retained_message(topic)
    assert msg is not None          # listed in this same loop iteration
    payload = msg["payload"]
    return {"topic": topic, "qos": msg["qos"], "size": len(payload),
            "preview": payload[:PREVIEW * 4].decode("utf-8", "replace")[:PREVIEW]}


async def list_retained(call: Call) -> Any:
    b = call.broker
    try:
        topics = b.retained_topics(call.query["filter"])
    except ValueError as exc:
        raise ApiError(400, f"query parameter 'filter' is not a topic filter: {exc}") from None
    return page_of(topics, call.query, lambda topic: _retained_item(b, topic))


def _retained(call: Call) -> dict[str, Any]:
    topic = call.path["topic"]
    msg = call.broker.retained_message(topic)
    if msg is None:
        raise ApiError(404, f"no retained message on topic {topic[:100]!r}")
    return msg


async def get_retained(call: Call) -> Any:
    msg = _retained(call)
    return {"topic": msg["topic"], "qos": msg["qos"], "size": len(msg["payload"]),
            **payload_json(msg["payload"]), "expires_in": msg["expires_in"],
            "properties": {k: _jsonable(v) for k, v in msg["properties"].items()}}


async def delete_retained(call: Call) -> Any:
    topic = _retained(call)["topic"]
    call.broker.delete_retained(topic)
    return {"deleted": topic}


PUBLISH_FIELDS = (
    Field("topic", (str,), "topic name (no wildcards)", required=True),
    Field("payload", (str,), "the payload, encoded as `encoding` says", ""),
    Field("encoding", (str,), "how `payload` is written", "utf-8", choices=("utf-8", "base64")),
    Field("qos", (int,), "quality of service", 0, choices=(0, 1, 2)),
    Field("retain", (bool,), "keep as the topic's retained message (an empty payload deletes "
          "it)", False),
)


async def publish(call: Call) -> Any:
    body = await call.body(PUBLISH_FIELDS)
    if body["encoding"] == "base64":
        try:
            payload = base64.b64decode(body["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "field 'payload' is not valid base64") from None
    else:
        try:
            payload = body["payload"].encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "field 'payload' holds a lone surrogate, which UTF-8 cannot "
                                "encode; send the bytes as base64") from None
    try:
        delivered = call.broker.publish(body["topic"], payload, body["qos"], body["retain"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return {"topic": body["topic"], "delivered": delivered}


async def stats(call: Call) -> Any:
    return {"version": __version__, **call.broker.stats()}


async def listeners(call: Call) -> Any:
    server = call.server
    return {"listeners": call.broker.listeners,
            "http": {"host": server.host, "port": server.port, "url": server.url,
                     "token_required": server.token is not None}}


async def openapi(call: Call) -> Any:
    return document(ENDPOINTS, call.server.token is not None)


SEARCH = Param("search", "only those whose client id contains this (case-insensitive)")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/clients", list_clients, "Connected clients, sorted by client id",
             "ClientPage", (SEARCH, PAGE, LIMIT), errors=(400,)),
    Endpoint("GET", "/clients/{client_id}", get_client,
             "One connected client, with its subscriptions", "ClientDetail", errors=(404,)),
    Endpoint("DELETE", "/clients/{client_id}", disconnect_client,
             "Disconnect a client (MQTT 5: DISCONNECT 0x98, administrative action); its "
             "session stays and its will is published", "Disconnected", errors=(404,)),
    Endpoint("GET", "/subscriptions", list_subscriptions,
             "Subscriptions of every session (connected or not), sorted by client id, "
             "then filter", "SubscriptionPage",
             (Param("client_id", "only this client's"),
              Param("search", "only filters containing this (case-insensitive)"), PAGE, LIMIT),
             errors=(400,)),
    Endpoint("GET", "/retained", list_retained, "Retained messages, sorted by topic",
             "RetainedPage",
             (Param("filter", "MQTT topic filter; `#` and `+` leave out `$` topics", str, "#"),
              PAGE, LIMIT), errors=(400,)),
    Endpoint("GET", "/retained/{topic}", get_retained,
             "One retained message (the topic percent-encoded)", "RetainedMessage",
             errors=(404,)),
    Endpoint("DELETE", "/retained/{topic}", delete_retained,
             "Delete a retained message (nothing is delivered to subscribers)", "Deleted",
             errors=(404,)),
    Endpoint("POST", "/publish", publish, "Publish a message, as the broker itself",
             "Published", body=PUBLISH_FIELDS, errors=(400, 413)),
    Endpoint("GET", "/stats", stats, "Every counter and gauge of the broker, and its version",
             "Stats"),
    Endpoint("GET", "/listeners", listeners, "The MQTT listeners and this HTTP listener",
             "Listeners"),
    Endpoint("GET", "/openapi.json", openapi, "This API's OpenAPI 3 description", "OpenAPI"),
)
