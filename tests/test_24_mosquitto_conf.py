"""`cymqtt -c mosquitto.conf` (GitHub issue 15, item 4): a mosquitto.conf is read natively and
translated to cymqtt's config; every key cymqtt has is mapped, every other one gets one warning
line naming it and its line; mosquitto 2.0's defaults (localhost only without a listener, no
anonymous clients once a listener is configured) are kept.

A key's translation is supported when its cymqtt key is a `Config` field at run time, so the
assertions below ask `dataclasses.fields(Config)` which keys exist rather than hard-coding
today's answer: a feature landing later turns a warning into a mapping without failing these.
"""
from __future__ import annotations

import dataclasses
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from _testbase import RawClient, free_port
from cymqtt._fast.codec import Connect, Subscribe
from cymqtt.config import Config, ConfigError
from cymqtt.mosquitto_conf import is_mosquitto_conf, load, translate
from helpers_paho import V311, PahoClient

# Not run again on uvloop by make test: each broker is `python -m cymqtt`, a process of its own.
pytestmark = pytest.mark.loop_independent

FIELDS = {f.name for f in dataclasses.fields(Config)}

# The Debian/Ubuntu default /etc/mosquitto/mosquitto.conf (package mosquitto 2.0), verbatim.
DEBIAN_DEFAULT = """\
# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""

needs_mosquitto_clients = pytest.mark.skipif(
    not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")),
    reason="mosquitto clients not installed")


def write(tmp_path, text: str, name: str = "mosquitto.conf") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


class Cymqtt:
    """`python -m cymqtt ARGS` in a subprocess; ready once `port` accepts connections (found
    by connecting, not from the log, which log_dest may send elsewhere)."""

    def __init__(self, port: int, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cymqtt", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"cymqtt did not start: {self.stderr}")
                time.sleep(0.05)
        self.port = port

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:   # pragma: no cover - reported by the assertion
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture
def cymqtt():
    started: list[Cymqtt] = []

    def start(port: int, *args: str) -> Cymqtt:
        b = Cymqtt(port, *args)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def warned(lines: list[str], key: str) -> list[str]:
    return [ln for ln in lines if f"'{key}'" in ln]


# -- the Debian default, started with cymqtt -c ----------------------------------------------------

@needs_mosquitto_clients
def test_debian_default_conf_round_trip(tmp_path, cymqtt):
    """The Debian default mosquitto.conf starts cymqtt (`-c`, with `-p` overriding the port as
    for mosquitto), listening on localhost only as mosquitto 2 does without a listener, and
    mosquitto_pub reaches mosquitto_sub through it. Its keys that cymqtt has no feature for get
    one warning line each, with the line number. Its paths are moved under tmp_path so that
    pid_file, persistence and log_dest work unprivileged once they land."""
    text = DEBIAN_DEFAULT
    for path in ("/run/mosquitto/", "/var/lib/mosquitto/", "/var/log/mosquitto/"):
        (tmp_path / path.strip("/").replace("/", "_")).mkdir()
        text = text.replace(path, str(tmp_path / path.strip("/").replace("/", "_")) + "/")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "README").write_text("Any files placed in this directory that have a .conf "
                                   "ending will be loaded as config files by the broker.\n")
    text = text.replace("/etc/mosquitto/conf.d", str(conf_d))
    conf = write(tmp_path, text)
    port = free_port()
    b = cymqtt(port, "-c", conf, "-p", str(port))
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "deb/#",
                            "-v", "-C", "1", "-W", "10", "-q", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:         # mosquitto_sub has subscribed once a retained-free publish lands
            pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t",
                                  "deb/t", "-m", "from debian conf", "-q", "1"],
                                 capture_output=True, text=True, timeout=10)
            assert pub.returncode == 0, pub.stderr
            try:
                out, err = sub.communicate(timeout=0.3)
                break
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, "mosquitto_sub got nothing"
        assert sub.returncode == 0, err
        assert out.strip() == "deb/t from debian conf"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    # Localhost only: the default listener is not on every interface.
    with socket.socket() as s:
        s.settimeout(0.5)
        other = socket.gethostbyname(socket.gethostname())
        if not other.startswith("127."):
            assert s.connect_ex((other, port)) != 0
    assert b.stop() == 0
    assert "Traceback" not in "\n".join(b.stderr)
    lines = [ln for ln in b.stderr if ln.startswith("cymqtt: warning: ")]
    expected = {"pid_file": 6, "persistence": 8, "persistence_location": 9, "log_dest": 11}
    for key, lineno in expected.items():
        target = {"persistence_location": "data_dir"}.get(key, key)
        if target in FIELDS:
            assert not warned(lines, key), lines
        else:
            (line,) = warned(lines, key)
            assert f"{conf}:{lineno}:" in line and "not supported" in line, line
    assert len(lines) == sum(1 for k in expected if k != "persistence_location"
                             and k not in FIELDS), lines


# -- a conf with a listener, started with cymqtt -c ------------------------------------------------

def test_listener_anonymous_inflight_and_warnings(tmp_path, cymqtt):
    """`listener PORT 127.0.0.1`, `allow_anonymous true` and `max_inflight_messages 3` apply:
    a QoS 1 subscriber that acknowledges nothing has exactly 3 messages in flight. An unknown
    key, a bridge and a key cymqtt has no feature for each get one warning with the line."""
    port = free_port()
    conf = write(tmp_path, f"""\
