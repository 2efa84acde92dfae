"""`cymqtt --workers N` (issue 13): a supervisor, N worker processes sharing one port with
SO_REUSEPORT, and the nats-server they meet on.

Every test starts the real command (`python -m cymqtt --workers 2`) in a subprocess, reads its
log (worker lines say "worker-I") from stderr, talks to it with paho and raw sockets, and
checks by pid that nothing it started outlives it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from cymqtt.cluster.workers import find_nats_server, worker_config
from cymqtt.config import ClusterConfig, Config, ConfigError, HttpConfig, config_from_dict
from helpers_paho import V311, PahoClient, wait_until
from helpers_workers import (
    CONNACK_OK, Workers, alive, children, connect_frame, connect_many, free_port, landed_on,
    mqtt_connect, paho_on, processes_with,
)

# Not run again on uvloop by make test: each worker is `python -m cymqtt`, a process of its own.
pytestmark = pytest.mark.loop_independent

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


# -- start, share, restart, stop -------------------------------------------------------------

def test_two_workers_share_one_port(workers):
    """Both workers accept on the one port: 24 connections land on both (the kernel hashes
    each connection to one listener of the SO_REUSEPORT group; all 24 on one worker would
    happen 2 times in 2^24), and each worker's log names the clients it got. The supervisor,
    the workers and nats-server are one family; [http] is served by both, and each answers
    for the whole broker."""
    port, http = free_port(), free_port()
    w = workers("--workers", "2", "-p", str(port), "--http", str(http), "--no-persistence")
    assert len(set(w.pids)) == 2 and w.nats_pid is not None
    assert w.nats_url.startswith("nats://127.0.0.1:")
    assert sorted(children(w.proc.pid)) == sorted([*w.pids, w.nats_pid])
    ids, socks = connect_many(port, "share")
    where = landed_on(w, ids)
    assert set(where.values()) == {"worker-1", "worker-2"}, where
    for _ in range(8):       # (new connections each: the kernel spreads them too)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/clients?limit=100",
                                    timeout=5) as r:
            assert r.status == 200
            listed = {c["client_id"] for c in json.loads(r.read())["items"]}
        assert set(ids) <= listed
    for s in socks:
        s.close()
    assert w.stop() == 0


def test_a_killed_worker_is_restarted(workers):
    """kill -9 one worker: the supervisor logs how it died and starts another, the port
    stays served all along (the survivor takes every connection meanwhile), and the new
    worker gets connections again."""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    victim = w.pids[1]
    os.kill(victim, signal.SIGKILL)
    w.wait_for(re.compile(rf"worker 2 \(pid {victim}\) killed by SIGKILL after [\d.]+ s; "
                          r"restarting it in 0.5 s"))
    # Gone (reaped) now: a connection goes to the survivor until worker 2 is back. (One the
    # kernel gave the victim's socket in its last instant is reset, as with any server dying.)
    c = PahoClient(port, "during", protocol=V311)
    c.disconnect()
    assert landed_on(w, ["during"]) == {"during": "worker-1"}
    new_pid = int(w.wait_for(re.compile(r"worker 2 restarted: pid (\d+)")).group(1))
    assert new_pid != victim and alive(new_pid) and not alive(victim)
    assert sorted(children(w.proc.pid)) == sorted([w.pids[0], new_pid, w.nats_pid])
    ids, socks = connect_many(port, "after")
    assert set(landed_on(w, ids).values()) == {"worker-1", "worker-2"}
    for s in socks:
        s.close()
    assert w.stop() == 0
    assert not alive(new_pid)


def test_a_killed_nats_server_is_restarted(workers):
    """kill -9 the NATS server: the supervisor starts another on the same port, with the same
    store, and the workers keep serving."""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port))
    os.kill(w.nats_pid, signal.SIGKILL)
    w.wait_for(re.compile(rf"nats-server \(pid {w.nats_pid}\) killed by SIGKILL; restarting "
                          rf"it on {re.escape(w.nats_url)}"))
    new_pid = int(w.wait_for(re.compile(r"nats-server restarted: pid (\d+)")).group(1))
    assert new_pid in children(w.proc.pid) and not alive(w.nats_pid)
    nats_port = int(w.nats_url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", nats_port), timeout=5) as s:
        assert s.recv(5) == b"INFO "
    mqtt_connect(port, "still-served").close()
    w.nats_pid = new_pid
    assert w.stop() == 0
    assert not alive(new_pid)


def test_every_listener_is_shared_and_failed_restarts_back_off(workers, tmp_path):
    """TCP, TLS and WebSocket listeners all bind with SO_REUSEPORT (else the second worker
    could not start) and serve. A worker that cannot start again (its key file gone) is
    retried after 0.5 s, 1 s, 2 s ...; once the file is back it starts."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port, tls, ws = free_port(), free_port(), free_port()
    conf = tmp_path / "cymqtt.toml"
    conf.write_text(f'port = {port}\nworkers = 2\n'
                    f'[[listeners]]\nport = {tls}\ncertfile = "{certfile}"\n'
                    f'keyfile = "{keyfile}"\n'
                    f'[[listeners]]\nport = {ws}\nprotocol = "websockets"\n')
    w = workers("-c", str(conf), "--no-persistence")
    ctx = ssl.create_default_context(cafile=None)
    ca.configure_trust(ctx)
    with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(connect_frame("over-tls"))
        assert s.recv(4) == CONNACK_OK
    with socket.create_connection(("127.0.0.1", ws), timeout=5) as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 101 ")
    keyfile.rename(tmp_path / "elsewhere.key")
    os.kill(w.pids[1], signal.SIGKILL)
    w.wait_for(re.compile(r"worker 2 \(pid \d+\) killed by SIGKILL .*restarting it in 0.5 s"))
    w.wait_for(re.compile(r"worker 2 \(pid \d+\) exited with code 2 .*restarting it in 1 s"))
    w.wait_for(re.compile(r"worker 2 \(pid \d+\) exited with code 2 .*restarting it in 2 s"))
    assert any("cannot read keyfile" in ln for ln in w.seen), w.seen
    (tmp_path / "elsewhere.key").rename(keyfile)
    w.wait_for(re.compile(r"worker 2 restarted: pid \d+"))
    assert w.stop() == 0


