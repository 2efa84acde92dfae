"""Operating the `cymqtt` command (GitHub issue 15): the open-file limit (raised at start;
at the hard limit clients are refused, counted and logged, and the broker keeps serving),
SIGHUP reload, SIGUSR1 state dump, pid_file and log_dest.

Each broker is `python -m cymqtt` in a subprocess, on the loop of the run (`--loop`, passed as
CYMQTT_LOOP), with its open-file limit set by `preexec_fn`; signals are real signals.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from _testbase import LISTENING, Cli, RawClient
from cymqtt._fast.codec import Connect
from helpers_paho import V5, PahoClient, wait_until


@pytest.fixture
def cli(request):
    loop = request.config.getoption("--loop")
    started: list[Cli] = []

    def start(*args: str, nofile: tuple[int, int] | None = None, **kw) -> Cli:
        c = Cli(loop, *args, nofile=nofile, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def connect(port: int, client_id: str, timeout: float = 3.0) -> RawClient | None:
    """A MQTT 3.1.1 client past CONNACK 0, or None when the broker would not have it."""
    try:
        c = RawClient(port, 4, timeout=timeout)
    except OSError:
        return None
    try:
        c.send_packet(Connect(client_id, version=4, keepalive=60))
        ack = c.recv_packet(timeout)
    except (OSError, TimeoutError):
        ack = None
    if ack is None or ack.reason_code != 0:
        c.close()
        return None
    return c


def ping(c: RawClient) -> bool:
    c.send(b"\xc0\x00")
    p = c.recv_packet()
    return p is not None and p.name == "PINGRESP"


# -- the open-file limit -------------------------------------------------------------------------

def test_soft_open_file_limit_is_raised_to_the_hard_limit_at_start(cli):
    """Started with soft 256 / hard 4096, the broker raises its soft limit to 4096 and logs
    both; SIGUSR1's state dump shows the new limit."""
    b = cli("--port", "0", nofile=(256, 4096))
    b.wait_for(r"open-file limit: soft 256 raised to 4096 \(hard limit 4096\)")
    n = b.signal(signal.SIGUSR1)
    b.wait_for(r"open files \d+ of 4096 \(hard 4096\)", start=n)
    assert b.stop() == 0


def test_at_the_hard_open_file_limit_clients_are_refused_logged_counted_and_served_again(cli):
    """Hard limit 256: clients connect until no descriptor is left; the next one is refused
    at once (its socket closed, no hang), with a log line giving the count; the broker keeps
    serving those connected, and accepts again once some have gone. Refusals are counted in
    the state dump and in $SYS."""
    b = cli("--port", "0", nofile=(256, 256))
    b.wait_for(r"open-file limit: soft 256, hard 256")
    clients: list[RawClient] = []
    try:
        while len(clients) < 300:
            c = connect(b.port, f"fd-{len(clients)}")
            if c is None:
                break
            clients.append(c)
        assert 200 < len(clients) < 256, len(clients)
        b.wait_for(r"WARNING cymqtt.net: cannot accept connections: Too many open files "
                   r"\(EMFILE\), open-file limit 256: refused 1 connection; raise the limit")
        # More within the second: one line a second at most, with the count.
        t0 = time.monotonic()
        assert [connect(b.port, f"late-{i}", timeout=1.0) for i in range(3)] == [None] * 3
        assert time.monotonic() - t0 < 2.5        # refused at once, not left to time out
        b.wait_for(r"refused 3 connections in the last 1 s", timeout=3)
        assert sum("cannot accept connections" in ln for ln in b.lines) == 2
        # Those connected are still served.
        assert ping(clients[0]) and ping(clients[-1])
        # Free some descriptors: new clients are accepted again.
        for c in clients[:5]:
            c.close()
        del clients[:5]
        again = wait_until(lambda: connect(b.port, "again"), 5, what="a client accepted")
        clients.append(again)
        assert ping(again)
        n = b.signal(signal.SIGUSR1)
        refused = int(b.wait_for(r"(\d+) refused at the open-file limit", start=n).group(1))
        assert refused >= 4, refused
    finally:
        for c in clients:
            c.close()
    assert b.stop() == 0
    assert not any("Traceback" in ln for ln in b.lines), b.lines


def test_refusals_at_the_open_file_limit_are_published_in_sys(cli, tmp_path):
    """$SYS/broker/connections/refused/fd limit counts the refused connections."""
    path = tmp_path / "c.toml"
    path.write_text("port = 0\nsys_interval = 1\nconnection_messages = false\n")
    b = cli("-c", str(path), nofile=(64, 64))
    watcher = PahoClient(b.port, "sys-watch", V5)
    clients = []
    try:
        watcher.subscribe("$SYS/broker/connections/refused/#", 0)
        while len(clients) < 100 and (c := connect(b.port, f"s-{len(clients)}")) is not None:
            clients.append(c)
        assert len(clients) < 64
        wait_until(lambda: any(m.payload == b"1" for m in watcher.messages), 5,
                   what="$SYS refused count 1")
        assert watcher.messages[-1].topic == "$SYS/broker/connections/refused/fd limit"
    finally:
        for c in clients:
            c.close()
        watcher.close()
    assert b.stop() == 0


# -- signals, pid_file, log_dest ---------------------------------------------------------------

