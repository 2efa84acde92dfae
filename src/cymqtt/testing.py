"""A real MQTT broker for your tests and your synchronous programs.

pytest plugin (registered as the ``pytest11`` entry point ``cymqtt``, so it is active wherever
cymqtt is installed)::

    import paho.mqtt.client as mqtt

    def test_roundtrip(mqtt_broker):                  # a fresh broker per test, free port
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect(mqtt_broker.host, mqtt_broker.port)
        ...
        mqtt_broker.publish("greetings", b"hello")   # from the test's thread

Fixtures:

- ``mqtt_broker``: a `BrokerThread` started for one test and stopped after it, so every test
  starts from a clean state (no sessions, no retained messages; $SYS topics are off, as in
  every fixture here, unless ``sys_interval`` is set). Config overrides come from the marker
  ``@pytest.mark.mqtt_broker_config(max_queued=5)``.
- ``mqtt_broker_session``: one `BrokerThread` for the whole test session (faster; state is
  shared between the tests that use it, so pick unique topics and client ids).
- ``mqtt_broker_factory``: ``mqtt_broker_factory(**overrides)`` starts more brokers, each
  stopped after the test.

`BrokerThread` runs a `cymqtt.Broker` on its own event loop in a daemon thread, for code that
is not async::

    with BrokerThread(max_queued=100) as broker:
        print(broker.host, broker.port)
        broker.publish("a/b", b"x", qos=1)           # thread-safe; returns the delivery count
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.broker import Broker
    from cymqtt.config import Config

__all__ = ["BrokerThread"]


class BrokerThread:
    """A `Broker` on its own event loop in a daemon thread.

    :param config: a `cymqtt.Config`; keyword arguments override its fields. By default it
        listens on 127.0.0.1 and a free port (``port=0``); ``.port`` tells which.
    :param loop: ``"asyncio"`` or ``"uvloop"``.
    :param broker_kw: further keyword arguments of `Broker` (``clock``, ``authenticators``).

    ``start()`` (or ``with``) returns once it accepts connections; ``stop()`` disconnects every
    client and ends the thread. Everything else is safe to call from any thread.
    """

    def __init__(self, config: Config | None = None, *, loop: str = "asyncio",
                 broker_kw: dict[str, Any] | None = None, **overrides: Any) -> None:
        from cymqtt.broker import Broker

        overrides.setdefault("port", 0)
        overrides.setdefault("host", "127.0.0.1")
        self.broker: Broker = Broker(config, **(broker_kw or {}), **overrides)
        self.host: str = self.broker.config.host
        self.port: int = self.broker.config.port
        self._loop_kind = loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BrokerThread:
        """Start the loop thread and the broker (OSError when the port is taken)."""
        if self._thread is not None:
            return self
        if self._loop_kind == "uvloop":
            import uvloop
            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="cymqtt-broker")
        self._thread.start()
        try:
            self.run(self.broker.start())
        except BaseException:
            self._end_thread()
            raise
        self.port = self.broker.port
        return self

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the broker's loop and return its result."""
        assert self.loop is not None, "BrokerThread not started"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Call `fn()` on the broker's loop (where its state may be read) and return its
        result."""
        assert self.loop is not None, "BrokerThread not started"
        fut: Future = Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout)

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, properties: dict | None = None) -> int:
        """`Broker.publish` on the broker's loop; returns the number of deliveries.

        :raises ValueError: as `Broker.publish` (bad topic, QoS or payload).
        """
        return self.call(lambda: self.broker.publish(topic, payload, qos, retain, properties))

    def stop(self) -> None:
        """Disconnect every client, close the listener and end the thread (idempotent)."""
        if self._thread is None:
            return
        try:
            self.run(self.broker.stop())
        finally:
            self._end_thread()

    def _end_thread(self) -> None:
        assert self.loop is not None and self._thread is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        # The loop's default executor (getaddrinfo for the bind ran there) has a thread too.
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
        self._thread = None

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BrokerThread({self.host}:{self.port}, running={self._thread is not None})"


# -- the pytest plugin ---------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - BrokerThread works without pytest
    pytest = None

_FIXTURE_DEFAULTS = {"sys_interval": 0}     # no $SYS retained messages in a fresh broker

if pytest is not None:
    def pytest_configure(config: Any) -> None:
        config.addinivalue_line(
            "markers", "mqtt_broker_config(**overrides): cymqtt Config overrides for the "
            "mqtt_broker fixture")

    @pytest.fixture
    def mqtt_broker(request: Any):
        """A cymqtt broker for this test (a `BrokerThread` on 127.0.0.1, a free port)."""
        marker = request.node.get_closest_marker("mqtt_broker_config")
        with BrokerThread(**{**_FIXTURE_DEFAULTS, **(marker.kwargs if marker else {})}) as b:
            yield b

    @pytest.fixture(scope="session")
    def mqtt_broker_session():
        """One cymqtt broker shared by every test of the session that asks for it."""
        with BrokerThread(**_FIXTURE_DEFAULTS) as broker:
            yield broker

    @pytest.fixture
    def mqtt_broker_factory():
        """``mqtt_broker_factory(**overrides)`` -> a started `BrokerThread`, stopped after the
        test."""
        started: list[BrokerThread] = []

        def make(**overrides: Any) -> BrokerThread:
            broker = BrokerThread(**{**_FIXTURE_DEFAULTS, **overrides}).start()
            started.append(broker)
            return broker

        yield make
        for broker in started:
            broker.stop()
