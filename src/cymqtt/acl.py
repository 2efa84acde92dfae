"""mosquitto acl_file: parse it, compile the rules that apply to one client, answer its checks.

The file's grammar and the decisions follow mosquitto 2.0's src/security_default.c
(aclfile__parse, add__acl, add__acl_pattern, mosquitto_acl_check_default) and src/security.c
(acl__check_dollar):

    # comment (only with '#' in the first column)
    topic [read|write|readwrite|deny] FILTER   lines before the first `user` line: anonymous
    user NAME                                  the rest of the line, trimmed, spaces allowed
    topic [read|write|readwrite|deny] FILTER   rules of NAME (sections of one name merge)
    pattern [read|write|readwrite|deny] FILTER for every client, wherever it appears;
                                               %c = client id, %u = user name

A check walks the client's own `topic` rules first, then the patterns. Within each list a
matching `deny` wins over any allow; the first list that allows ends the check, so a user's
`topic` allow beats a `deny` pattern, and a user's `deny` beats an allowing pattern. When the
file has patterns and the client id or user name contains '+' or '#', only the client's own
`topic` rules can allow (mosquitto denies the rest rather than let a wildcard widen a pattern).
Publishing to `$SYS/...` is always refused; reading or writing `$share/...` too.

`AclFile.for_client(client_id, username)` compiles the rules that apply to one client into a
`ClientAcl` once (at CONNECT); its `can_publish`, `can_receive` and `can_subscribe` walk a
compiled topic trie (cymqtt._fast.topics), not the rule list.

This module knows nothing of sockets, the event loop, sessions or the broker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from cymqtt._fast.topics import TopicTrie

READ, WRITE = 1, 2
DENY = 0
ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": DENY}

# Bits a compiled rule contributes to the decision mask: the client's own `topic` rules (USER_*)
# and the patterns (PAT_*).
USER_DENY, USER_READ, USER_WRITE = 1, 2, 4
PAT_DENY, PAT_READ, PAT_WRITE = 8, 16, 32

TOPIC_HIERARCHY_LIMIT = 200     # mosquitto's limit on '/' in a filter (mosquitto_sub_topic_check)
# The one $SYS topic acl__check_dollar lets through to the rules for writing (bridge status).
_BRIDGE_STATE = TopicTrie()
_BRIDGE_STATE.subscribe("$SYS/broker/connection/+/state", 0, True)


class AclError(ValueError):
    """An acl_file that cannot be used: the message names the file and line."""


@dataclass(frozen=True, slots=True)
class AclRule:
    """One `topic` or `pattern` line: `user` is the section it appeared in (None: anonymous)."""

    kind: str               # "topic" or "pattern"
    access: int             # READ, WRITE, READ | WRITE, or DENY
    filter: str
    user: str | None
    line: int


# ---------------------------------------------------------------------------------------------
# Parsing

def check_filter(topic_filter: str) -> str | None:
    """Why mosquitto_sub_topic_check() refuses `topic_filter`, or None when it accepts it."""
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            return "'+' must be a whole level"
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
    if len(topic_filter.encode()) > 65535:
        return "longer than 65535 bytes"
    if len(levels) - 1 > TOPIC_HIERARCHY_LIMIT:
        return f"more than {TOPIC_HIERARCHY_LIMIT} levels"
    return None


def _trim(s: str) -> str:
    # misc__trimblanks: isspace() on both ends (C locale: space, \t, \n, \v, \f, \r).
    return s.strip(" \t\n\v\f\r")


def _parse_rule(rest: str) -> tuple[int, str]:
    """(access, filter) of what follows `topic ` or `pattern `, split as mosquitto splits it:
    the first space-separated word is the access unless nothing follows it."""
    rest = rest.lstrip(" ")
    if not rest:
        raise ValueError("empty topic")
    word, sep, tail = rest.partition(" ")
    if not sep or not tail:
        access, topic_filter = READ | WRITE, word   # `topic FILTER`: readwrite
    elif word not in ACCESS:
        raise ValueError(f"invalid topic access type {word!r} (read, write, readwrite or deny)")
    else:
        access, topic_filter = ACCESS[word], _trim(tail)
    why = check_filter(topic_filter)
    if why:
        raise ValueError(f"invalid ACL topic {topic_filter!r}: {why}")
    return access, topic_filter


def _parse_lines(text: str) -> Iterable[tuple[int, AclRule | None]]:
    user: str | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\n\v\f\r")
        if line.startswith("#") or not line.strip(" "):
            continue
        keyword, _, rest = line.lstrip(" ").partition(" ")
        try:
            if keyword in ("topic", "pattern"):
                access, topic_filter = _parse_rule(rest)
                yield lineno, AclRule(keyword, access, topic_filter, user, lineno)
            elif keyword == "user":
                name = _trim(rest)
                if not name:
                    raise ValueError("missing username")
                user = name
            else:
                raise ValueError(f"invalid line {line!r} (expected topic, pattern or user)")
        except ValueError as e:
            raise AclError(f"{{source}}:{lineno}: {e}") from None


def substitute(pattern: str, client_id: str, username: str | None) -> str:
    """`pattern` with %c and %u replaced as mosquitto_acl_check_default replaces them."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "%" and i < n - 1:
            nxt = pattern[i + 1]
            if nxt == "c":
                out.append(client_id)
                i += 2
                continue
            if nxt == "u" and username is not None:
                out.append(username)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Filters against filters (for can_subscribe)

