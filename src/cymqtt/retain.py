"""Retained messages: one per topic; an empty payload deletes; lookup by topic filter.

`RetainStore` is the interface a persistent store implements; `MemoryRetainStore` keeps them in
the compiled `TopicStore` index.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from cymqtt._fast.topics import TopicStore

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.message import Message


class RetainStore(ABC):
    @abstractmethod
    def store(self, msg: Message) -> None:
        """Keep `msg` as the topic's retained message, or delete it when the payload is empty."""

    @abstractmethod
    def match(self, topic_filter: str, now: float) -> list[Message]:
        """Unexpired retained messages whose topic matches `topic_filter`."""

    @abstractmethod
    def get(self, topic: str) -> Message | None:
        """The retained message of `topic`, or None."""

    @abstractmethod
    def __len__(self) -> int: ...


class MemoryRetainStore(RetainStore):
    def __init__(self) -> None:
        self._index = TopicStore()

    def store(self, msg: Message) -> None:
        if msg.payload:
            self._index.set(msg.topic, msg)
        else:
            self._index.delete(msg.topic)

    def match(self, topic_filter: str, now: float) -> list[Message]:
        found = self._index.match(topic_filter)
        live = [m for m in found if not m.expired(now)]
        if len(live) != len(found):
            for m in found:
                if m.expired(now):
                    self._index.delete(m.topic)
                    self._expired(m)
        return live

    def _expired(self, msg: Message) -> None:
        """`msg` expired and was removed (a durable subclass removes it from disk too)."""

    def get(self, topic: str) -> Message | None:
        return self._index.get(topic)

    def __len__(self) -> int:
        return len(self._index)
