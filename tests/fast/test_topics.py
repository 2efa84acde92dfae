"""cymqtt._fast.topics: TopicTrie (subscriptions) and TopicStore (retained messages).

Examples are those of MQTT 3.1.1 and MQTT 5.0 section 4.7 (topic names and filters); the
property tests compare both classes with the naive matcher in tests/models/ref_topics.py.
"""
import gc
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cymqtt._fast import topics as topics_mod
from cymqtt._fast.errors import CodecError
from cymqtt._fast.topics import TopicStore, TopicTrie

try:
    from models import ref_topics
except ImportError:  # pragma: no cover - depends on how pytest roots the tests
    from tests.models import ref_topics


def trie_with(*filters):
    """A TopicTrie with one subscription per filter, the filter itself as the value."""
    trie = TopicTrie()
    for f in filters:
        assert trie.subscribe(f, "c", f)
    return trie


def store_with(*topics):
    """A TopicStore holding each topic, the topic itself as the value."""
    store = TopicStore()
    for t in topics:
        store.set(t, t)
    return store


# (filter, topic, matches): MQTT section 4.7 examples first, then edge cases of the same rules.
CASES = [
    # 4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sport/a/b", True),
    ("sport/#", "sports", False),
    ("#", "sport", True),
    ("#", "sport/tennis/player1", True),
    ("#", "/", True),
    ("#", "/finance", True),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("+/+/#", "a", False),
    ("+/#", "a", True),
    # 4.7.2 topics beginning with $ [MQTT-4.7.2-1]
    ("#", "$SYS/monitor/Clients", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+", "$SYS/x", True),
    ("a/+", "a/$x", True),            # only the first level is special
    ("a/#", "a/$x/y", True),
    ("#", "a$", True),
    # 4.7.3 topic semantics: case-sensitive, spaces allowed, empty levels are real levels
    ("ACCOUNTS", "Accounts", False),
    ("Accounts payable", "Accounts payable", True),
    ("a/+/b", "a//b", True),
    ("a//b", "a//b", True),
    ("a/b", "a//b", False),
    ("a//b", "a/b", False),
    ("/a", "/a", True),
    ("+/a", "/a", True),
    ("/+", "/a", True),
    ("a", "/a", False),
    ("/", "/", True),
    ("+/+", "/", True),
    ("+", "/", False),
    ("/#", "/", True),
    ("a/", "a", False),
    ("a/+", "a", False),
    ("a/b/c", "a/b", False),
    ("a/b", "a/b/c", False),
]


@pytest.mark.parametrize("topic_filter, topic, expected", CASES)
def test_reference_model_agrees_with_the_spec_examples(topic_filter, topic, expected):
    assert ref_topics.matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic_filter, topic, expected", CASES)
def test_trie_match_spec_examples(topic_filter, topic, expected):
    trie = trie_with(topic_filter)
    assert trie.match(topic) == ([topic_filter] if expected else [])


@pytest.mark.parametrize("topic_filter, topic, expected", CASES)
def test_store_match_spec_examples(topic_filter, topic, expected):
    store = store_with(topic)
    assert store.match(topic_filter) == ([topic] if expected else [])


# ---------------------------------------------------------------------------------------------
# TopicTrie


def test_trie_all_matching_filters_at_once():
    filters = ["sport/tennis/player1/#", "sport/#", "#", "sport/tennis/+", "+/+/+", "+/tennis/#",
               "sport/tennis/player1", "sport/+/player1", "$SYS/#", "sport/tennis", "+"]
    trie = trie_with(*filters)
    assert sorted(trie.match("sport/tennis/player1")) == sorted([
        "sport/tennis/player1/#", "sport/#", "#", "sport/tennis/+", "+/+/+", "+/tennis/#",
        "sport/tennis/player1", "sport/+/player1"])
    assert trie.match("$SYS/broker/load") == ["$SYS/#"]
    assert sorted(trie.match("other")) == ["#", "+"]


def test_trie_subscribe_returns_new_and_replace_keeps_count():
    trie = TopicTrie()
    assert len(trie) == 0
    assert trie.subscribe("a/b", "c1", 1) is True
    assert trie.subscribe("a/b", "c2", 2) is True
    assert trie.subscribe("a/+", "c1", 3) is True
    assert trie.subscribe("a/#", "c1", 4) is True
    assert len(trie) == 4
    assert trie.subscribe("a/b", "c1", 10) is False      # same (filter, key): replaced
    assert len(trie) == 4
    assert trie.get("a/b", "c1") == 10
    assert sorted(trie.match("a/b")) == [2, 3, 4, 10]


def test_trie_unsubscribe_returns_whether_it_existed():
    trie = TopicTrie()
    trie.subscribe("a/b", "c1", 1)
    trie.subscribe("a/#", "c1", 2)
    assert trie.unsubscribe("a/b", "c2") is False        # other key
    assert trie.unsubscribe("a/c", "c1") is False        # other filter, missing level
    assert trie.unsubscribe("a/+", "c1") is False        # no '+' child
    assert trie.unsubscribe("a", "c1") is False          # a node without subscriptions
    assert trie.unsubscribe("a/b/#", "c1") is False
    assert trie.unsubscribe("#", "c1") is False
    assert len(trie) == 2
    assert trie.unsubscribe("a/b", "c1") is True
    assert trie.unsubscribe("a/b", "c1") is False
    assert trie.match("a/b") == [2]
    assert trie.unsubscribe("a/#", "c1") is True
    assert trie.match("a/b") == []
    assert len(trie) == 0


def test_trie_same_key_with_two_matching_filters_appears_twice():
    trie = TopicTrie()
    trie.subscribe("a/+", "c1", "c1")
    trie.subscribe("a/#", "c1", "c1")
    trie.subscribe("a/b", "c2", "c2")
    assert sorted(trie.match("a/b")) == ["c1", "c1", "c2"]


def test_trie_keys_are_any_hashable_shared_groups_included():
    trie = TopicTrie()
    assert trie.subscribe("a/+", ("g1", "c1"), "s1")     # $share/g1/a/+, stripped by the router
    assert trie.subscribe("a/+", ("g1", "c2"), "s2")
    assert trie.subscribe("a/+", "c1", "n1")
    assert trie.subscribe("a/+", 7, "i7")
    assert sorted(trie.match("a/x")) == ["i7", "n1", "s1", "s2"]
    assert ("a/+", ("g1", "c2")) in trie
    assert trie.unsubscribe("a/+", ("g1", "c1"))
    assert sorted(trie.match("a/x")) == ["i7", "n1", "s2"]


def test_trie_get_and_contains():
    trie = TopicTrie()
    trie.subscribe("a/+/c", "k", "v1")
    trie.subscribe("#", "k", "v2")
    trie.subscribe("a/b/#", "k", "v3")
    assert trie.get("a/+/c", "k") == "v1"
    assert trie.get("#", "k") == "v2"
    assert trie.get("a/b/#", "k") == "v3"
    assert trie.get("a/+/c", "other") is None
    assert trie.get("a/b/c", "k") is None                # wildcards are not expanded
    assert trie.get("a/+", "k") is None
    assert trie.get("x/y", "k") is None
    assert ("a/+/c", "k") in trie
    assert ("a/b/#", "k") in trie
    assert ("a/b/c", "k") not in trie
    assert ("a/b", "k") not in trie
    assert "a/+/c" not in trie
    assert ("a/+/c",) not in trie
    assert (1, "k") not in trie


def test_trie_filters_lists_every_subscription():
    subs = [("a/+/c", "k1", 1), ("#", "k1", 2), ("a/b/#", ("g", "k2"), 3), ("/", "k3", 4),
            ("a//b", "k3", 5), ("+", "k4", 6), ("$SYS/#", "k5", 7), ("a/+/c", "k2", 8)]
    trie = TopicTrie()
    for f, k, v in subs:
        trie.subscribe(f, k, v)
    assert sorted(trie.filters(), key=repr) == sorted(subs, key=repr)
    # filters() is enough to rebuild the trie (persistence).
    copy = TopicTrie()
    for f, k, v in trie.filters():
        copy.subscribe(f, k, v)
    for topic in ("a/b/c", "/", "a//b", "$SYS/x", "x"):
        assert sorted(copy.match(topic)) == sorted(trie.match(topic))


def test_trie_values_are_returned_as_stored():
    trie = TopicTrie()
    value = object()
    trie.subscribe("a", "k", value)
    trie.subscribe("b", "k", None)
    assert trie.match("a")[0] is value
    assert trie.match("b") == [None]


def test_trie_prunes_every_level_after_unsubscribing_everything():
    trie = TopicTrie()
    filters = ["a/b/c", "a/b/c/#", "a/+/c", "+/+/+", "#", "a/#", "/", "a//b", "$SYS/#",
               "x/y/z/w/v", "+/x/#"]
    for i, f in enumerate(filters):
        trie.subscribe(f, "c1", i)
        trie.subscribe(f, ("g", "c2"), i)
    assert trie._node_count() > 0
    for f in reversed(filters):
        assert trie.unsubscribe(f, "c1")
    assert len(trie) == len(filters)
    for f in filters:
        assert trie.unsubscribe(f, ("g", "c2"))
    assert len(trie) == 0
    assert trie._node_count() == 0
    assert trie.filters() == []
    assert trie.match("a/b/c") == []


def test_trie_prunes_only_what_became_empty():
    trie = TopicTrie()
    trie.subscribe("a/b/c/d", "k", 1)
    trie.subscribe("a/b", "k", 2)
    trie.subscribe("a/+/x", "k", 3)
    assert trie._node_count() == 6                        # a, b, c, d, +, x
    trie.unsubscribe("a/b/c/d", "k")
    assert trie._node_count() == 4                        # c and d pruned, b kept (a/b)
    assert trie.match("a/b") == [2]
    trie.unsubscribe("a/b", "k")
    assert trie._node_count() == 3                        # a, +, x
    assert trie.match("a/b/x") == [3]


def test_trie_churn_does_not_grow():
    trie = TopicTrie()
    for i in range(200):
        trie.subscribe(f"dev/{i}/+/state", i, i)
        trie.subscribe(f"site/{i % 7}/#", i, i)
        trie.unsubscribe(f"dev/{i}/+/state", i)
        trie.unsubscribe(f"site/{i % 7}/#", i)
    assert len(trie) == 0
    assert trie._node_count() == 0


def test_trie_deep_topics_use_the_heap_stack():
    # Deeper than match()'s on-stack frames, and a filter that branches at every level.
    deep = "/".join(["x"] * 100)
    pluses = "/".join(["+"] * 100)
    trie = TopicTrie()
    trie.subscribe(deep, "k", "deep")
    trie.subscribe(pluses, "k", "plus")
    trie.subscribe("x/#", "k", "hash")
    for i in range(100):
        trie.subscribe("/".join(["x"] * i + ["+"] + ["x"] * (99 - i)), "k", i)
    assert sorted(trie.match(deep), key=str) == sorted(["deep", "plus", "hash", *range(100)],
                                                       key=str)
    assert trie.match("/".join(["y"] * 100)) == ["plus"]
    assert trie.match("/".join(["x"] * 10000)) == ["hash"]


def _live(cls):
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is cls)


