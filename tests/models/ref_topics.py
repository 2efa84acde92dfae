"""Reference model of cymqtt._fast.topics: every filter tested against the topic, level by level.

Short, obviously correct and never optimised (STYLE 7.8): the property tests in
tests/fast/test_topics.py check TopicTrie and TopicStore against it.
"""

_MISSING = object()


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic_filter` matches the topic name `topic` (MQTT section 4.7)."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    for i, level in enumerate(f):
        if level == "#":
            return True  # the parent level and any number below it
        if i == len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


class RefTopicTrie:
    """Subscriptions as a flat dict {(filter, key): value}; match() tries every filter."""

    def __init__(self):
        self.subs = {}

    def subscribe(self, topic_filter, key, value):
        new = (topic_filter, key) not in self.subs
        self.subs[(topic_filter, key)] = value
        return new

    def unsubscribe(self, topic_filter, key):
        return self.subs.pop((topic_filter, key), _MISSING) is not _MISSING

    def match(self, topic):
        return [v for (f, _), v in self.subs.items() if matches(f, topic)]

    def get(self, topic_filter, key):
        return self.subs.get((topic_filter, key))

    def __len__(self):
        return len(self.subs)

    def __contains__(self, item):
        return item in self.subs

    def filters(self):
        return [(f, k, v) for (f, k), v in self.subs.items()]


class RefTopicStore:
    """Retained messages as a flat dict {topic: value}; match() tries every topic."""

    def __init__(self):
        self.topics = {}

    def set(self, topic, value):
        self.topics[topic] = value

    def delete(self, topic):
        return self.topics.pop(topic, _MISSING) is not _MISSING

    def get(self, topic):
        return self.topics.get(topic)

    def __len__(self):
        return len(self.topics)

    def match(self, topic_filter):
        return [v for t, v in self.topics.items() if matches(topic_filter, t)]

    def items(self):
        return list(self.topics.items())


def prefixes(names):
    """The distinct level prefixes of `names` without a trailing '#': the levels a pruned trie
    holds below its root."""
    out = set()
    for name in names:
        levels = name.split("/")
        if levels[-1] == "#":
            levels.pop()
        for i in range(1, len(levels) + 1):
            out.add(tuple(levels[:i]))
    return out
