"""The `cymqtt` command: argv and config file -> Config -> Broker, until Ctrl-C or SIGTERM.

Errors a user can cause (bad option, unreadable or invalid config, port in use) end in one line
on stderr naming the cause and the fix, and exit code 2; never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys

from cymqtt._version import __version__
from cymqtt.config import LOG_LEVELS, Config, ConfigError, config_from_dict
from cymqtt.mosquitto_conf import load as load_config_file

log = logging.getLogger("cymqtt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cymqtt", description="An MQTT 3.1 / 3.1.1 / 5.0 broker.",
        epilog="Options given on the command line override the config file.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("-p", "--port", type=int, help="TCP port (default 1883; 0 picks a free one)")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config file: TOML, or a mosquitto.conf (a file that is not TOML, "
                        "named *.conf or written as `key value` lines)")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                   help="logging level (default info)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log everything: log level debug (as mosquitto -v)")
    p.add_argument("-d", "--daemon", action="store_true",
                   help="refused: cymqtt runs in the foreground; use systemd to run it in "
                        "the background")
    p.add_argument("--version", action="version", version=f"cymqtt {__version__}")
    return p


def make_config(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The Config from the file and the options, and the file's warnings (mosquitto.conf keys
    that were ignored)."""
    config, warnings = load_config_file(args.config) if args.config else (Config(), [])
    log_level = args.log_level or ("debug" if args.verbose else None)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("log_level", log_level)) if v is not None}
    return (config_from_dict(overrides, config) if overrides else config), warnings


def _install_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _serve(config: Config, loop_name: str = "asyncio") -> None:
    import cymqtt._fast  # noqa: F401  (one clear line when the build is missing)
    from cymqtt.broker import Broker

    broker = Broker(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a SIGTERM right after the "listening on" line must stop cleanly too.
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    await broker.start()
    log.info("event loop: %s; Ctrl-C or SIGTERM stops the broker", loop_name)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await broker.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.daemon:
        # Detached, a port in use or a bad file could not be reported on this terminal.
        print("cymqtt: -d (run in the background) is not supported: run cymqtt in the "
              "foreground under systemd (Type=simple) or another supervisor", file=sys.stderr)
        return 2
    try:
        config, warnings = make_config(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"cymqtt: {line}", file=sys.stderr)
        return 2
    for line in warnings:           # on the terminal, wherever log_dest sends the log
        print(f"cymqtt: warning: {line}", file=sys.stderr)
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop_name = _install_loop()
    try:
        asyncio.run(_serve(config, loop_name))
    except (ImportError, ConfigError) as exc:
        # ConfigError here: a file the config names (certificate, password or ACL file)
        print(f"cymqtt: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"cymqtt: port {config.port} on {config.host} is already in use; stop the "
                  f"other server or choose another with --port", file=sys.stderr)
        elif exc.errno in (errno.EACCES, errno.EPERM):
            print(f"cymqtt: not allowed to listen on {config.host}:{config.port} "
                  f"({exc.strerror}); use a port above 1023 or run with privileges",
                  file=sys.stderr)
        elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, OSError) and exc.errno in (
                -2, -3, -5, -9):
            print(f"cymqtt: cannot listen on {config.host}:{config.port} ({exc}); "
                  f"check --host", file=sys.stderr)
        else:
            print(f"cymqtt: cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