def test_trie_match_and_churn_leak_nothing():
    # match() holds references to the '+' branches it has still to visit; none may outlive it.
    value = object()
    before_nodes = _live(topics_mod._TrieNode)
    before_refs = sys.getrefcount(value)
    trie = TopicTrie()
    filters = ["a/+/c", "+/+/+", "a/b/#", "#", "+/b/+", "/".join(["+"] * 40)]
    for f in filters:
        trie.subscribe(f, "k", value)
    for _ in range(100):
        for t in ("a/b/c", "x/b/y", "$SYS/b/c", "/".join(["z"] * 40), "a"):
            trie.match(t)
    for f in filters:
        trie.unsubscribe(f, "k")
    assert sys.getrefcount(value) == before_refs
    del trie
    assert _live(topics_mod._TrieNode) == before_nodes


def test_trie_hash_must_be_the_last_level():
    trie = TopicTrie()
    with pytest.raises(CodecError) as exc_info:
        trie.subscribe("a/#/b", "k", 1)
    assert exc_info.value.reason_code == 0x8F
    assert "'#' must be the last level" in str(exc_info.value)
    assert len(trie) == 0
    assert trie.unsubscribe("a/#/b", "k") is False
    assert trie.get("a/#/b", "k") is None


def test_trie_rejects_non_str():
    trie = TopicTrie()
    with pytest.raises(TypeError):
        trie.subscribe(b"a/b", "k", 1)
    with pytest.raises(TypeError):
        trie.match(b"a/b")


