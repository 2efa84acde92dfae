"""Access control: what a client may publish, subscribe to and receive.

Two sources decide, and a denial from either wins:
- the `acl_file` (mosquitto's format, `cymqtt.acl`): with one configured, what it does not
  allow is denied;
- `Authorizer`s given to the broker (`Broker(authorizers=[...])`): Python hooks that answer
  True (allow), False (deny) or None (no opinion) for each of the three questions.

    class TenantOnly(Authorizer):
        def can_publish(self, client_id, username, topic):
            return topic.startswith(f"tenants/{username}/")
        can_receive = can_publish

    Broker(authorizers=[TenantOnly()])

`AccessControl.for_client()` makes a client's `Access` once per CONNECT (the ACL rules that
apply to it compiled then). Its answers are cached per topic (bounded), so a subscriber that
receives the same topics again and again pays one dictionary lookup per message; the session
holds it, and with no ACL file and no authorizer there is none at all (one `is None` test per
delivery). Knows nothing of sockets, sessions or packets.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.acl import AclFile

__all__ = ["Access", "AccessControl", "Authorizer"]

log = logging.getLogger("cymqtt.access")

# Topics whose answers one client's Access remembers, per question; the cache is cleared when
# it reaches this size (the answers are cheap to recompute, the memory is per client).
CACHE_SIZE = 1024


class Authorizer:
    """Override any of the three; each answers True (allow), False (deny) or None (no
    opinion: the ACL file, or the default allow when there is none, decides). They run on the
    event loop and must not block; answers are cached per client and topic until the client
    reconnects or the broker reloads its configuration."""

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool | None:
        return None

    def can_subscribe(self, client_id: str, username: str | None,
                      topic_filter: str) -> bool | None:
        return None

    def can_receive(self, client_id: str, username: str | None, topic: str) -> bool | None:
        return None


class AccessControl:
    """The broker's ACL file and authorizers; `for_client` gives each client its view."""

    def __init__(self, acl: AclFile | None = None,
                 authorizers: list[Authorizer] | None = None) -> None:
        self.acl = acl
        self.authorizers = list(authorizers or ())

    @property
    def enabled(self) -> bool:
        return self.acl is not None or bool(self.authorizers)

    def for_client(self, client_id: str, username: str | None) -> Access | None:
        """The client's Access, or None when nothing restricts anyone."""
        if not self.enabled:
            return None
        rules = self.acl.for_client(client_id, username) if self.acl is not None else None
        return Access(client_id, username, rules, self.authorizers)


class Access:
    """One client's permissions (see the module docstring)."""

    __slots__ = ("client_id", "username", "_rules", "_authorizers", "_publish", "_receive")

    def __init__(self, client_id: str, username: str | None, rules,
                 authorizers: list[Authorizer]) -> None:
        self.client_id = client_id
        self.username = username
        self._rules = rules                 # acl.ClientAcl, or None without an ACL file
        self._authorizers = authorizers
        self._publish: dict[str, bool] = {}
        self._receive: dict[str, bool] = {}

    @property
    def decides_dollar_topics(self) -> bool:
        """Whether publishing to $-topics is the ACL file's decision (it knows mosquitto's
        rules for them); without one, clients may not."""
        return self._rules is not None

    def can_publish(self, topic: str) -> bool:
        ok = self._publish.get(topic)
        if ok is None:
            ok = self._decide("can_publish", topic)
            _remember(self._publish, topic, ok)
        return ok

    def can_receive(self, topic: str) -> bool:
        ok = self._receive.get(topic)
        if ok is None:
            ok = self._decide("can_receive", topic)
            _remember(self._receive, topic, ok)
        return ok

    def can_subscribe(self, topic_filter: str) -> bool:
        """Once per SUBSCRIBE filter (not cached)."""
        return self._decide("can_subscribe", topic_filter)

    def _decide(self, question: str, topic: str) -> bool:
        rules = self._rules
        if rules is not None and not getattr(rules, question)(topic):
            return False
        for a in self._authorizers:
            try:
                answer = getattr(a, question)(self.client_id, self.username, topic)
            except Exception:
                log.exception("authorizer %r failed on %s(%r); denied", a, question, topic)
                return False
            if answer is False:
                return False
        return True


def _remember(cache: dict[str, bool], topic: str, ok: bool) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[topic] = ok