# a small broker
listener {port} 127.0.0.1
allow_anonymous true
max_inflight_messages 3
no_such_key 1
set_tcp_nodelay true

connection upstream
address upstream.example:1883
topic # both 0
""")
    b = cymqtt(port, "-c", conf)
    raw = RawClient(port, 4)
    pub = PahoClient(port, "conf-pub", V311)
    try:
        raw.send_packet(Connect("conf-raw", version=4, clean_start=True, keepalive=60))
        assert raw.recv_packet().name == "CONNACK"
        raw.send_packet(Subscribe(1, [("w/#", 1)]))
        assert raw.recv_packet().name == "SUBACK"
        for i in range(6):
            pub.publish("w/t", b"%d" % i, qos=1)
        got = [raw.recv_packet() for _ in range(3)]
        assert [p.payload for p in got] == [b"0", b"1", b"2"]
        with pytest.raises(TimeoutError):
            raw.recv_packet(timeout=0.5)          # the window (3) is full: no 4th
    finally:
        raw.close()
        pub.close()
    assert b.stop() == 0
    lines = [ln for ln in b.stderr if ln.startswith("cymqtt: warning: ")]
    assert len(warned(lines, "no_such_key")) == 1 and f"{conf}:5:" in warned(
        lines, "no_such_key")[0]
    assert f"{conf}:6:" in warned(lines, "set_tcp_nodelay")[0]
    (bridge,) = [ln for ln in lines if "connection upstream" in ln]
    assert f"{conf}:8:" in bridge and "bridge" in bridge
    assert not [ln for ln in lines if "'address'" in ln or "'topic'" in ln]   # the bridge's
    assert len(lines) == 3, lines


@pytest.mark.skipif(not {"listeners", "password_file", "acl_file"} <= FIELDS,
                    reason="cymqtt without listeners, password files or ACL files")
def test_listeners_passwords_acl_and_persistence(tmp_path, cymqtt):
    """A mosquitto.conf with two listeners, a password file, an ACL file and persistence:
    both listeners serve, anonymous clients are refused (mosquitto 2.0: allow_anonymous
    defaults to false with a listener), alice gets in with her password and only where her ACL
    lets her; persistence keeps its database in persistence_location."""
    from cymqtt.passwd import hash_password

    (tmp_path / "passwd").write_text(f"alice:{hash_password('wonderland')}\n")
    (tmp_path / "acl").write_text("user alice\ntopic readwrite a/#\ntopic read $SYS/#\n")
    p1, p2 = free_port(), free_port()
    conf = write(tmp_path, f"""\
per_listener_settings false
persistence true
persistence_location {tmp_path}/
password_file {tmp_path}/passwd
acl_file {tmp_path}/acl

