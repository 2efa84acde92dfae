"""`cymqtt-bench`: an MQTT load generator in the spirit of emqtt-bench.

    cymqtt-bench conn   -c 10000 --rate 2000 --duration 30          idle connections, held
    cymqtt-bench pub    -c 10 --topic 'bench/%i' --qos 1 --rate 100 publishers only
    cymqtt-bench sub    -c 10 --topic 'bench/#'                      subscribers only
    cymqtt-bench pubsub --pairs 100 --qos 0                          p2p on distinct topics
    cymqtt-bench pubsub --pubs 1 --subs 1000 --topic bench/x --rate 50        fan-out
    cymqtt-bench pubsub --pubs 1000 --subs 1 --sub-topic 'bench/#' --rate 10  fan-in
    cymqtt-bench retained --count 100000 --sub 'ret/#:0' --sub 'ret/7/+/x:1'  retained delivery

Progress goes to stderr every --interval seconds; at the end a summary table and then exactly
one JSON line (the last line) go to stdout. Works against any MQTT 3.1/3.1.1/5.0 broker.
"""
from __future__ import annotations

import argparse
import json
import sys

from cymqtt.bench.client import HEADER_SIZE

VERSIONS = {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0"}


def _positive_float(text: str) -> float:
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("broker and connections")
    g.add_argument("-H", "--host", default="127.0.0.1", help="broker address (default 127.0.0.1)")
    g.add_argument("-p", "--port", type=int, default=1883, help="broker port (default 1883)")
    g.add_argument("-V", "--version", type=int, choices=(3, 4, 5), default=4,
                   help="MQTT protocol level: 3 (3.1), 4 (3.1.1, default) or 5 (5.0)")
    g.add_argument("-k", "--keepalive", type=int, default=60,
                   help="keep alive in seconds; idle clients PINGREQ within it (default 60)")
    g.add_argument("-u", "--username", default=None,
                   help="user name every client sends in CONNECT (with -P: its password)")
    g.add_argument("-P", "--password", default=None, help="password every client sends")
    g.add_argument("--persistent-subs", action="store_true",
                   help="subscribers keep persistent sessions (3.x clean session 0, 5.0 session "
                        "expiry 300 s): what a broker with persistence writes to its store")
    g.add_argument("--ws", dest="ws", action="store_const", const="ws", default=None,
                   help="MQTT over WebSocket: ws://HOST:PORT/mqtt, subprotocol mqtt")
    g.add_argument("--wss", dest="ws", action="store_const", const="wss",
                   help="MQTT over secure WebSocket (wss://); the broker's certificate is "
                        "checked against --cafile, or not at all without it")
    g.add_argument("--ws-path", default="/mqtt",
                   help="request path of the WebSocket handshake (default /mqtt)")
    g.add_argument("--cafile", default=None,
                   help="CA certificate (PEM) that signs the broker's, for --wss")
    g.add_argument("--procs", type=int, default=1,
                   help="worker processes to spread the clients over (default 1)")
    g.add_argument("--ifaddrs", default=None,
                   help="comma-separated source addresses to bind, round robin (default: none; "
                        "127.0.0.x chosen automatically past --conns-per-addr connections)")
    g.add_argument("--conns-per-addr", type=int, default=28000,
                   help="with a loopback broker and no --ifaddrs: past this many connections, "
                        "bind source addresses 127.0.0.1, 127.0.0.2, ... with this many each "
                        "(default 28,000, the ephemeral port range; lower keeps connect() fast "
                        "when many ports are in TIME_WAIT)")
    g.add_argument("--max-pending", type=int, default=100,
                   help="connection handshakes in progress at once, over all workers "
                        "(default 100)")
    g.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds a connection (CONNECT..CONNACK/SUBACK) may take (default 30)")
    g.add_argument("--client-prefix", default=None, help="client id prefix (default cyb<pid>)")
    o = common.add_argument_group("output")
    o.add_argument("-i", "--interval", type=float, default=1.0,
                   help="seconds between progress lines on stderr (default 1)")
    o.add_argument("--quiet", action="store_true",
                   help="no progress and no table: only the JSON line")
    o.add_argument("--name", default=None, help="scenario name in the JSON (default: derived)")

    msg = argparse.ArgumentParser(add_help=False)
    m = msg.add_argument_group("messages")
    m.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=0,
                   help="QoS of publishes and subscriptions (default 0)")
    m.add_argument("-s", "--size", type=int, default=64,
                   help=f"payload bytes, at least {HEADER_SIZE} (default 64)")
    m.add_argument("-r", "--rate", type=_positive_float, default=0.0,
                   help="messages per second per publisher, paced by a 1 ms tick (each tick "
                        "a publisher sends what its schedule owes); 0 = as fast as "
                        "back-pressure (QoS 0) or the inflight window (QoS 1/2) allows "
                        "(default 0)")
    m.add_argument("-d", "--duration", type=_positive_float, default=None,
                   help="seconds to publish (default 10, or until --count is reached)")
    m.add_argument("-n", "--count", type=int, default=0,
                   help="messages per publisher, then stop (default: no limit)")
    m.add_argument("-w", "--inflight", type=int, default=32,
                   help="QoS 1/2 messages in flight per publisher (default 32)")
    m.add_argument("--connect-rate", type=_positive_float, default=0.0,
                   help="new connections per second, over all workers; 0 = as fast as "
                        "--max-pending allows (default 0)")
    m.add_argument("--sndbuf", type=int, default=0,
                   help="publishers' socket send buffer in bytes (SO_SNDBUF; Linux doubles "
                        "it); 0 = the kernel's default, which grows to net.ipv4.tcp_wmem's "
                        "maximum (4 MB) per socket while the broker reads slower than the "
                        "publisher writes (default 0)")
    m.add_argument("--drain", type=_positive_float, default=5.0,
                   help="after publishing, seconds without progress before giving up on "
                        "missing acks and deliveries (default 5)")

    p = argparse.ArgumentParser(
        prog="cymqtt-bench", description="MQTT load generator: connections, throughput, "
        "end-to-end latency and loss, against cymqtt or any MQTT broker.",
        epilog="Topics may contain %i, replaced by the client's index (1-based).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("conn", parents=[common], help="open N idle connections and hold them",
                       description="Open N connections at --rate per second and hold them "
                                   "for --duration seconds, pinging at keep alive.")
    c.add_argument("-c", "--clients", type=int, default=100, help="connections (default 100)")
    c.add_argument("-r", "--rate", type=_positive_float, default=0.0,
                   help="connections per second; 0 = as fast as --max-pending allows")
    c.add_argument("-d", "--duration", type=_positive_float, default=10.0,
                   help="seconds to hold the connections (default 10)")

    pb = sub.add_parser("pub", parents=[common, msg], help="publishers only",
                        description="P publishers, each on its own topic pattern.")
    pb.add_argument("-c", "--clients", "--pubs", dest="clients", type=int, default=1,
                    help="publishers (default 1)")
    pb.add_argument("-t", "--topic", default="bench/%i", help="topic (default bench/%%i)")

    sb = sub.add_parser("sub", parents=[common], help="subscribers only",
                        description="S subscribers; counts what arrives and its latency when "
                                    "the payload came from cymqtt-bench pub.")
    sb.add_argument("-c", "--clients", "--subs", dest="clients", type=int, default=1,
                    help="subscribers (default 1)")
    sb.add_argument("-t", "--topic", default="bench/#", help="topic filter (default bench/#)")
    sb.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=0,
                    help="subscription QoS (default 0)")
    sb.add_argument("-d", "--duration", type=_positive_float, default=10.0,
                    help="seconds to listen (default 10)")

    ps = sub.add_parser("pubsub", parents=[common, msg],
                        help="publishers and subscribers in one run: latency and loss",
                        description="Publishers and subscribers in one run; the subscribers "
                                    "measure end-to-end latency and loss.")
    ps.add_argument("--pairs", type=int, default=0,
                    help="N publishers and N subscribers, pair i on topic i (p2p)")
    ps.add_argument("--pubs", type=int, default=0, help="publishers")
    ps.add_argument("--subs", type=int, default=0, help="subscribers")
    ps.add_argument("-t", "--topic", default="bench/%i",
                    help="publish topic (default bench/%%i)")
    ps.add_argument("--sub-topic", default=None,
                    help="subscription filter (default: the publish topic)")
    ps.add_argument("--max-ahead", type=int, default=100,
                    help="QoS 0 at --rate 0: at most this many messages per publisher sent "
                         "but not yet received by the subscribers in the same process "
                         "(end-to-end flow control on top of TCP back-pressure, which on "
                         "loopback lets hundreds of MB queue up); 0 = TCP back-pressure only "
                         "(default 100)")
    rt = sub.add_parser("retained", parents=[common],
                        help="store retained messages, then time new subscribers getting them",
                        description="Store --count retained messages (one topic each: "
                                    "PREFIX/<i // width>/<i %% width>/x), then for each --sub "
                                    "a new subscriber counts and times what it gets.")
    rt.add_argument("-n", "--count", type=int, default=100_000,
                    help="retained messages to store (default 100,000)")
    rt.add_argument("--width", type=int, default=1000,
                    help="topics per second level (default 1,000: PREFIX/7/+/x matches "
                         "1,000 topics)")
    rt.add_argument("--prefix", default="ret", help="first topic level (default ret)")
    rt.add_argument("-s", "--size", type=int, default=64, help="payload bytes (default 64)")
    rt.add_argument("--store-qos", type=int, choices=(0, 1, 2), default=1,
                    help="QoS of the stored messages (default 1)")
    rt.add_argument("--no-store", dest="store", action="store_false",
                    help="skip storing: the broker already holds them")
    rt.add_argument("--sub", action="append", default=None, metavar="FILTER[:QOS]",
                    help="a subscription to time, repeatable (default: PREFIX/#:0)")
    rt.add_argument("--timeout", type=_positive_float, default=30.0,
                    help="seconds without a new message before a subscriber gives up "
                         "(default 30)")
    rt.add_argument("--settle", type=_positive_float, default=0.5,
                    help="seconds to keep listening after the expected count, to catch "
                         "extras (default 0.5)")
    return p