def _levels(topic_filter: str) -> list[str]:
    return topic_filter.split("/")


def meet(a: str, b: str) -> str | None:
    """The filter matching exactly the topics both `a` and `b` match, or None when none."""
    la, lb = _levels(a), _levels(b)
    out: list[str] = []
    i = 0
    while True:
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x == "#" or y == "#":
            rest = lb[i:] if x == "#" else la[i:]       # what the other filter still needs
            if rest and rest[0] == "#":
                return "/".join(out + ["#"])
            if i == 0 and rest and rest[0].startswith("$"):
                return None                 # [MQTT-4.7.2-1]: wildcards never match $ topics
            return "/".join(out + rest)
        if x is None or y is None:
            return "/".join(out) if x is None and y is None else None
        if x == "+" or y == "+":
            lit = y if x == "+" else x
            if i == 0 and lit.startswith("$"):
                return None
            out.append(lit)
        elif x == y:
            out.append(x)
        else:
            return None
        i += 1


def covers(big: str, small: str) -> bool:
    """Whether every topic `small` matches is matched by `big`."""
    lb, ls = _levels(big), _levels(small)
    for i, b in enumerate(lb):
        if b == "#":
            return not (i == 0 and ls[0].startswith("$"))
        if i == len(ls):
            return False
        s = ls[i]
        if s == "#":
            return False
        if b == "+":
            if i == 0 and s.startswith("$"):
                return False
        elif b != s:
            return False
    return len(lb) == len(ls)


# ---------------------------------------------------------------------------------------------
# One client's rules

class ClientAcl:
    """The rules of one client, compiled: immutable, cheap to share between checks."""

    __slots__ = ("_trie", "_user_deny", "_user_read", "_pat_deny", "_pat_read")

    def __init__(self, user_rules: Sequence[tuple[int, str]],
                 pattern_rules: Sequence[tuple[int, str]]) -> None:
        self._trie = TopicTrie()
        self._user_deny = [f for a, f in user_rules if a == DENY]
        self._user_read = [f for a, f in user_rules if a & READ]
        self._pat_deny = [f for a, f in pattern_rules if a == DENY]
        self._pat_read = [f for a, f in pattern_rules if a & READ]
        key = 0
        for rules, bits in ((user_rules, (USER_DENY, USER_READ, USER_WRITE)),
                            (pattern_rules, (PAT_DENY, PAT_READ, PAT_WRITE))):
            for access, topic_filter in rules:
                mask = bits[0] if access == DENY else \
                    (bits[1] if access & READ else 0) | (bits[2] if access & WRITE else 0)
                self._trie.subscribe(topic_filter, key, mask)
                key += 1

    def can_receive(self, topic: str) -> bool:
        """Read access to the topic name `topic` (checked per subscriber at delivery)."""
        if topic.startswith("$share"):
            return False
        return self._allowed(topic, USER_READ, PAT_READ)

    def can_publish(self, topic: str) -> bool:
        """Write access to the topic name `topic` (PUBLISH, and a will at CONNECT)."""
        if topic.startswith("$"):
            if topic.startswith("$share"):
                return False
            if topic.startswith("$SYS") and not _BRIDGE_STATE.match(topic):
                return False
        return self._allowed(topic, USER_WRITE, PAT_WRITE)

    def _allowed(self, topic: str, user_bit: int, pattern_bit: int) -> bool:
        # The client's own rules first (a deny there wins, then an allow), then the patterns.
        mask = 0
        for bits in self._trie.match(topic):       # the rules matching `topic`, in C
            mask |= bits
        if mask & USER_DENY:
            return False
        if mask & user_bit:
            return True
        return not mask & PAT_DENY and bool(mask & pattern_bit)

    def can_subscribe(self, topic_filter: str) -> bool:
        """False when no topic matching `topic_filter` could ever be delivered to this client.

        mosquitto 2.0 grants every SUBSCRIBE (its acl_file check answers success for
        MOSQ_ACL_SUBSCRIBE) and filters each message at delivery; refusing only filters that
        can deliver nothing changes the SUBACK code, never which messages arrive. A
        `$share/GROUP/` prefix is ignored. It may grant a filter whose every topic is denied by
        several deny rules together; `can_receive` still filters those at delivery.
        """
        if topic_filter.startswith("$share/"):
            topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
        if not topic_filter:
            return False
        for rule in self._user_read:
            m = meet(topic_filter, rule)
            if m is not None and not any(covers(d, m) for d in self._user_deny):
                return True
        denies = self._user_deny + self._pat_deny
        for rule in self._pat_read:
            m = meet(topic_filter, rule)
            if m is not None and not any(covers(d, m) for d in denies):
                return True
        return False