listener {p1} 127.0.0.1
listener {p2} 127.0.0.1
protocol mqtt
""")
    b = cymqtt(p1, "-c", conf)
    try:
        PahoClient(p2, "anon", V311, expect_rc=0x87).close()     # not authorized
        sub = PahoClient(p2, "alice-sub", V311, username="alice", password="wonderland")
        pub = PahoClient(p1, "alice-pub", V311, username="alice", password="wonderland")
        try:
            sub.subscribe("#", 1)
            pub.publish("b/denied", b"not for alice", qos=1)
            pub.publish("a/ok", b"for alice", qos=1)
            got = sub.wait_messages(1)
            assert [(m.topic, m.payload) for m in got] == [("a/ok", b"for alice")]
        finally:
            sub.close()
            pub.close()
        PahoClient(p1, "alice-bad", V311, username="alice", password="nope",
                   expect_rc=0x87).close()   # CONNACK 5, not authorized, as mosquitto answers
    finally:
        assert b.stop() == 0
    lines = [ln for ln in b.stderr if ln.startswith("cymqtt: warning: ")]
    for key in ("persistence", "persistence_location"):
        assert not warned(lines, key), lines
    assert (tmp_path / "cymqtt.db").exists()       # persistence_location is the data_dir
    assert not warned(lines, "password_file") and not warned(lines, "acl_file"), lines


def test_not_toml_without_conf_suffix_is_read_as_mosquitto_conf(tmp_path, cymqtt):
    """A file whose name does not end in .conf, but which is not TOML and reads `key value`, is
    a mosquitto.conf too."""
    port = free_port()
    conf = write(tmp_path, f"listener {port} 127.0.0.1\nallow_anonymous true\n", "broker.cfg")
    b = cymqtt(port, "-c", conf)
    c = PahoClient(port, "cfg-client", V311)
    c.close()
    assert b.stop() == 0
    assert not [ln for ln in b.stderr if "warning" in ln]


# -- the translation itself --------------------------------------------------------------------

def test_translation_of_global_keys(tmp_path):
    """Each mosquitto key maps to its cymqtt key with mosquitto's units and "0 = no limit";
    repeated keys keep the last value, log_type adds up (the most verbose level wins)."""
    conf = write(tmp_path, """\
max_inflight_messages 0
max_queued_messages 250
max_queued_messages 500
queue_qos0_messages true
retain_available false
sys_interval 0
max_packet_size 2048
max_qos 1
max_topic_alias 5
allow_zero_length_clientid false
persistent_client_expiration 2d
log_type error
log_type warning
""")
    data, warnings = translate(conf)
    assert data == {"max_inflight": 65535, "max_queued": 500, "queue_qos0": True,
                    "retain_available": False, "sys_interval": 0.0, "max_packet_size": 2048,
                    "maximum_qos": 1, "topic_alias_maximum": 5,
                    "allow_zero_length_client_id": False, "session_expiry_default": 172800,
                    "log_level": "warning"}
    assert warnings == []
    config, _ = load(conf)
    assert config.max_queued == 500 and config.log_level == "warning"


def test_mosquitto_2_defaults(tmp_path):
    """No listener: cymqtt's defaults (127.0.0.1:1883, anonymous allowed), mosquitto 2's local
    only mode. A listener without a host: every interface, and anonymous clients refused unless
    allow_anonymous says otherwise."""
    config, _ = load(write(tmp_path, "sys_interval 5\n"))
    assert (config.host, config.port, config.allow_anonymous) == ("127.0.0.1", 1883, True)
    data, _ = translate(write(tmp_path, "listener 1884\n", "a.conf"))
    if "listeners" in FIELDS:
        assert data["listeners"] == [{"port": 1884, "host": "0.0.0.0"}]
    else:
        assert (data["host"], data["port"]) == ("0.0.0.0", 1884)
    assert data["allow_anonymous"] is False
    data, _ = translate(write(tmp_path, "port 1885\nallow_anonymous true\n", "b.conf"))
    assert data["allow_anonymous"] is True
    if "listeners" not in FIELDS:
        assert (data["host"], data["port"]) == ("0.0.0.0", 1885)


def test_listener_sections(tmp_path):
    """Listener keys apply to the listener section they are in, global keys wherever they
    are; until Config has `listeners`, the first listener is host and port and the others are
    warned about, as are its TLS keys."""
    conf = write(tmp_path, """\
