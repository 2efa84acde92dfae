"""Context: everything a connection's MQTT handlers may use, and nothing more.

One per broker, shared by every `ClientProtocol`. Handlers reach the rest of the broker only
through it, never through the `Broker` object, so they can be driven in tests with a context of
their own and the broker can change how it wires things without touching a handler.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Awaitable, Callable

from cymqtt.access import AccessControl, Authorizer
from cymqtt.auth import Auth, Authenticator
from cymqtt.config import ConfigError
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

    __slots__ = ("config", "registry", "router", "retained", "auth", "access", "metrics",
                 "clock", "journal", "cluster")

    def __init__(self, config: Config, registry: Registry, router: Router, auth: Auth,
                 metrics: Metrics, clock: Callable[[], float],
                 access: AccessControl | None = None) -> None:
        self.config = config
        self.registry = registry
        self.router = router
        self.retained: RetainStore = router.retained
        self.auth = auth
        self.access = access if access is not None else AccessControl()
        self.metrics = metrics
        self.clock = clock
        # The store's journal (store.Journal) when the broker persists, else None: handlers
        # hand it the acknowledgements that must wait for a commit (`ack`).
        self.journal = None
        # The cluster's bus (cluster.Bus) when this broker is one node of several, else None:
        # a CONNECT claims its client id through it, a SUBACK waits for its routes.
        self.cluster = None

    @classmethod
    def create(cls, config: Config, authenticators: list[Authenticator] | None = None,
               clock: Callable[[], float] = time.monotonic,
               authorizers: list[Authorizer] | None = None,
               offload: Callable[..., Awaitable] | None = None,
               retained: RetainStore | None = None) -> Context:
        """The parts wired as a broker wires them (a test drives ClientProtocols on it).
        Raises ConfigError when the password or ACL file cannot be used."""
        metrics = Metrics(clock())
        router = Router(config.shared_subscription_strategy, retained,
                        retain_available=config.retain_available)
        registry = Registry(config, router, metrics)
        auth = Auth(config.users, config.allow_anonymous, authenticators,
                    load_password_file(config.password_file), offload)
        access = AccessControl(load_acl_file(config.acl_file), authorizers)
        return cls(config, registry, router, auth, metrics, clock, access)


def load_password_file(path: str | None):
    """The password file at `path` (None: none); ConfigError when it cannot be used."""
    from cymqtt.passwd import PasswordFile, PasswordFileError
    return _load("password_file", path, PasswordFile.load, PasswordFileError)


def load_acl_file(path: str | None):
    """The ACL file at `path` (None: none); ConfigError when it cannot be used."""
    from cymqtt.acl import AclError, AclFile
    return _load("acl_file", path, AclFile.load, AclError)


def _load(key: str, path: str | None, load: Callable, error: type[Exception]):
    if path is None:
        return None
    try:
        return load(path)
    except (OSError, error) as exc:
        raise ConfigError(f"{key}: {_why(exc)}") from None


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename}: {exc.strerror}"
    return str(exc)
