"""Every core and many hosts: the cluster seam (`Bus`), one node's `LocalBus`, and the NATS
bus that nodes (`[cluster]`) and `--workers` processes meet on."""
from __future__ import annotations

from typing import TYPE_CHECKING

from cymqtt.cluster.base import Bus, LocalBus
from cymqtt.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config

__all__ = ["Bus", "LocalBus", "make_bus"]


def make_bus(config: Config) -> Bus:
    """The bus `config` asks for: NATS with a [cluster] table, else one node's LocalBus."""
    if config.cluster is None:
        return LocalBus()
    try:
        from cymqtt.cluster.nats import NatsBus    # (nats-py: imported only for a cluster)
    except ImportError as exc:
        raise ConfigError(f"[cluster] needs the NATS client ({exc.name} is not installed): "
                          "pip install 'cymqtt[cluster]'") from None
    return NatsBus(config.cluster)