per_listener_settings false
listener 8883 127.0.0.1
certfile /etc/ssl/server.pem
keyfile /etc/ssl/server.key
require_certificate true
max_connections 100
max_queued_messages 7
listener 1883
protocol mqtt
crlfile /etc/ssl/crl.pem
""")
    data, warnings = translate(conf)
    assert data["max_queued"] == 7
    first = {"port": 8883, "host": "127.0.0.1", "certfile": "/etc/ssl/server.pem",
             "keyfile": "/etc/ssl/server.key", "require_certificate": True,
             "max_connections": 100}
    assert len(warned(warnings, "crlfile")) == 1 and f"{conf}:10:" in warned(
        warnings, "crlfile")[0]
    if "listeners" in FIELDS:
        assert data["listeners"] == [first, {"port": 1883, "host": "0.0.0.0",
                                             "protocol": "mqtt"}]
    else:
        assert (data["host"], data["port"]) == ("127.0.0.1", 8883)
        for key in ("certfile", "keyfile", "require_certificate", "max_connections"):
            assert (key in FIELDS) == (key in data) and (key in FIELDS) != bool(
                warned(warnings, key)), (key, warnings)
        (second,) = [w for w in warnings if "'listener 1883'" in w]
        assert f"{conf}:8:" in second


def test_include_dir_is_read_in_alphabetical_order(tmp_path):
    """include_dir reads DIR/*.conf in alphabetical order, other files not; warnings name the
    included file and its line."""
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "b.conf").write_text("max_queued_messages 20\nbogus_key 1\n")
    (d / "a.conf").write_text("max_queued_messages 10\nmax_inflight_messages 4\n")
    (d / "README").write_text("max_queued_messages 99\n")
    data, warnings = translate(write(tmp_path, f"include_dir {d}\n"))
    assert (data["max_queued"], data["max_inflight"]) == (20, 4)
    assert warnings == [f"{d / 'b.conf'}:2: 'bogus_key' is not a mosquitto.conf key cymqtt "
                        f"knows; ignored"]


def test_supported_is_decided_by_config_fields(tmp_path):
    """Keys whose cymqtt feature is not there yet (today: password files, ACL files,
    persistence, ...) warn; those whose Config field exists translate."""
    keys = {"password_file": "/etc/mosquitto/passwd", "acl_file": "/etc/mosquitto/acl",
            "persistence": "true", "max_keepalive": "60", "connection_messages": "true",
            "pid_file": "/tmp/x.pid", "autosave_interval": "1800"}
    conf = write(tmp_path, "".join(f"{k} {v}\n" for k, v in keys.items()))
    try:
        data, warnings = translate(conf)
    except ConfigError as exc:       # pragma: no cover - a landed feature refusing a value
        pytest.fail(str(exc))
    for n, key in enumerate(keys, 1):
        if key == "autosave_interval":      # accepted: cymqtt commits every message
            assert key not in data and not warned(warnings, key)
        elif key in FIELDS:
            assert key in data and not warned(warnings, key)
        else:
            assert warned(warnings, key) == [f"{conf}:{n}: '{key}' is not supported by "
                                             f"cymqtt yet; ignored"]


def test_bad_values_are_all_reported_with_their_lines(tmp_path):
    """Values mosquitto would refuse are errors, all of them at once, each naming file:line."""
    conf = write(tmp_path, "max_inflight_messages lots\nallow_anonymous yes\n"
                           "persistent_client_expiration 3 days\nlistener x\n")
    with pytest.raises(ConfigError) as info:
        load(conf)
    errors = info.value.errors
    assert len(errors) == 4, errors
    assert errors[0].startswith(f"{conf}:1: 'max_inflight_messages' must be a whole number")
    assert f"{conf}:2: 'allow_anonymous' must be true or false" in errors
    assert any(e.startswith(f"{conf}:3: 'persistent_client_expiration'") for e in errors)
    assert any(e.startswith(f"{conf}:4: listener port") for e in errors)


def test_which_files_are_mosquitto_conf():
    """.conf names unless the file is TOML with keys (a cymqtt.conf in TOML stays TOML); other
    names only when not TOML and shaped `key value`, so a broken TOML file still gets its TOML
    error."""
    assert is_mosquitto_conf("x.conf", "listener 1883\n")
    assert is_mosquitto_conf("x.conf", "# only comments\n")
    assert not is_mosquitto_conf("cymqtt.conf", "port = 1883\n")
    assert is_mosquitto_conf("x.cfg", "# c\nlistener 1883\n")
    assert not is_mosquitto_conf("x.toml", "port = 1883\n")
    assert not is_mosquitto_conf("x.toml", "port = = 1883\n")
    assert not is_mosquitto_conf("x.toml", "[users\n")