def options(args: argparse.Namespace) -> dict:
    """The parsed arguments as the plain dict the workers get."""
    cmd = args.command
    o = {
        "host": args.host, "port": args.port, "version": args.version,
        "keepalive": args.keepalive, "procs": max(1, args.procs), "ifaddrs": args.ifaddrs,
        "username": args.username, "password": args.password,
        "persistent_subs": args.persistent_subs,
        "ws": args.ws, "ws_path": args.ws_path, "cafile": args.cafile,
        "max_pending": max(1, args.max_pending), "conns_per_addr": max(1, args.conns_per_addr),
        "connect_timeout": args.connect_timeout,
        "client_prefix": args.client_prefix, "interval": max(0.1, args.interval),
        "quiet": args.quiet, "name": args.name,
        "qos": getattr(args, "qos", 0), "size": getattr(args, "size", 64),
        "rate": 0.0, "count": getattr(args, "count", 0) or 0,
        "inflight": max(1, getattr(args, "inflight", 32)),
        "connect_rate": getattr(args, "connect_rate", 0.0),
        "drain": getattr(args, "drain", 5.0),
        "sndbuf": max(0, getattr(args, "sndbuf", 0) or 0),
        "duration": getattr(args, "duration", None),
        "pubs": 0, "subs": 0, "conns": 0, "pairs": 0,
        "max_ahead": getattr(args, "max_ahead", 0),
        "topic": "bench/%i", "sub_topic": "bench/#",
        # write batching: a QoS 0 flood batch, and the transport high-water mark
        "batch_bytes": 32 * 1024, "high_water": 64 * 1024,
    }
    if cmd == "conn":
        o["conns"] = args.clients
        o["connect_rate"] = args.rate
    elif cmd == "pub":
        o["pubs"] = args.clients
        o["topic"] = args.topic
        o["rate"] = args.rate
    elif cmd == "sub":
        o["subs"] = args.clients
        o["sub_topic"] = args.topic
    elif cmd == "pubsub":
        if args.pairs:
            o["pubs"] = o["subs"] = o["pairs"] = args.pairs
        else:
            o["pubs"], o["subs"] = args.pubs, args.subs
        o["topic"] = args.topic
        o["sub_topic"] = args.sub_topic or args.topic
        o["rate"] = args.rate
    else:                           # retained
        from cymqtt.bench.retained import parse_sub
        o.update(count=args.count, width=args.width, prefix=args.prefix,
                 store_qos=args.store_qos, store=args.store, timeout=args.timeout,
                 settle=args.settle,
                 retained_subs=[parse_sub(t) for t in (args.sub or [f"{args.prefix}/#:0"])])
    if cmd in ("pub", "pubsub") and o["duration"] is None and not o["count"]:
        o["duration"] = 10.0
    return o


