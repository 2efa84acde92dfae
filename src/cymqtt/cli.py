"""The `cymqtt` command: argv and config file -> Config -> Broker, until Ctrl-C or SIGTERM.
With `--workers N` (N > 1) the command is the supervisor of N such processes instead
(cluster/workers.py), each started as `cymqtt ARGS --worker I`.

Errors a user can cause (bad option, unreadable or invalid config, port in use) end in one line
on stderr naming the cause and the fix, and exit code 2; never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import logging.handlers
import os
import signal
import sys

from cymqtt import logs
from cymqtt._version import __version__
from cymqtt.config import LOG_LEVELS, Config, ConfigError, HttpConfig, config_from_dict
from cymqtt.http.errors import BindError
from cymqtt.mosquitto_conf import load as load_config_file

log = logging.getLogger("cymqtt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cymqtt", description="An MQTT 3.1 / 3.1.1 / 5.0 broker.",
        epilog="Options given on the command line override the config file. "
               "`cymqtt passwd ...` manages mosquitto password files (as mosquitto_passwd).")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("-p", "--port", type=int, help="TCP port (default 1883; 0 picks a free one)")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config file: TOML, or a mosquitto.conf (a file that is not TOML, "
                        "named *.conf or written as `key value` lines)")
    p.add_argument("--http", type=int, metavar="PORT",
                   help="serve the HTTP API, /metrics and the dashboard on PORT (on the "
                        "[http] host, default 127.0.0.1; 0 picks a free one)")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                   help="logging level (default info)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log everything: log level debug (as mosquitto -v)")
    p.add_argument("-d", "--daemon", action="store_true",
                   help="refused: cymqtt runs in the foreground; use systemd to run it in "
                        "the background")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where retained messages and persistent sessions are kept across "
                        "restarts (default ./cymqtt-data)")
    p.add_argument("--no-persistence", action="store_true",
                   help="keep everything in memory only (lost on restart)")
    p.add_argument("--workers", metavar="N", type=_workers,
                   help="run N worker processes sharing the ports, meeting on a local NATS "
                        "server (\"auto\": one per core; default 1, one process)")
    # A worker of `--workers N` (cluster/workers.py starts them): its index, the NATS URL of
    # the supervisor's server, and its ready and lifeline pipes.
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-nats", help=argparse.SUPPRESS)
    p.add_argument("--worker-fds", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"cymqtt {__version__}")
    return p


def _workers(value: str) -> int | str:
    # "auto" or a count; anything else goes on to Config, whose error names the key.
    return int(value) if value.strip().isdigit() else value


def make_config(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The Config from the file and the options, and the file's warnings (mosquitto.conf keys
    that were ignored)."""
    config, warnings = load_config_file(args.config) if args.config else (Config(), [])
    return with_options(config, args), warnings


def with_options(config: Config, args: argparse.Namespace) -> Config:
    """`config` (from a file) with what the command line says over it; the command persists
    unless told not to (persistence = false, or --no-persistence)."""
    log_level = args.log_level or ("debug" if args.verbose else None)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("log_level", log_level), ("data_dir", args.data_dir),
                                   ("workers", args.workers))
                 if v is not None}
    if args.no_persistence:
        overrides["persistence"] = False
    elif config.persistence is None:
        overrides["persistence"] = True
    config = config_from_dict(overrides, config)
    if args.http is not None:
        http = config.http or HttpConfig(args.http)
        config = config.replace(http=HttpConfig(args.http, http.host, http.token))
    if args.worker is not None:
        from cymqtt.cluster.workers import worker_config
        config = worker_config(config, args.worker, args.worker_nats)
    return config