# ---------------------------------------------------------------------------------------------
# The file

_NOBODY = object()      # the cache key of every user name the file does not mention

class AclFile:
    """The rules of one acl_file, in file order (immutable once parsed)."""

    __slots__ = ("source", "rules", "_names", "_by_user")

    def __init__(self, rules: Sequence[AclRule], source: str = "<string>") -> None:
        self.source = source
        self.rules = tuple(rules)
        self._names = frozenset(r.user for r in self.rules if r.user is not None)
        self._by_user: dict[object, ClientAcl] = {}

    @classmethod
    def load(cls, path: str | os.PathLike) -> AclFile:
        """Parse the file at `path`; AclError names the file, the line and the cause."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise AclError(f"{os.fspath(path)}: cannot read the acl file: {e.strerror}") \
                from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise AclError(f"{os.fspath(path)}:{line}: not UTF-8 text") from None
        return cls.parse(text, os.fspath(path))

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> AclFile:
        """Parse an acl_file's text; AclError names `source:line` and the cause."""
        try:
            rules = [rule for _, rule in _parse_lines(text) if rule is not None]
        except AclError as e:
            raise AclError(str(e).replace("{source}", source, 1)) from None
        return cls(rules, source)

    @property
    def users(self) -> frozenset[str]:
        """The user names that have `topic` rules of their own."""
        return frozenset(r.user for r in self.rules if r.kind == "topic" and r.user is not None)

    @property
    def has_patterns(self) -> bool:
        return any(r.kind == "pattern" for r in self.rules)

    def __repr__(self) -> str:
        return f"<AclFile {self.source!r} rules={len(self.rules)}>"

    def for_client(self, client_id: str, username: str | None) -> ClientAcl:
        """The rules that apply to this client, compiled (call once, at CONNECT).

        Without patterns the result depends on the user name only and is shared.
        """
        if not self.has_patterns:
            # Keyed by the names the file knows only: any other name shares the empty rules,
            # so clients choosing user names cannot grow the cache.
            key = username if username is None or username in self._names else _NOBODY
            acl = self._by_user.get(key)
            if acl is None:
                acl = self._by_user[key] = ClientAcl(self._user_rules(username), ())
            return acl
        return ClientAcl(self._user_rules(username), self._pattern_rules(client_id, username))

    def _user_rules(self, username: str | None) -> list[tuple[int, str]]:
        return [(r.access, r.filter) for r in self.rules
                if r.kind == "topic" and r.user == username]

    def _pattern_rules(self, client_id: str, username: str | None) -> list[tuple[int, str]]:
        if any(c in "+#" for c in client_id) or (username and any(c in "+#" for c in username)):
            return []                       # "ACL denying access to client with dangerous ..."
        return [(r.access, substitute(r.filter, client_id, username)) for r in self.rules
                if r.kind == "pattern" and (username is not None or "%u" not in r.filter)]