def check(o: dict, cmd: str) -> str | None:
    """A usage error as one line, or None."""
    if cmd == "pubsub" and not (o["pubs"] and o["subs"]):
        return "pubsub needs --pairs N, or --pubs P and --subs S"
    if cmd in ("pub", "pubsub") and o["size"] < HEADER_SIZE:
        return (f"--size must be at least {HEADER_SIZE} (send time, publisher and sequence "
                "number travel in the payload)")
    for key in ("pubs", "subs", "conns"):
        if o[key] < 0:
            return f"--{key} must be >= 0"
    if cmd == "conn" and o["conns"] <= 0:
        return "conn needs --clients N > 0"
    if cmd in ("pub", "sub") and not (o["pubs"] or o["subs"]):
        return "--clients must be > 0"
    if o["ws"] is not None and cmd == "retained":
        return "retained speaks MQTT over TCP only (--ws and --wss are for conn, pub, sub, " \
               "pubsub)"
    if o["cafile"] is not None and o["ws"] != "wss":
        return "--cafile is for --wss"
    if not o["ws_path"].startswith("/"):
        return f"--ws-path must start with /, not {o['ws_path']!r}"
    if not 0 < o["port"] < 65536:
        return f"--port {o['port']} is not a TCP port"
    if "%i" not in o["topic"] and cmd == "pubsub" and o["pairs"] and o["pairs"] > 1:
        return "--pairs needs a topic with %i (one topic per pair)"
    return None