def test_sighup_reloads_what_it_can_without_dropping_clients(cli, tmp_path):
    """SIGHUP reads the config file again: each key applied gets a line and takes effect
    (max_keepalive for the next client, connection_messages off), keys that need a restart
    are named in one line and keep their value, a connected client stays connected; a bad
    file on reload keeps the running configuration, in one line. pid_file is written at
    start and removed at stop; SIGUSR1 logs the state."""
    conf = tmp_path / "cymqtt.toml"
    pid_file = tmp_path / "cymqtt.pid"
    conf.write_text(f'port = 0\nsys_interval = 0\npid_file = "{pid_file}"\n')
    b = cli("-c", str(conf))
    b.wait_for("event loop: ")        # (the pid file is written before that line, after
                                      # the listeners are bound and say so)
    assert pid_file.read_text().strip() == str(b.proc.pid)
    first = PahoClient(b.port, "before-reload", V5)
    try:
        first.subscribe("t/#", 1)
        b.wait_for(r"New client connected from 127\.0\.0\.1:\d+ as before-reload \(p5, c1, k60\)")
        conf.write_text(f'port = 1\nsys_interval = 0\npid_file = "{pid_file}"\n'
                        'max_keepalive = 30\nconnection_messages = false\nmax_inflight = 5\n')
        n = b.signal(signal.SIGHUP)
        b.wait_for(r"INFO cymqtt.broker: reload: max_keepalive = 30 \(was 65535; applies to "
                   r"new connections\)", start=n)
        b.wait_for(r"reload: connection_messages = False \(was True; applies to now\)", start=n)
        b.wait_for(r"reload: max_inflight = 5 \(was 32; applies to new sessions\)", start=n)
        b.wait_for(r"WARNING cymqtt.broker: reload: changed but only applied on restart: port$",
                   start=n)
        second = PahoClient(b.port, "after-reload", V5, keepalive=120)
        try:
            assert second.connack_properties.get("ServerKeepAlive") == 30
            second.publish("t/x", b"still here", qos=1)
            assert first.wait_messages(1)[0].payload == b"still here"
        finally:
            second.close()
        assert not any("after-reload" in ln for ln in b.lines)     # connection_messages off
        # A file that does not load: one line, nothing changes.
        conf.write_text("max_inflight = = 3\n")
        n = b.signal(signal.SIGHUP)
        b.wait_for(r"ERROR cymqtt: reload failed, keeping the current configuration: config "
                   r"file .* is not valid TOML", start=n)
        n = b.signal(signal.SIGUSR1)
        b.wait_for(r"connections: 1 open \(1 clients connected\)", start=n)
        b.wait_for(r"sessions: 1 \(0 offline\)", start=n)
        b.wait_for(r"subscriptions: 1, retained messages: 0", start=n)
        b.wait_for(r"messages: in flight 0, queued 0, received 1, sent 1", start=n)
        assert first.client.is_connected()
    finally:
        first.close()
    assert b.stop() == 0
    assert not pid_file.exists()
    assert not any("Traceback" in ln for ln in b.lines), b.lines


def test_sighup_without_a_config_file_says_so_and_keeps_serving(cli):
    b = cli("--port", "0")
    n = b.signal(signal.SIGHUP)
    b.wait_for(r"reload: no config file given", start=n)
    c = connect(b.port, "after-hup")
    assert c is not None and ping(c)
    c.close()
    assert b.stop() == 0


def test_log_dest_file(cli, tmp_path):
    """log_dest = "file:PATH": the log goes to the file, not to stderr."""
    log_file = tmp_path / "broker.log"
    conf = tmp_path / "c.toml"
    conf.write_text(f'port = 0\nsys_interval = 0\nlog_dest = "file:{log_file}"\n')
    b = cli("-c", str(conf), logs_to_stderr=False)
    port = int(wait_until(lambda: log_file.exists() and LISTENING.search(log_file.read_text()),
                          10, what="the listening line in the log file").group(2))
    c = connect(port, "to-file")
    assert c is not None
    c.close()
    wait_until(lambda: "Client to-file closed its connection" in log_file.read_text(), 5,
               what="the disconnect line in the log file")
    assert b.stop() == 0
    assert "cymqtt stopped" in log_file.read_text()
    assert b.lines == [], b.lines


def test_pid_file_that_cannot_be_written_is_a_one_line_error(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'port = 0\npid_file = "{tmp_path}/no/such/dir/x.pid"\n')
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf), "--log-level",
                        "warning"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"cymqtt: cannot write pid_file {tmp_path}/no/such/dir/x.pid: No such file or directory"]


def test_syslog_log_dest_uses_the_local_syslog_socket():
    """log_dest = "syslog" is a SysLogHandler on /dev/log when there is one."""
    import logging.handlers

    from cymqtt import logs

    h = logs.make_handler("syslog")
    try:
        assert isinstance(h, logging.handlers.SysLogHandler)
        if os.path.exists("/dev/log"):
            assert h.address == "/dev/log"
        assert h.socket.type in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
    finally:
        h.close()


def test_broker_reload_for_embedders(make_broker):
    """Broker.reload(config) returns what it applied and what needs a restart; an applied key
    takes effect (sys_interval 0 -> 1 starts $SYS), a restart key keeps its running value, and
    reloading the same config changes nothing."""
    bt = make_broker()
    watcher = PahoClient(bt.port, "reload-watch", V5)
    try:
        watcher.subscribe("$SYS/broker/uptime", 0)
        new = bt.broker.config.replace(max_inflight=4, sys_interval=1, port=1,
                                       users={"u": "p"})
        result = bt.call(lambda: bt.broker.reload(new))
        assert result == {"changed": {"max_inflight": (32, 4), "sys_interval": (0, 1)},
                          "restart": ["port", "users"]}
        assert bt.broker.config.port == 0 and bt.broker.config.users == {}
        assert bt.broker.config.max_inflight == 4
        wait_until(lambda: watcher.messages, 5, what="$SYS after sys_interval was reloaded")
        same = bt.broker.config
        assert bt.call(lambda: bt.broker.reload(same)) == {"changed": {}, "restart": []}
    finally:
        watcher.close()