def test_sigterm_stops_everything(workers):
    """SIGTERM: the workers stop (their clients are disconnected), then nats-server, then the
    supervisor, exit code 0, and none of them is left running. (With persistence, as here,
    each worker had its store and NATS its JetStream directory in the data directory.)"""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port))
    assert sorted(os.listdir("cymqtt-data")) == ["nats", "worker-1", "worker-2"]
    assert os.path.exists(os.path.join("cymqtt-data", "worker-2", "cymqtt.db"))
    sock = mqtt_connect(port, "held")
    assert w.stop() == 0
    sock.settimeout(5)
    assert sock.recv(1) == b""           # closed by its worker on the way out
    for pid in w.everything:
        assert not alive(pid), pid
    assert "Traceback" not in "\n".join(w.seen)
    assert sum("cymqtt stopped" in ln and " worker-" in ln for ln in w.seen) == 2


def test_workers_die_with_the_supervisor(workers):
    """kill -9 the supervisor: its workers see the lifeline close and stop, and nats-server
    gets SIGTERM from the kernel (PR_SET_PDEATHSIG); nothing stays."""
    w = workers("--workers", "2", "-p", str(free_port()), "--no-persistence")
    w.proc.kill()
    w.proc.wait(5)
    wait_until(lambda: not any(alive(pid) for pid in w.everything), timeout=10,
               what="workers and nats-server gone")
    # (the one thing left: the temporary NATS store of --no-persistence, README says so)
    assert w.nats_store.startswith(tempfile.gettempdir()) and os.path.isdir(w.nats_store)
    shutil.rmtree(w.nats_store)