def _num(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}"
    return f"{v:,}{unit}"


def summary_table(r: dict) -> str:
    lines = []
    what = r["command"]
    over = "" if r.get("transport", "tcp") == "tcp" else f" over {r['transport']}://"
    head = f"cymqtt-bench {r['scenario']} ({what}) against {r['broker']}{over}, " \
           f"{VERSIONS.get(r['version'], r['version'])}"
    if r["qos"] is not None:
        head += f", QoS {r['qos']}"
    if r["size"]:
        head += f", {r['size']} B payload"
    if r["rate"]:
        head += f", {r['rate']:g} msg/s per publisher"
    lines.append(head)
    row = "  {:<22} {}".format
    parts = []
    for key, label in (("pubs", "pub"), ("subs", "sub"), ("conns", "conn")):
        if r[key]:
            parts.append(f"{r[key]:,} {label}")
    lines.append(row("clients", f"{r['clients']:,} ({', '.join(parts)})"))
    lines.append(row("connected", f"{r['connected']:,} in {r['connect_time_s']:.2f} s "
                                  f"({_num(r['connect_rate_per_s'])} conn/s)"))
    if what == "conn":
        lines.append(row("held", f"{r['duration_s']:.1f} s, still connected at the end: "
                                 f"{r['connected_at_end']:,}; pings {r['pings']:,} "
                                 f"pongs {r['pongs']:,}"))
    if what in ("pub", "pubsub"):
        lines.append(row("sent", f"{r['sent']:,} in {r['duration_s']:.2f} s "
                                 f"({_num(r['sent_per_s'])}/s)"
                         + (f", acked {r['acked']:,}" if r["qos"] else "")))
    if what in ("sub", "pubsub"):
        lines.append(row("received", f"{r['received']:,} ({_num(r['recv_per_s'])}/s)"))
    if r["expected"] is not None:
        lines.append(row("expected / lost", f"{r['expected']:,} / {r['lost']:,}"
                         + (f"  (duplicates {r['duplicates']:,})" if r["duplicates"] else "")))
    lat = r["latency_ms"]
    if lat:
        lines.append(row("latency (ms)", f"p50 {lat['p50']}  p90 {lat['p90']}  "
                                         f"p99 {lat['p99']}  max {lat['max']}"))
    lines.append(row("errors", f"{r['errors']:,}"))
    for text, n in r["error_detail"].items():
        lines.append(row("", f"{n:,} x {text}"))
    for note in r["notes"]:
        lines.append(row("note", note))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    o = options(args)
    problem = check(o, args.command)
    if problem:
        print(f"cymqtt-bench: {problem}", file=sys.stderr)
        return 2
    try:
        import cymqtt._fast  # noqa: F401  (one clear line when the build is missing)
    except ImportError as exc:
        print(f"cymqtt-bench: {exc}", file=sys.stderr)
        return 2
    from cymqtt.bench.runner import BenchError, Coordinator

    if args.command == "retained":
        from cymqtt.bench import retained
        try:
            result = retained.run(o)
        except BenchError as exc:
            print(f"cymqtt-bench: {exc}", file=sys.stderr)
            return 2
        if not o["quiet"]:
            print(retained.summary_table(result))
        print(json.dumps(result), flush=True)
        return 1 if result["errors"] else 0
    coord = Coordinator(o, args.command)
    try:
        result = coord.run()
    except BenchError as exc:
        print(f"cymqtt-bench: {exc}", file=sys.stderr)
        return 2
    if not o["quiet"]:
        print(summary_table(result))
    print(json.dumps(result), flush=True)
    if result["connected"] == 0 or coord.fatal:
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
