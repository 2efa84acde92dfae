"""password_file through the broker: files written by Debian's mosquitto_passwd and by
`cymqtt passwd` ($6$, $7$, $argon2id$), real clients (mosquitto_pub -u/-P, paho), the refusal
codes, and slow hashes checked off the event loop so a connect storm does not stall traffic."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from _testbase import Cli, RawClient
from cymqtt._fast.codec import Connect
from helpers_paho import V5, V311, PahoClient, wait_until

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_passwd") and shutil.which("mosquitto_pub")),
    reason="mosquitto (mosquitto_passwd) and mosquitto-clients are not installed")


def cymqtt_passwd(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "cymqtt", "passwd", *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def pub(port: int, *args: str) -> subprocess.CompletedProcess:
    """mosquitto_pub with `args` (topic pw/t, message x unless they say -t/-m)."""
    defaults = [] if "-t" in args else ["-t", "pw/t", "-m", "x"]
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *defaults,
                           *args], capture_output=True, text=True, timeout=10)


def error_lines(stderr: str) -> list[str]:
    """What the command printed as errors (not its log lines)."""
    return [line for line in stderr.splitlines() if line.startswith("cymqtt:")]


@pytest.fixture
def password_file(tmp_path):
    """alice ($7$, by mosquitto_passwd), bob ($argon2id$) and carol ($6$), by cymqtt passwd."""
    path = tmp_path / "passwords"
    r = subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "wonderland"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    cymqtt_passwd("-H", "argon2id", "-b", str(path), "bob", "builder")
    cymqtt_passwd("-H", "sha512", "-b", str(path), "carol", "singer")
    lines = path.read_text().splitlines()
    assert [line.split(":")[1].split("$")[1] for line in lines] == ["7", "argon2id", "6"]
    return str(path)


@pytest.mark.parametrize("user,password", [("alice", "wonderland"), ("bob", "builder"),
                                           ("carol", "singer")])
def test_each_hash_format_lets_its_user_in(make_broker, password_file, user, password):
    bt = make_broker(password_file=password_file, allow_anonymous=False)
    r = pub(bt.port, "-u", user, "-P", password)
    assert r.returncode == 0, r.stderr
    r = pub(bt.port, "-u", user, "-P", password + "!")
    assert r.returncode != 0 and "not authori" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("version", [4, 5])
def test_wrong_password_and_unknown_user_codes(make_broker, password_file, version):
    """Wrong password, unknown user, missing password: CONNACK 0x86 (5.0) / 0x05 (3.1.1);
    anonymous with allow_anonymous = false: 0x87 / 0x05."""
    bt = make_broker(password_file=password_file, allow_anonymous=False)
    bad = 0x86 if version == 5 else 0x05
    for username, password, code in [("alice", b"nope", bad), ("mallory", b"x", bad),
                                      ("alice", None, bad),
                                      (None, None, 0x87 if version == 5 else 0x05)]:
        c = RawClient(bt.port, version)
        c.send_packet(Connect("x", version=version, username=username, password=password))
        ack = c.recv_packet()
        assert ack.reason_code == code, (username, password, ack)
        assert c.closed()
        c.close()
    ok = PahoClient(bt.port, "paho-alice", V5 if version == 5 else V311, username="alice",
                    password="wonderland")
    ok.close()


def test_anonymous_clients_beside_a_password_file(make_broker, password_file):
    """allow_anonymous = true (the default): clients without a user name connect; a client
    with a user name must still know its password."""
    bt = make_broker(password_file=password_file)
    assert pub(bt.port).returncode == 0
    assert pub(bt.port, "-u", "alice", "-P", "bad").returncode != 0


def test_a_connect_storm_of_argon2_passwords_does_not_stall_traffic(make_broker, tmp_path):
    """40 clients connect at once with argon2id passwords (tens of ms of hashing each):
    the hashes run in a thread pool, so a client already connected keeps getting PINGRESPs
    quickly meanwhile (inline, the loop would stall for the whole storm)."""
    path = tmp_path / "argon"
    cymqtt_passwd("-c", "-H", "argon2id", "-b", str(path), "dev", "pw")
    bt = make_broker(password_file=str(path))
    live = RawClient(bt.port, 4)
    live.send_packet(Connect("live", version=4))
    assert live.recv_packet().reason_code == 0
    results: list[int] = []

    def storm(i: int) -> None:
        c = RawClient(bt.port, 4, timeout=30)
        c.send_packet(Connect(f"s{i}", version=4, username="dev", password=b"pw"))
        results.append(c.recv_packet(timeout=30).reason_code)
        c.close()

    threads = [threading.Thread(target=storm, args=(i,)) for i in range(40)]
    start = time.monotonic()
    for t in threads:
        t.start()
    worst = 0.0
    while any(t.is_alive() for t in threads):
        t0 = time.monotonic()
        live.send(b"\xc0\x00")
        assert live.recv_packet(timeout=10).type == 13          # PINGRESP
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.02)
    for t in threads:
        t.join()
    storm_took = time.monotonic() - start
    assert results == [0] * 40
    assert worst < max(0.5, storm_took / 3), (worst, storm_took)
    live.close()


def test_unusable_password_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "pw"
    bad.write_text("alice:$7$101$notbase64!$zzz\n")
    conf = tmp_path / "c.toml"
    conf.write_text(f'port = 0\npassword_file = "{bad}"\n')
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "password_file" in lines[0] and ":1" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    conf.write_text(f'port = 0\nacl_file = "{tmp_path / "missing"}"\n')
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 2 and "acl_file" in r.stderr and "missing" in r.stderr


def test_sighup_reloads_the_password_and_acl_files_without_dropping_clients(tmp_path):
    """SIGHUP reads password_file and acl_file again: a user added to the file can connect, a
    grant added to the ACL reaches a client connected all along; a broken ACL file on the next
    reload keeps the rules in force (one log line) and nobody is dropped."""
    pw = tmp_path / "passwords"
    cymqtt_passwd("-c", "-b", str(pw), "alice", "a-pw")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n")
    conf = tmp_path / "c.toml"
    conf.write_text(f'port = 0\npassword_file = "{pw}"\nacl_file = "{acl}"\n'
                    'allow_anonymous = false\nsys_interval = 0\n')
    b = Cli(os.environ.get("CYMQTT_TEST_LOOP", "uvloop"), "-c", str(conf))
    alice = None
    try:
        alice = PahoClient(b.port, "alice-1", V5, username="alice", password="a-pw")
        assert alice.subscribe("news/#", 1) == [0x87]   # nothing there she may read yet
        assert alice.subscribe("#", 1) == [1]            # granted: alice/# is readable
        assert pub(b.port, "-u", "bob", "-P", "b-pw").returncode != 0
        cymqtt_passwd("-b", str(pw), "bob", "b-pw")
        acl.write_text("user alice\ntopic readwrite alice/#\ntopic read news/#\n"
                       "user bob\ntopic write news/#\n")
        n = b.signal(signal.SIGHUP)
        b.wait_for(r"reload: acl_file .* read: 3 rules", start=n)
        b.wait_for(r"reload: password_file .* read: 2 users", start=n)
        assert pub(b.port, "-u", "bob", "-P", "b-pw", "-t", "news/today", "-m", "hot",
                   "-q", "1").returncode == 0
        wait_until(lambda: alice.payloads("news/today") == [b"hot"], 5,
                   what="the reloaded grant reaches the connected client")
        acl.write_text("user alice\ntopic sideways alice/#\n")
        n = b.signal(signal.SIGHUP)
        b.wait_for(r"reload failed, keeping the current ACL file: acl_file: .*:2", start=n)
        assert pub(b.port, "-u", "bob", "-P", "b-pw", "-t", "news/later", "-m", "still",
                   "-q", "1").returncode == 0
        wait_until(lambda: alice.payloads("news/later") == [b"still"], 5)
        assert alice.client.is_connected()
    finally:
        if alice is not None:
            alice.close()
        assert b.stop() == 0


def test_slow_hashes_go_to_the_thread_pool_cheap_ones_run_inline(password_file):
    """argon2id and PBKDF2 of many rounds are checked in a worker thread; mosquitto 2.0's
    default $7$ (101 rounds, 0.1 ms) and $6$ are cheaper inline than the handoff."""
    from cymqtt.passwd import PasswordFile, hash_password
    pf = PasswordFile.load(password_file)
    assert [pf.is_slow(u) for u in ("alice", "bob", "carol", "nobody")] == \
        [False, True, False, False]
    many = PasswordFile.parse(f"dev:{hash_password('pw', iterations=20000)}\n")
    assert many.is_slow("dev") and many.verify("dev", b"pw")