def _install_loop() -> str:
    if os.environ.get("CYMQTT_LOOP") == "asyncio":     # uvloop unless told otherwise
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _serve(config: Config, loop_name: str, args: argparse.Namespace) -> None:
    import cymqtt._fast  # noqa: F401  (one clear line when the build is missing)
    from cymqtt.broker import Broker

    broker = Broker(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a SIGTERM right after the "listening on" line must stop cleanly too.
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set,
                signal.SIGHUP: lambda: _reload(broker, args),
                signal.SIGUSR1: lambda: [log.info("%s", line) for line in broker.describe()]}
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    ready_fd = None
    if args.worker is not None:       # a worker: stop with the supervisor, tell it when ready
        from cymqtt.cluster.workers import watch_lifeline
        ready_fd, lifeline_fd = (int(fd) for fd in args.worker_fds.split(","))
        watch_lifeline(loop, lifeline_fd, stop.set)
    await broker.start()
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    pid_file = config.pid_file
    try:
        if pid_file:
            _write_pid_file(pid_file)
        log.info("event loop: %s; Ctrl-C or SIGTERM stops the broker, SIGHUP reloads %s, "
                 "SIGUSR1 logs its state", loop_name, args.config or "(no config file)")
        _tune_gc()
        await stop.wait()
    finally:
        log.info("stopping")
        await broker.stop()
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass


# Python's cyclic garbage collector, tuned for a server (the `cymqtt` command only: an embedding
# program keeps its own settings). A young-generation collection runs when tracked objects
# made exceed those freed by the threshold (700 by default). Under load every in-flight message
# is several such objects (window entry, held acknowledgement, journal row) that live a few
# milliseconds, so the count passes 700 all the time and collections walk them, promote them
# and walk them again: p2p QoS 1 to persistent subscribers spent 0.53-0.66 s of 8 s in the
# collector (1,300-1,700 young, 120-160 middle and 11-14 full collections). At 50,000 the
# count never gets there in the same run: no collection at all, about 8 % of the CPU back.
GC_THRESHOLDS = (50_000, 20, 20)


def _tune_gc() -> None:
    # What start-up made (modules, config, restored sessions and retained messages) lives as
    # long as the process: frozen, no collection walks it again.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# -- operations: open-file limit, pid file, SIGHUP -------------------------------------------

class _PidFileError(Exception):
    pass


def _write_pid_file(path: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise _PidFileError(f"cannot write pid_file {path}: {exc.strerror}") from None


def _reload(broker, args: argparse.Namespace) -> None:
    """SIGHUP: read the config file again and give the broker what changed (the command
    line still overrides it). A bad file changes nothing and says so in one line."""
    if not args.config:
        log.info("reload: no config file given (-c); nothing to reload")
        return
    try:
        config, _ = load_config_file(args.config)      # (its warnings were shown at start)
        config = with_options(config, args)
    except ConfigError as exc:
        log.error("reload failed, keeping the current configuration: %s", exc)
        return
    broker.reload(config)


def _supervise(config: Config, argv: list[str]) -> int:
    """`--workers N`: the supervisor of N worker processes (cluster/workers.py)."""
    from cymqtt.cluster.workers import Supervisor, SupervisorError
    try:
        return Supervisor(config, argv).run()
    except SupervisorError as exc:
        print(f"cymqtt: {exc}", file=sys.stderr)
        return 2


def _name_worker_log(index: int) -> None:
    """Worker lines carry the worker's name ("... INFO worker-2 cymqtt: ..."): the workers
    share the supervisor's stderr (or log file). Syslog lines carry the pid already."""
    fmt = logs.FORMAT.replace("%(levelname)s ", f"%(levelname)s worker-{index} ")
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.handlers.SysLogHandler):
            handler.setFormatter(logs.LineFormatter(fmt))


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
    try:
        logs.setup(config.log_level, config.log_dest)
    except OSError as exc:
        print(f"cymqtt: cannot log to {config.log_dest}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.worker is not None:
        _name_worker_log(args.worker)
    elif config.workers > 1:
        return _supervise(config, argv)
    _raise_fd_limit()
    loop_name = _install_loop()
    try:
        asyncio.run(_serve(config, loop_name, args))
    except _PidFileError as exc:
        print(f"cymqtt: {exc}", file=sys.stderr)
        return 2
    except (ImportError, ConfigError) as exc:
        # ConfigError here: a file the config names (certificate, password or ACL file)
        print(f"cymqtt: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:          # the [http] listener's address
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