# ---------------------------------------------------------------------------------------------
# TopicStore


def test_store_set_get_delete_len():
    store = TopicStore()
    assert len(store) == 0
    assert store.get("a/b") is None
    store.set("a/b", 1)
    store.set("a", 2)
    store.set("a/b", 3)                                   # one value per topic: replaced
    assert len(store) == 2
    assert store.get("a/b") == 3
    assert store.get("a") == 2
    assert "a/b" in store and "a/c" not in store
    assert store.match("a/b") == [3]
    assert store.delete("a/c") is False
    assert store.delete("a/b") is True
    assert store.delete("a/b") is False
    assert store.get("a/b") is None
    assert store.match("a/#") == [2]
    assert len(store) == 1


def test_store_items_in_insertion_order():
    store = TopicStore()
    store.set("b", 1)
    store.set("a/x", 2)
    store.set("$SYS/y", 3)
    assert store.items() == [("b", 1), ("a/x", 2), ("$SYS/y", 3)]


def test_store_match_by_filter():
    topics = ["sport", "sport/", "sport/tennis", "sport/tennis/player1",
              "sport/tennis/player1/ranking", "/finance", "finance", "$SYS/monitor/Clients",
              "$SYS", "a//b"]
    store = store_with(*topics)
    assert sorted(store.match("#")) == sorted(t for t in topics if not t.startswith("$"))
    assert sorted(store.match("sport/#")) == sorted(t for t in topics if t.startswith("sport"))
    assert sorted(store.match("sport/+")) == ["sport/", "sport/tennis"]
    assert sorted(store.match("+")) == ["finance", "sport"]
    assert sorted(store.match("+/+")) == ["/finance", "sport/", "sport/tennis"]
    assert store.match("/+") == ["/finance"]
    assert store.match("+/monitor/Clients") == []
    assert sorted(store.match("$SYS/#")) == ["$SYS", "$SYS/monitor/Clients"]
    assert store.match("$SYS/monitor/+") == ["$SYS/monitor/Clients"]
    assert store.match("a/+/b") == ["a//b"]
    assert store.match("nothing/#") == []


