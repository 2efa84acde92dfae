"""The cluster seam: what one node tells the others and asks of them.

A `Bus` follows the registry (it is a `RegistryListener`: subscriptions become routes other
nodes learn) and the router (a publish that some other node subscribes to is forwarded), and
it answers for the client ids and retained messages the nodes share. One node alone runs
`LocalBus`, which does nothing and costs nothing: the router and the CONNECT handler only
call a bus whose `active` is true.

The calls, all on the loop thread:

- `forward(msg)`: the router routed `msg` locally; send it to the nodes that subscribe to its
  topic (the router calls it through `Router.forward`, which the bus sets only while some
  other node has a route at all). Returns the names of the shared-subscription groups the bus delivers itself (some
  member is on another node: the cluster picks one member for the whole group), which the
  router then leaves out of its own picks; None when it takes none.
- `claim(client_id, clean_start)`: a CONNECT for `client_id`; another node that holds its
  session gives it up (closes its client, 5.0 DISCONNECT 0x8E) and hands it over. None when
  there is nothing to wait for, else a future that `ClientProtocol.wait_for` waits on.
- `retained_changed(msg)`: a retained message was stored (or, empty, deleted) here.
- `ask(question, args)`: every other node's answer (the REST API's listings).
- `start(ctx, stats, answer)`, `close()`, `stats()`, `whole(local_stats)`.

What arrives from other nodes the bus gives to the router: `Router.route(msg, now,
remote=True)` for a forwarded message, `Router.deliver_shared_key` for one picked for a local
shared group, `RetainStore.store` for a retained change.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from cymqtt.registry import RegistryListener

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.context import Context
    from cymqtt.message import Message

__all__ = ["Bus", "LocalBus"]


class Bus(RegistryListener):
    """The seam. `node` is this node's name in the cluster."""

    #: True when the router and CONNECT must call it (a cluster); False for one node
    active = False
    node = "local"

    async def start(self, ctx: Context, stats: Callable[[], dict[str, int]],
                    answer: Callable[[str, tuple], Any]) -> None:
        """Join the cluster before the broker serves (learn routes and retained messages);
        `stats` gives this node's own figures, which the others add up (`whole`), `answer`
        its answer to another node's `ask`."""

    async def close(self) -> None:
        """Leave the cluster (the other nodes drop this node's routes at once)."""

    def forward(self, msg: Message) -> frozenset[str] | None:
        return None

    def claim(self, client_id: str, clean_start: bool) -> asyncio.Future | None:
        return None

    def retained_changed(self, msg: Message) -> None:
        """`msg` is the topic's retained message now (an empty payload: it has none)."""

    def stats(self) -> dict[str, Any]:
        """The bus's own counters (cluster_*)."""
        return {}

    async def ask(self, question: str, args: tuple) -> list[Any]:
        """What every other node answers to `question` (one of `Broker.ANSWERS`, asked of
        its Broker with `args`); an empty list on one node."""
        return []

    def whole(self, local: dict[str, int]) -> dict[str, int]:
        """The whole broker's figures: `local` (this node's) with every other node's added."""
        return local


class LocalBus(Bus):
    """One node: no cluster."""
