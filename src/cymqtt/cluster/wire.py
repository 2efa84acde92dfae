"""What nodes send each other, as bytes and NATS subjects. Pure functions, no I/O.

Subjects (for shared groups, which NATS queue groups serve; plain messages go to each node's
own subject). A topic's levels become a subject's tokens: `a/b/c` -> `<prefix>.a.b.c`. NATS
tokens cannot be empty or hold `.`, whitespace, or be `*` / `>`, so a level with any byte
outside `[A-Za-z0-9_-]` is escaped as `%XX` per UTF-8 byte and an empty level is `%` alone
(`%` itself is `%25`): the mapping is one to one, and `+` -> `*`, `#` -> `>` only ever come
from filters. MQTT's `a/#` also matches `a` itself, which NATS's `a.>` does not, so that
filter becomes two subjects. `$`-topics are left to the receiving node's trie: NATS's `>`
matches `$SYS.x`, MQTT's `#` does not, and the node drops what none of its filters match.

Messages and sessions are marshal-encoded tuples (versioned by their first field). marshal
is fast and exact for the types an MQTT message holds, and not safe against a malicious
peer: the cluster's NATS server is trusted (give it credentials and TLS, see [cluster]).
"""
from __future__ import annotations

import base64
import marshal
import re
from typing import TYPE_CHECKING

from cymqtt._fast.inflight import AWAIT_PUBCOMP
from cymqtt.message import Message
from cymqtt.router import split_shared
from cymqtt.session import Session, Subscription

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config

__all__ = ["escape_level", "filter_subjects", "kv_key", "kv_topic", "message_fields",
           "pack_message", "pack_messages", "pack_session", "topic_subject", "unpack_message",
           "unpack_messages", "unpack_session"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_UNSAFE_TOPIC = re.compile(r"[^A-Za-z0-9_\-/]|//|^/|/$|^$")

WIRE_VERSION = 1


def _escape_char(m: re.Match) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode())


def escape_level(level: str) -> str:
    """One topic level as one NATS token."""
    if not level:
        return "%"
    return _UNSAFE.sub(_escape_char, level)


def topic_subject(prefix: str, topic: str) -> str:
    """The subject a message on `topic` is published to."""
    if _UNSAFE_TOPIC.search(topic) is None:          # the common case: nothing to escape
        return f"{prefix}.{topic.replace('/', '.')}"
    return prefix + "." + ".".join(escape_level(level) for level in topic.split("/"))


def filter_subjects(prefix: str, topic_filter: str) -> list[str]:
    """The subjects a node subscribes to for `topic_filter` (two for `.../#`)."""
    levels = topic_filter.split("/")
    tokens = ["*" if lv == "+" else ">" if lv == "#" else escape_level(lv) for lv in levels]
    subjects = [prefix + "." + ".".join(tokens)]
    if len(tokens) > 1 and tokens[-1] == ">":
        subjects.append(prefix + "." + ".".join(tokens[:-1]))     # `a/#` matches `a` too
    return subjects


def kv_key(topic: str) -> str:
    """A JetStream key-value key for `topic` (keys allow only [-/_=.A-Za-z0-9])."""
    return base64.urlsafe_b64encode(topic.encode()).decode().rstrip("=") or "_"


def kv_topic(key: str) -> str:
    if key == "_":
        return ""
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


# -- messages --------------------------------------------------------------------------------

def message_fields(msg: Message, now: float) -> tuple:
    """`msg` as plain values for another node; its expiry travels as the time left (clocks
    differ)."""
    left = None if msg.expires_at is None else max(0.0, msg.expires_at - now)
    return (msg.topic, msg.payload, msg.qos, msg.retain, msg.properties, left, msg.sender)


def pack_messages(fields: list[tuple], origin: str = "", seq: int = 0) -> bytes:
    """Messages (`message_fields`) from node `origin`, as one NATS payload (a tick's
    messages for one node travel together); `seq` numbers the origin's batches, which the
    receivers report back (flow control)."""
    return marshal.dumps((WIRE_VERSION, origin, seq, fields))