def test_store_values_are_returned_as_stored():
    store = TopicStore()
    value = object()
    store.set("a", value)
    store.set("b", None)
    assert store.match("a")[0] is value
    assert store.match("+")[0] in (value, None)
    assert sorted(map(id, store.match("#"))) == sorted([id(value), id(None)])
    assert store.match("b") == [None]


def test_store_prunes_every_level_after_deleting_everything():
    topics = ["a/b/c", "a/b", "a", "/", "a//b", "$SYS/x", "x/y/z/w"]
    store = store_with(*topics)
    assert store._node_count() > 0
    for t in topics:
        assert store.delete(t)
    assert len(store) == 0
    assert store._node_count() == 0
    assert store.match("#") == []


def test_store_hash_must_be_the_last_level():
    store = store_with("a/b")
    with pytest.raises(CodecError) as exc_info:
        store.match("a/#/b")
    assert exc_info.value.reason_code == 0x8F


# ---------------------------------------------------------------------------------------------
# Properties against tests/models/ref_topics.py. A small alphabet of levels makes filters collide
# and share prefixes; '$SYS' and empty levels exercise the $ rule and the empty-level rule.

TOPIC_LEVELS = ["a", "b", "", "$SYS", "$"]
topics = (st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join)
          .filter(bool))
filters = (st.tuples(st.lists(st.sampled_from(TOPIC_LEVELS + ["+", "+"]), max_size=5),
                     st.booleans())
           .map(lambda lh: "/".join(lh[0] + ["#"] * lh[1]))
           .filter(bool))
keys = st.one_of(st.integers(0, 3), st.tuples(st.sampled_from(["g1", "g2"]), st.integers(0, 2)))


def _msort(values):
    return sorted(values, key=repr)


@given(subs=st.lists(st.tuples(filters, keys), max_size=40), probe=st.lists(topics, max_size=10))
def test_trie_match_equals_naive_model(subs, probe):
    trie, ref = TopicTrie(), ref_topics.RefTopicTrie()
    for i, (f, k) in enumerate(subs):
        value = (f, repr(k), i)
        assert trie.subscribe(f, k, value) == ref.subscribe(f, k, value)
    assert len(trie) == len(ref)
    for topic in probe + [f.replace("+", "a").replace("#", "b") for f, _ in subs]:
        assert _msort(trie.match(topic)) == _msort(ref.match(topic)), topic
    assert _msort(trie.filters()) == _msort(ref.filters())


