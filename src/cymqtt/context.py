"""Context: everything a connection's MQTT handlers may use, and nothing more.

One per broker, shared by every `ClientProtocol`. Handlers reach the rest of the broker only
through it, never through the `Broker` object, so they can be driven in tests with a context of
their own and the broker can change how it wires things without touching a handler.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from cymqtt.auth import Auth, Authenticator
from cymqtt.metrics import Metrics
from cymqtt.registry import Registry
from cymqtt.router import Router

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config
    from cymqtt.retain import RetainStore

__all__ = ["Context"]


class Context:
    """:param clock: seconds on a monotonic clock; the one clock of the whole broker (the
        sweep, keep alive, message expiry), so tests can inject their own."""

    __slots__ = ("config", "registry", "router", "retained", "auth", "metrics", "clock")

    def __init__(self, config: Config, registry: Registry, router: Router, auth: Auth,
                 metrics: Metrics, clock: Callable[[], float]) -> None:
        self.config = config
        self.registry = registry
        self.router = router
        self.retained: RetainStore = router.retained
        self.auth = auth
        self.metrics = metrics
        self.clock = clock

    @classmethod
    def create(cls, config: Config, authenticators: list[Authenticator] | None = None,
               clock: Callable[[], float] = time.monotonic) -> Context:
        """The parts wired as a broker wires them (a test drives ClientProtocols on it)."""
        metrics = Metrics(clock())
        router = Router(config.shared_subscription_strategy,
                        retain_available=config.retain_available)
        registry = Registry(config, router, metrics)
        auth = Auth(config.users, config.allow_anonymous, authenticators)
        return cls(config, registry, router, auth, metrics, clock)
