"""The `cymqtt` command (GitHub issue "The broker core"): version, user errors as one line with
exit code 2 and no traceback, a clean start and SIGTERM stop, and interoperability with
mosquitto_pub / mosquitto_sub against a broker started from the command line.

Each broker runs as `python -m cymqtt` in a subprocess; its port comes from the
"listening on HOST:PORT" log line (port 0 picks a free one).
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from cymqtt._version import __version__
from helpers_paho import V5, V311, PahoClient

# Not run again on uvloop by make test: each broker is `python -m cymqtt`, a process of its own.
pytestmark = pytest.mark.loop_independent

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
LISTENING = re.compile(r"listening on ([\w.:]+):(\d+)")


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cymqtt", *args], capture_output=True,
                          text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr without the log lines."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("cymqtt: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


class LineReader:
    """Reads a text stream line by line in a thread; `wait_for` polls with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: re.Pattern, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r}; got {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = pattern.search(line)
            if m:
                return m

    def finish(self, timeout: float = 5.0) -> list[str]:
        """After the process ended: every line, including those not waited for."""
        self._thread.join(timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen


class CliBroker:
    """`python -m cymqtt ARGS` in a subprocess, its stderr read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cymqtt", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log = LineReader(self.proc.stderr)
        self.seen = self.log.seen
        host, port = self.log.wait_for(LISTENING).groups()
        self.host, self.port = host, int(port)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.log.finish()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def cli_broker():
    started: list[CliBroker] = []

    def start(*args: str) -> CliBroker:
        b = CliBroker(*args)
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


@pytest.fixture
def config_file(tmp_path):
    def write(text: str) -> str:
        p = tmp_path / "cymqtt.toml"
        p.write_text(text)
        return str(p)
    return write


# -- version and user errors ---------------------------------------------------------------------

def test_version():
    """`cymqtt --version` prints the package version and exits 0."""
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"cymqtt {__version__}"


@pytest.fixture
def busy_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_port_in_use(busy_port):
    """A port already taken: exit code 2, one line naming the port and the fix, no
    traceback."""
    r = run_cli("--port", str(busy_port))
    line = assert_one_line_error(r, str(busy_port), "already in use", "--port")
    assert line == r.stderr.strip().splitlines()[-1]


def test_port_in_use_quiet_is_exactly_one_line(busy_port):
    """With logging at warning, the error is the only thing on stderr."""
    r = run_cli("--port", str(busy_port), "--log-level", "warning")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert_one_line_error(r, "already in use")


def test_missing_config_file(tmp_path):
    """A config file that cannot be read: exit 2, one line naming the file and why."""
    path = str(tmp_path / "nope.toml")
    r = run_cli("-c", path)
    assert_one_line_error(r, path, "cannot read")
    assert r.stderr.count("\n") == 1


def test_config_path_is_a_directory(tmp_path):
    """A directory given as config file is unreadable too: one line, exit 2."""
    r = run_cli("--config", str(tmp_path))
    assert_one_line_error(r, str(tmp_path), "cannot read")


def test_invalid_toml(config_file):
    """A config file that is not TOML: exit 2, one line saying so."""
    path = config_file("port = = 1883\n")
    r = run_cli("-c", path)
    assert_one_line_error(r, path, "not valid TOML")


def test_unknown_config_key(config_file):
    """An unknown key is an error naming the key (a typo must not be silently ignored) and the
    key it resembles, without listing every key."""
    r = run_cli("-c", config_file('prot = 1883\n'))
    line = assert_one_line_error(r, "'prot'", "unknown config key", "did you mean 'port'?")
    assert "max_queued" not in line


def test_every_config_error_at_once(config_file):
    """Every error of a file is reported in one go, one line each: unknown keys (with their
    near miss), wrong types and values out of range."""
    r = run_cli("-c", config_file('prot = 1883\nmax_queud = 5\nqueue_qos0 = 1\n'
                                  'max_inflight = 0\nport = 70000\nzzz = 1\n'))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 6, lines
    assert all(ln.startswith("cymqtt: ") for ln in lines), lines
    text = "\n".join(lines)
    assert "'prot'; did you mean 'port'?" in text
    assert "'max_queud'; did you mean 'max_queued'?" in text
    assert "'queue_qos0' must be bool" in text
    assert "'max_inflight' must be 1 .. 65535" in text
    assert "'port' must be a port number 0..65535" in text
    assert "unknown config key 'zzz' (README.md lists the keys)" in text


def test_command_line_takes_what_the_file_takes(busy_port):
    """`--log-level critical` (any case) is accepted, as `log_level = "critical"` is in the
    file: the run gets as far as binding its port."""
    r = run_cli("--log-level", "CRITICAL", "-p", str(busy_port))
    assert_one_line_error(r, str(busy_port), "already in use")


def test_daemon_is_refused_with_the_alternative():
    """mosquitto's -d (run in the background) is refused: one line saying to use systemd."""
    r = run_cli("-d", "-p", "0")
    assert_one_line_error(r, "-d", "not supported", "systemd")


@pytest.mark.parametrize("text,key", [
    ('port = "1883"\n', "port"),
    ('queue_qos0 = 1\n', "queue_qos0"),
    ('max_queued = true\n', "max_queued"),
    ('host = 127\n', "host"),
])
def test_wrong_type_config_value(config_file, text, key):
    """A value of the wrong type names the key and what it takes."""
    r = run_cli("-c", config_file(text))
    assert_one_line_error(r, f"'{key}'", "must be")


def test_out_of_range_config_value(config_file):
    """A value of the right type but outside its range names the key."""
    r = run_cli("-c", config_file("port = 70000\n"))
    assert_one_line_error(r, "'port'", "0..65535")


def test_bad_command_line_option_exits_2():
    """An unknown option is a usage error (argparse: exit 2, no traceback)."""
    r = run_cli("--no-such-option")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--no-such-option" in r.stderr


# -- running -------------------------------------------------------------------------------------

def test_config_file_start_serve_and_sigterm(cli_broker, config_file):
    """A good config file (port 0) starts a broker that serves real clients; SIGTERM stops it
    cleanly with exit code 0; connected MQTT 5 clients are told 0x8B (server shutting down)."""
    path = config_file('host = "127.0.0.1"\nport = 0\nmax_queued = 50\nsys_interval = 0\n'
                       'log_level = "info"\n')
    b = cli_broker("-c", path)
    assert b.host == "127.0.0.1" and b.port > 0
    sub = PahoClient(b.port, "cli-sub", V5)
    pub = PahoClient(b.port, "cli-pub", V311)
    try:
        sub.subscribe("cli/#", 1)
        pub.publish("cli/t", b"through the cli broker", qos=1)
        assert sub.wait_messages(1)[0].payload == b"through the cli broker"
        assert b.stop() == 0
        assert sub.wait_disconnected() == 0x8B
    finally:
        sub.close()
        pub.close()
    assert not any("Traceback" in ln for ln in b.seen), b.seen
    assert any("stopped" in ln for ln in b.seen), b.seen


def test_command_line_overrides_config_file(cli_broker, config_file):
    """--port on the command line overrides the file's port."""
    path = config_file("port = 1\n")            # would need privileges; --port wins
    b = cli_broker("-c", path, "--port", "0")
    assert b.port not in (0, 1)
    assert b.stop() == 0


def test_mosquitto_short_options(cli_broker):
    """-p PORT and -v (verbose: log level debug) as mosquitto spells them."""
    b = cli_broker("-p", "0", "-v")
    assert b.port > 0
    c = PahoClient(b.port, "verbose-client", V311)
    c.publish("$not/allowed", b"x", qos=1)      # refused, logged at debug level only
    c.close()
    assert b.stop() == 0
    assert any(" DEBUG " in ln and "$not/allowed" in ln for ln in b.seen), b.seen


@pytest.mark.parametrize("command", [["cymqtt"], ["cymqtt.bench", "conn"]])
def test_port_has_the_same_two_spellings_in_both_commands(command):
    """`cymqtt` and `cymqtt-bench` both take -p PORT and --port PORT."""
    r = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "-p PORT, --port PORT" in r.stdout


def test_sigint_stops_cleanly(cli_broker):
    """Ctrl-C (SIGINT) stops the broker like SIGTERM: exit 0, no traceback."""
    b = cli_broker("--port", "0")
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(10) == 0
    _, err = b.proc.communicate(timeout=5)
    assert "Traceback" not in err


@pytest.mark.skipif(not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")
                         and shutil.which("stdbuf")),
                    reason="mosquitto clients (and stdbuf) not installed")
@pytest.mark.parametrize("version", ["mqttv31", "mqttv311", "mqttv5"])
def test_mosquitto_sub_receives_mosquitto_pub(cli_broker, version):
    """mosquitto_sub -t '#' -v -C 1 receives what mosquitto_pub -t a -m hi sent, through a
    broker started from the command line."""
    b = cli_broker("--port", "0")
    port = str(b.port)
    # stdbuf: mosquitto_sub's stdout is a pipe; line buffering lets us see SUBACK as it comes.
    sub = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", port,
                            "-V", version, "-t", "#", "-v", "-C", "1", "-d"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = LineReader(sub.stdout)
        out.wait_for(re.compile("SUBACK"))         # subscribed: now publish once
        pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", version,
                              "-t", "a", "-m", "hi", "-q", "1"],
                             capture_output=True, text=True, timeout=10)
        assert pub.returncode == 0, pub.stderr
        assert sub.wait(10) == 0, out.seen
        lines = out.finish()
        assert "a hi" in lines, lines
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    assert b.stop() == 0


@pytest.mark.skipif(not shutil.which("mosquitto_pub"), reason="mosquitto_pub not installed")
def test_mosquitto_pub_retained_then_sub(cli_broker):
    """A retained message from mosquitto_pub -r is delivered to a later mosquitto_sub."""
    b = cli_broker("--port", "0")
    port = str(b.port)
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", "r/t",
                          "-m", "kept", "-r", "-q", "1"], capture_output=True, text=True,
                         timeout=10)
    assert pub.returncode == 0, pub.stderr
    sub = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", "r/#", "-v",
                          "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10)
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == "r/t kept"
    assert b.stop() == 0


def test_cli_env_is_not_needed():
    """`python -m cymqtt --help` works from any directory (no reliance on the cwd)."""
    r = subprocess.run([sys.executable, "-m", "cymqtt", "--help"], capture_output=True,
                       text=True, timeout=20, cwd="/", env=dict(os.environ))
    assert r.returncode == 0
    assert "--port" in r.stdout and "--config" in r.stdout
