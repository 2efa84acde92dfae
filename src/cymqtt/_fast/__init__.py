"""cymqtt's compiled core: sans-I/O codec, topic trie and inflight window (Cython).

There is no pure-Python fallback: a checkout that has not been built fails here with one line
that says how to build it.
"""
try:
    from cymqtt._fast import buffer, codec, consts, inflight, topics  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        f"cymqtt's compiled extensions are not built ({exc}); run `make build` in a checkout "
        "or `pip install .` (needs a C compiler and Cython>=3)"
    ) from None