@given(stored=st.lists(topics, max_size=40), probe=st.lists(filters, max_size=10))
def test_store_match_equals_naive_model(stored, probe):
    store, ref = TopicStore(), ref_topics.RefTopicStore()
    for i, t in enumerate(stored):
        store.set(t, (t, i))
        ref.set(t, (t, i))
    assert len(store) == len(ref)
    assert store.items() == ref.items()
    for topic_filter in probe + stored:
        assert _msort(store.match(topic_filter)) == _msort(ref.match(topic_filter)), topic_filter


@given(topic_filter=filters, topic=topics)
def test_trie_and_store_agree_on_one_pair(topic_filter, topic):
    expected = ref_topics.matches(topic_filter, topic)
    assert bool(trie_with(topic_filter).match(topic)) is expected
    assert bool(store_with(topic).match(topic_filter)) is expected


class TrieChurn(RuleBasedStateMachine):
    """Random subscribe/unsubscribe/match sequences: same answers as the model, and the trie
    holds exactly the levels its live filters need (nothing leaks with churn)."""

    def __init__(self):
        super().__init__()
        self.trie = TopicTrie()
        self.ref = ref_topics.RefTopicTrie()
        self.n = 0

    @rule(topic_filter=filters, key=keys)
    def subscribe(self, topic_filter, key):
        self.n += 1
        value = (topic_filter, repr(key), self.n)
        assert self.trie.subscribe(topic_filter, key, value) == \
            self.ref.subscribe(topic_filter, key, value)

    @precondition(lambda self: len(self.ref) > 0)
    @rule(data=st.data())
    def unsubscribe_existing(self, data):
        topic_filter, key = data.draw(st.sampled_from(sorted(self.ref.subs, key=repr)))
        assert self.trie.unsubscribe(topic_filter, key) is True
        assert self.ref.unsubscribe(topic_filter, key) is True

    @rule(topic_filter=filters, key=keys)
    def unsubscribe_any(self, topic_filter, key):
        assert self.trie.unsubscribe(topic_filter, key) == self.ref.unsubscribe(topic_filter, key)

    @rule(topic=topics)
    def match(self, topic):
        assert _msort(self.trie.match(topic)) == _msort(self.ref.match(topic))

    @rule(topic_filter=filters, key=keys)
    def get(self, topic_filter, key):
        assert self.trie.get(topic_filter, key) == self.ref.get(topic_filter, key)
        assert ((topic_filter, key) in self.trie) == ((topic_filter, key) in self.ref)

    @invariant()
    def same_size_and_no_dead_levels(self):
        assert len(self.trie) == len(self.ref)
        live = {f for f, _ in self.ref.subs}
        assert self.trie._node_count() == len(ref_topics.prefixes(live))


class StoreChurn(RuleBasedStateMachine):
    """Random set/delete/match sequences against the model; no dead levels left behind."""

    def __init__(self):
        super().__init__()
        self.store = TopicStore()
        self.ref = ref_topics.RefTopicStore()
        self.n = 0

    @rule(topic=topics)
    def set(self, topic):
        self.n += 1
        self.store.set(topic, (topic, self.n))
        self.ref.set(topic, (topic, self.n))

    @precondition(lambda self: len(self.ref) > 0)
    @rule(data=st.data())
    def delete_existing(self, data):
        topic = data.draw(st.sampled_from(sorted(self.ref.topics)))
        assert self.store.delete(topic) is True
        assert self.ref.delete(topic) is True

    @rule(topic=topics)
    def delete_any(self, topic):
        assert self.store.delete(topic) == self.ref.delete(topic)

    @rule(topic_filter=filters)
    def match(self, topic_filter):
        assert _msort(self.store.match(topic_filter)) == _msort(self.ref.match(topic_filter))

    @rule(topic=topics)
    def get(self, topic):
        assert self.store.get(topic) == self.ref.get(topic)

    @invariant()
    def same_contents_and_no_dead_levels(self):
        assert len(self.store) == len(self.ref)
        assert self.store.items() == self.ref.items()
        assert self.store._node_count() == len(ref_topics.prefixes(self.ref.topics))


TestTrieChurn = TrieChurn.TestCase
TestTrieChurn.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestStoreChurn = StoreChurn.TestCase
TestStoreChurn.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
