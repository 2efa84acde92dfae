"""The `cymqtt` command: argv and config file -> Config -> Broker, until Ctrl-C or SIGTERM.

Errors a user can cause (bad option, unreadable or invalid config, port in use) end in one line
on stderr naming the cause and the fix, and exit code 2; never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys

from cymqtt import logs
from cymqtt._version import __version__
from cymqtt.config import Config, ConfigError, config_from_dict, load_config

log = logging.getLogger("cymqtt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cymqtt", description="An MQTT 3.1 / 3.1.1 / 5.0 broker.",
        epilog="Options given on the command line override the config file. "
               "`cymqtt passwd ...` manages mosquitto password files (as mosquitto_passwd).")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="TCP port (default 1883; 0 picks a free one)")
    p.add_argument("-c", "--config", metavar="FILE", help="TOML config file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="logging level (default info)")
    p.add_argument("--version", action="version", version=f"cymqtt {__version__}")
    return p


def make_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else Config()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("log_level", args.log_level)) if v is not None}
    return config_from_dict(overrides, config) if overrides else config


def _install_loop() -> str:
    if os.environ.get("CYMQTT_LOOP") == "asyncio":     # uvloop unless told otherwise
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _serve(config: Config, loop_name: str = "asyncio",
                 config_path: str | None = None) -> None:
    import cymqtt._fast  # noqa: F401  (one clear line when the build is missing)
    from cymqtt.broker import Broker

    broker = Broker(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a SIGTERM right after the "listening on" line must stop cleanly too.
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set,
                signal.SIGHUP: lambda: _reload(broker, config_path),
                signal.SIGUSR1: lambda: [log.info("%s", line) for line in broker.describe()]}
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    await broker.start()
    pid_file = config.pid_file
    try:
        if pid_file:
            _write_pid_file(pid_file)
        log.info("event loop: %s; Ctrl-C or SIGTERM stops the broker, SIGHUP reloads %s, "
                 "SIGUSR1 logs its state", loop_name, config_path or "(no config file)")
        await stop.wait()
    finally:
        log.info("stopping")
        await broker.stop()
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass


# -- operations: open-file limit, pid file, SIGHUP -------------------------------------------

class _PidFileError(Exception):
    pass


def _write_pid_file(path: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise _PidFileError(f"cannot write pid_file {path}: {exc.strerror}") from None


def _reload(broker, config_path: str | None) -> None:
    """SIGHUP: read the config file again and give the broker what changed. A bad file
    changes nothing and says so in one line."""
    if not config_path:
        log.info("reload: no config file given (-c); nothing to reload")
        return
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        log.error("reload failed, keeping the current configuration: %s", exc)
        return
    broker.reload(config)


def _raise_fd_limit() -> None:
    from cymqtt.net.accept import raise_open_file_limit

    before, now, hard = raise_open_file_limit()
    shown = lambda n: "unlimited" if n < 0 else str(n)  # noqa: E731
    if now != before:
        log.info("open-file limit: soft %s raised to %s (hard limit %s)", shown(before),
                 shown(now), shown(hard))
    else:
        log.info("open-file limit: soft %s, hard %s", shown(now), shown(hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["passwd"]:
        # `cymqtt passwd [-c] [-b] [-D] [-U] FILE USER [PASSWORD]`, as mosquitto_passwd
        from cymqtt.passwd import main as passwd_main
        return passwd_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = make_config(args)
    except ConfigError as exc:
        print(f"cymqtt: {exc}", file=sys.stderr)
        return 2
    try:
        logs.setup(config.log_level, config.log_dest)
    except OSError as exc:
        print(f"cymqtt: cannot log to {config.log_dest}: {exc.strerror}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    loop_name = _install_loop()
    try:
        asyncio.run(_serve(config, loop_name, args.config))
    except _PidFileError as exc:
        print(f"cymqtt: {exc}", file=sys.stderr)
        return 2
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