def test_a_worker_that_will_not_stop_ends_when_its_supervisor_is_gone():
    """The lifeline's guard: a worker whose stop never finishes (a task that ignores its
    cancellation) still ends ORPHAN_GRACE seconds after its supervisor is gone, exit code 1,
    saying why. (Here the "worker" is a loop whose stop does nothing.)"""
    code = ("import asyncio, logging, os, sys\n"
            "from cymqtt.cluster import workers\n"
            "logging.basicConfig(stream=sys.stderr)\n"
            "workers.ORPHAN_GRACE = 0.5\n"
            "r, w = os.pipe()\n"
            "loop = asyncio.new_event_loop()\n"
            "workers.watch_lifeline(loop, r, lambda: None)\n"
            "loop.call_soon(os.close, w)\n"
            "loop.run_forever()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 1, done.stderr
    assert "the supervisor is gone; stopping" in done.stderr
    assert "did not stop in 0.5 s; exiting" in done.stderr


def test_sighup_reaches_every_worker(workers, tmp_path):
    """SIGHUP to the supervisor: each worker reads the config file again."""
    conf = tmp_path / "cymqtt.toml"
    port = free_port()
    conf.write_text(f"port = {port}\nconnect_timeout = 10.0\nworkers = 2\n")
    w = workers("-c", str(conf), "--no-persistence")
    conf.write_text(f"port = {port}\nconnect_timeout = 5.0\nworkers = 2\n")
    w.proc.send_signal(signal.SIGHUP)
    reloaded = set()
    while reloaded != {"worker-1", "worker-2"}:
        m = w.wait_for(re.compile(r"(worker-\d) cymqtt\.broker: reload: connect_timeout = 5\.0"))
        reloaded.add(m.group(1))
    assert w.stop() == 0


def test_pid_file_names_the_supervisor(workers, tmp_path):
    """pid_file holds the supervisor's pid while it runs and is removed when it stops."""
    pid_file = tmp_path / "cymqtt.pid"
    conf = tmp_path / "cymqtt.toml"
    conf.write_text(f'pid_file = "{pid_file}"\n')
    w = workers("-c", str(conf), "--workers", "2", "-p", str(free_port()))
    assert pid_file.read_text() == f"{w.proc.pid}\n"
    assert w.stop() == 0
    assert not pid_file.exists()


# -- across workers: the cluster bus on the supervisor's NATS ----------------------------------

def test_qos1_between_workers_none_lost(workers):
    """20 subscriber/publisher pairs on the one port, each pair on a topic of its own; the
    kernel spreads them, so some pairs are split across the workers (asserted: all 20 on one
    side would happen 2 times in 2^20). Every pair's 50 QoS 1 messages arrive, in order,
    once, whichever workers the two landed on."""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    pairs, n = 20, 50
    subs = [PahoClient(port, f"sub-{i}", protocol=V311) for i in range(pairs)]
    for i, sub in enumerate(subs):
        sub.subscribe(f"p2p/{i}", qos=1)        # SUBACK: every worker has the route
    pubs = [PahoClient(port, f"pub-{i}", protocol=V311) for i in range(pairs)]
    where = landed_on(w, [c.client_id for c in subs + pubs])
    split = [i for i in range(pairs) if where[f"sub-{i}"] != where[f"pub-{i}"]]
    assert split, where
    for i, pub in enumerate(pubs):
        for k in range(n):
            pub.publish(f"p2p/{i}", f"{i}:{k}".encode(), qos=1)    # waits for PUBACK
    for i, sub in enumerate(subs):
        sub.wait_messages(n, timeout=10)
        assert sub.payloads(f"p2p/{i}") == [f"{i}:{k}".encode() for k in range(n)], i
        assert all(m.qos == 1 for m in sub.messages)
    for c in subs + pubs:
        c.close()
    assert w.stop() == 0


def retained_seen(w: Workers, port: int, worker: str, topic: str) -> bytes:
    """The retained payload a new subscriber on `worker` gets for `topic`, once it gets one
    (the other worker's change reaches this one through the NATS bucket shortly after its
    PUBACK; a subscriber gets what is retained when it subscribes)."""
    tries = iter(range(1000))

    def attempt() -> bytes | None:
        c = paho_on(w, port, worker, f"look-{next(tries)}")
        try:
            c.subscribe(topic, qos=1)
            got = c.wait_messages(1, timeout=0.5)
            assert got[0].retain
            return got[0].payload
        except AssertionError:
            return None
        finally:
            c.close()
    return wait_until(attempt, timeout=10, what=f"a retained {topic} on {worker}")


def test_retained_reaches_a_subscriber_on_the_other_worker(workers):
    """A retained message published on worker 1 reaches a new subscriber on worker 2, and one
    that replaces it, published on worker 2, a new subscriber on worker 1."""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    pub = paho_on(w, port, "worker-1", "pub")
    pub.publish("config/led", b"on", qos=1, retain=True)
    assert retained_seen(w, port, "worker-2", "config/led") == b"on"
    pub2 = paho_on(w, port, "worker-2", "pub2")
    pub2.publish("config/led", b"off", qos=1, retain=True)
    wait_until(lambda: retained_seen(w, port, "worker-1", "config/led") == b"off",
               timeout=10)
    pub.close()
    pub2.close()
    assert w.stop() == 0


def test_workers_join_the_configured_cluster(workers, tmp_path):
    """With a [cluster] table the workers use its NATS, as nodes "<node>-worker-I", and the
    supervisor starts no NATS server of its own."""
    nats_port = free_port()
    nats_dir = tmp_path / "nats"
    nats = subprocess.Popen([find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", str(nats_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            assert nats.poll() is None, "nats-server exited"
            try:
                socket.create_connection(("127.0.0.1", nats_port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(up, timeout=10, what="nats-server up")
        conf = tmp_path / "cymqtt.toml"
        port = free_port()
        conf.write_text(f'port = {port}\nworkers = 2\n[cluster]\n'
                        f'nats = "nats://127.0.0.1:{nats_port}"\nnode = "edge"\n')
        w = workers("-c", str(conf), "--no-persistence")
        assert w.nats_pid is None and w.nats_url == f"nats://127.0.0.1:{nats_port}"
        assert sorted(children(w.proc.pid)) == sorted(w.pids)
        w.wait_for(re.compile(r"node edge-worker-1 joined"))
        w.wait_for(re.compile(r"node edge-worker-2 joined"))
        assert w.stop() == 0
        assert nats.poll() is None           # not the supervisor's to stop
    finally:
        nats.terminate()
        nats.wait(10)


def test_worker_config():
    """What each worker runs with: the user's config, its own node name and store; no pid
    file."""
    user = Config(port=1883, workers=3, data_dir="state", pid_file="/run/x.pid",
                  http=HttpConfig(8080), persistence=True)
    one, two = (worker_config(user, i, "nats://127.0.0.1:4222") for i in (1, 2))
    assert one.cluster == ClusterConfig(nats=("nats://127.0.0.1:4222",), node="worker-1")
    assert two.cluster.node == "worker-2"
    assert (one.data_dir, two.data_dir) == (os.path.join("state", "worker-1"),
                                            os.path.join("state", "worker-2"))
    assert two.store_path() == os.path.join("state", "worker-2", "cymqtt.db")
    assert one.http == two.http == HttpConfig(8080)
    assert one.pid_file is None and one.workers == 3 and one.port == 1883
    theirs = user.replace(cluster=ClusterConfig(nats=("tls://nats:4222",), node="edge",
                                                user="u", password="p"))
    mine = worker_config(theirs, 2, None).cluster
    assert (mine.nats, mine.node, mine.user, mine.password) == (("tls://nats:4222",),
                                                                "edge-worker-2", "u", "p")


# -- user errors: one line, exit code 2 -------------------------------------------------------

def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cymqtt: "), lines
    return lines[0]


def test_missing_nats_server_is_one_line(tmp_path):
    """No nats-server on PATH nor next to the interpreter: one line saying how to install it,
    exit code 2, nothing started."""
    code = ("import sys; sys.executable = sys.argv[1]; from cymqtt.cli import main; "
            "raise SystemExit(main(sys.argv[2:]))")
    env = dict(os.environ, PATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "python"), "--workers", "2",
                        "-p", str(free_port())], capture_output=True, text=True, timeout=20,
                       env=env)
    line = one_line_error(r)
    assert "nats-server not found" in line and "pip install 'cymqtt[cluster]'" in line, line


@pytest.mark.parametrize("args, needle", [
    (["--workers", "0"], "config key 'workers' must be an integer >= 1 or \"auto\", not 0"),
    (["--workers", "many"], "config key 'workers' must be an integer >= 1 or \"auto\", "
                            "not 'many'"),
    (["--workers", "-2"], "config key 'workers' must be an integer >= 1"),
    (["--workers", "2", "-p", "0"], "config key 'port' must not be 0 with workers > 1"),
])
def test_bad_workers_values(args, needle):
    r = subprocess.run([sys.executable, "-m", "cymqtt", *args], capture_output=True, text=True,
                       timeout=20)
    assert needle in one_line_error(r)


def test_workers_key_in_the_config_file(tmp_path):
    """`workers` in TOML: a count or "auto" (the number of cores); other values are named."""
    assert config_from_dict({"workers": 3}).workers == 3
    assert config_from_dict({"workers": "auto"}).workers == (os.cpu_count() or 1)
    for bad in (0, -1, "lots", 2.5, True):
        with pytest.raises(ConfigError, match="config key 'workers' must be"):
            config_from_dict({"workers": bad})
    with pytest.raises(ConfigError, match=r"\[\[listeners\]\] #1: 'port' must not be 0"):
        config_from_dict({"workers": 2, "listeners": [{"port": 0}]})
    conf = tmp_path / "c.toml"
    conf.write_text('workers = "lots"\n')
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert "workers' must be an integer >= 1" in one_line_error(r)


def test_a_worker_that_cannot_start_stops_everything(workers):
    """The port is taken by a socket without SO_REUSEPORT: each worker says so in the one
    line the single process would print, and the supervisor stops the rest and exits 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        w = workers("--workers", "2", "-p", str(port), "--no-persistence", wait=False)
        assert w.proc.wait(20) == 2
        seen = w.finish()
    text = "\n".join(seen)
    assert f"cymqtt: port {port} on 127.0.0.1 is already in use" in text, text
    assert "Traceback" not in text
    assert not processes_with("cymqtt", "--worker", str(port))