def pack_message(msg: Message, now: float, origin: str = "") -> bytes:
    return pack_messages([message_fields(msg, now)], origin)


def unpack_messages(data: bytes, now: float) -> tuple[list[Message], str, int]:
    """(messages, origin node, batch number); ValueError for what no node of ours sent."""
    try:
        version, origin, seq, fields = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"not cluster messages: {exc}") from None
    if version != WIRE_VERSION or not isinstance(fields, list) or \
            not isinstance(origin, str) or not isinstance(seq, int):
        raise ValueError("not cluster messages (another version?)")
    out = []
    for f in fields:
        try:
            topic, payload, qos, retain, props, left, sender = f
        except (TypeError, ValueError):
            raise ValueError("not a cluster message") from None
        if not isinstance(topic, str) or not topic or not isinstance(payload, bytes) or \
                qos not in (0, 1, 2) or not (props is None or isinstance(props, dict)) or \
                not (left is None or isinstance(left, (int, float))):
            raise ValueError("not a cluster message")
        out.append(Message(topic, payload, qos, bool(retain), props,
                           None if left is None else now + left, sender))
    return out, origin, seq


def unpack_message(data: bytes, now: float) -> tuple[Message, str]:
    """The one message of `pack_message`."""
    msgs, origin, _ = unpack_messages(data, now)
    if len(msgs) != 1:
        raise ValueError("not one cluster message")
    return msgs[0], origin


# -- sessions (handed over on a takeover across nodes) ----------------------------------------

def _options(sub: Subscription) -> int:
    return sub.qos | (4 if sub.no_local else 0) | (8 if sub.retain_as_published else 0) | \
        (sub.retain_handling << 4)


def pack_session(session: Session, now: float, window: bool = True) -> bytes:
    """Everything another node needs to go on with `session`: its expiry, subscriptions, and
    its window as it stands (in flight under their packet ids and states, then the queue),
    which this takes out (the session is leaving this node); `window` False leaves the
    window alone and out (the record a node keeps in the cluster's sessions bucket)."""
    subs = [(sub.full_filter, _options(sub), sub.sub_id)
            for sub in session.subscriptions.values()]
    items = []
    w = session.window
    if w is not None and window:
        for pid, qos, state, item in w.take_inflight():
            items.append((pid, state, qos, _item(item, now)))
        for qos, item in w.drain_queue():
            items.append((0, 0, qos, _item(item, now)))
    return marshal.dumps((WIRE_VERSION, session.client_id, session.version,
                          session.expiry_interval, session.requested_expiry, subs, items))


def _item(item: tuple, now: float) -> tuple:
    msg, retain, sub_ids, shared, _ = item
    return (pack_message(msg, now), retain, sub_ids, shared)


def unpack_session(data: bytes, config: Config, now: float) -> tuple[Session, list]:
    """A session from `pack_session`, without its window: (session, [(msg, retain, sub_ids,
    shared, qos, pid, state)]) for `Registry.adopt` to put back in order."""
    version, cid, proto, expiry, requested, subs, items = marshal.loads(data)
    if version != WIRE_VERSION:
        raise ValueError("a session from another version of cymqtt")
    session = Session(cid, config)
    session.version = proto
    session.expiry_interval = expiry
    session.requested_expiry = requested
    for full_filter, options, sub_id in subs:
        group, topic_filter = split_shared(full_filter)
        session.subscriptions[full_filter] = Subscription(session, full_filter, topic_filter,
                                                          group, options, sub_id)
    out = []
    for pid, state, qos, (packed, retain, sub_ids, shared) in items:
        msg, _ = unpack_message(packed, now)
        out.append((msg, retain, sub_ids, None if shared is None else tuple(shared), qos, pid,
                    state if state == AWAIT_PUBCOMP else 0))
    return session, out
