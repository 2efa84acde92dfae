"""TopicTrie.match (the publish hot path) against pure-Python peers measured in the same run.

    .venv/bin/python -m pytest -q benchmarks/bench_topics.py --benchmark-only

Peers: `PyTopicTrie` below, a straightforward dict-trie in Python (the fair peer), on 100,000
filters; and the naive matcher of tests/models/ref_topics.py (every filter against every topic),
on 1,000 filters only, since it is O(filters) per publish. One round matches every topic of a
fixed, seeded set once. Matches/s is topics matched per second; deliveries/s counts the values
returned. The ratios are printed after the last benchmark of each group.
"""
import os
import random
import sys

import pytest

from cymqtt._fast.topics import TopicStore, TopicTrie

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from models import ref_topics  # noqa: E402


class _Node:
    __slots__ = ("children", "plus", "subs", "hash_subs")

    def __init__(self):
        self.children = {}
        self.plus = None
        self.subs = {}
        self.hash_subs = {}


class PyTopicTrie:
    """The same trie as cymqtt._fast.topics.TopicTrie, written plainly in Python."""

    def __init__(self):
        self.root = _Node()

    def subscribe(self, topic_filter, key, value):
        levels = topic_filter.split("/")
        hashed = levels[-1] == "#"
        if hashed:
            levels.pop()
        node = self.root
        for level in levels:
            if level == "+":
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            else:
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
                node = child
        d = node.hash_subs if hashed else node.subs
        new = key not in d
        d[key] = value
        return new

    def match(self, topic):
        levels = topic.split("/")
        n = len(levels)
        out = []
        root = self.root
        if topic.startswith("$"):
            child = root.children.get(levels[0])
            if child is None:
                return out
            stack = [(child, 1)]
        else:
            stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if node.hash_subs:
                out.extend(node.hash_subs.values())
            if i == n:
                if node.subs:
                    out.extend(node.subs.values())
                continue
            if node.plus is not None:
                stack.append((node.plus, i + 1))
            child = node.children.get(levels[i])
            if child is not None:
                stack.append((child, i + 1))
        return out


class NaiveTrie:
    """tests/models/ref_topics.py: every filter tested against the topic."""

    def __init__(self):
        self.ref = ref_topics.RefTopicTrie()

    def subscribe(self, topic_filter, key, value):
        return self.ref.subscribe(topic_filter, key, value)

    def match(self, topic):
        return self.ref.match(topic)


def make_filters(n):
    """n (filter, key) pairs: per-device wildcards, per-site trees with fan-out, some filters
    with a leading '+', and exact device topics."""
    subs = []
    for i in range(n // 2):
        subs.append((f"devices/{i}/+/state", f"c{i}"))
    for i in range(n * 3 // 10):
        subs.append((f"site/{i % 100}/#", f"s{i}"))                    # ~0.3% of n per site
    for i in range(n // 10):
        subs.append((f"+/zone{i % 1000}/#", f"z{i}"))
    for i in range(n - len(subs)):
        subs.append((f"devices/{i}/cmd", f"d{i}"))
    return subs


def make_topics(n_filters, count, seed=1):
    rnd = random.Random(seed)
    span = max(n_filters // 2, 1)
    topics = []
    for _ in range(count):
        r = rnd.random()
        d = rnd.randrange(span * 6 // 5)                                  # ~1 in 6 misses
        if r < 0.4:
            topics.append(f"devices/{d}/temp/state")
        elif r < 0.6:
            topics.append(f"devices/{d}/cmd")
        elif r < 0.7:
            topics.append(f"site/{rnd.randrange(120)}/floor{rnd.randrange(9)}/room")
        elif r < 0.9:
            topics.append(f"plant/zone{rnd.randrange(1200)}/line/7")
        else:
            topics.append(rnd.choice(["$SYS/broker/load", "$SYS/clients", "other/topic"]))
    return topics


def build(cls, subs):
    trie = cls()
    for f, k in subs:
        trie.subscribe(f, k, k)
    return trie


_DATASETS = {}
_MEANS = {}          # (group, impl) -> mean seconds per round


def dataset(n_filters, n_topics):
    key = (n_filters, n_topics)
    if key not in _DATASETS:
        subs = make_filters(n_filters)
        topics = make_topics(n_filters, n_topics)
        tries = {"cython": build(TopicTrie, subs), "python": build(PyTopicTrie, subs)}
        if n_filters <= 1000:
            tries["naive"] = build(NaiveTrie, subs)
        # Same answers everywhere before anything is timed.
        expected = [sorted(tries["cython"].match(t)) for t in topics]
        for name, trie in tries.items():
            assert [sorted(trie.match(t)) for t in topics] == expected, name
        deliveries = sum(map(len, expected))
        _DATASETS[key] = (topics, tries, deliveries)
    return _DATASETS[key]


def _run(benchmark, capsys, group, impl, n_filters, n_topics):
    topics, tries, deliveries = dataset(n_filters, n_topics)
    match = tries[impl].match

    def round_():
        for t in topics:
            match(t)

    benchmark(round_)
    mean = benchmark.stats.stats.mean
    _MEANS[(group, impl)] = mean
    benchmark.extra_info.update(
        filters=n_filters, topics=len(topics), deliveries_per_round=deliveries,
        matches_per_s=round(len(topics) / mean), deliveries_per_s=round(deliveries / mean))
    lines = [f"{group} {impl}: {len(topics) / mean:,.0f} matches/s, "
             f"{deliveries / mean:,.0f} deliveries/s ({n_filters:,} filters, "
             f"{deliveries / len(topics):.1f} values per match)"]
    base = _MEANS.get((group, "cython"))
    for (g, peer), peer_mean in _MEANS.items():
        if g == group and peer != "cython" and base:
            lines.append(f"{group}: cython is {peer_mean / base:.1f}x faster than {peer}")
            benchmark.extra_info[f"cython_vs_{peer}"] = round(peer_mean / base, 2)
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.benchmark(group="match-100k")
def test_match_100k_cython(benchmark, capsys):
    _run(benchmark, capsys, "match-100k", "cython", 100_000, 1000)


@pytest.mark.benchmark(group="match-100k")
def test_match_100k_python_trie(benchmark, capsys):
    _run(benchmark, capsys, "match-100k", "python", 100_000, 1000)


@pytest.mark.benchmark(group="match-1k")
def test_match_1k_cython(benchmark, capsys):
    _run(benchmark, capsys, "match-1k", "cython", 1000, 200)


@pytest.mark.benchmark(group="match-1k")
def test_match_1k_python_trie(benchmark, capsys):
    _run(benchmark, capsys, "match-1k", "python", 1000, 200)


@pytest.mark.benchmark(group="match-1k")
def test_match_1k_naive(benchmark, capsys):
    _run(benchmark, capsys, "match-1k", "naive", 1000, 200)


# Retained lookups (SUBSCRIBE side): one wildcard filter against 100,000 stored topics.

@pytest.fixture(scope="module")
def retained():
    store, ref = TopicStore(), ref_topics.RefTopicStore()
    for i in range(100_000):
        t = f"devices/{i}/state" if i % 2 else f"site/{i % 100}/dev{i}/temp"
        store.set(t, i)
        ref.set(t, i)
    probes = ["devices/12345/state", "site/7/+/temp", "devices/+/state", "site/42/#"]
    for f in probes:
        assert sorted(store.match(f)) == sorted(ref.match(f)), f
    return store, probes


@pytest.mark.benchmark(group="retained-100k")
def test_store_match_100k_cython(benchmark, retained):
    store, probes = retained
    benchmark(lambda: [store.match(f) for f in probes])
