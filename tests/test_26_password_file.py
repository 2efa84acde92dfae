"""password_file through the broker: files written by Debian's mosquitto_passwd and by
`cymqtt passwd` ($6$, $7$, $argon2id$), real clients (mosquitto_pub -u/-P, paho), the refusal
codes, and slow hashes checked off the event loop so a connect storm does not stall traffic."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import pytest

from _testbase import RawClient
from cymqtt._fast.codec import Connect
from helpers_paho import V5, V311, PahoClient

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_passwd") and shutil.which("mosquitto_pub")),
    reason="mosquitto (mosquitto_passwd) and mosquitto-clients are not installed")


def cymqtt_passwd(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "cymqtt", "passwd", *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def pub(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "pw/t",
                           "-m", "x", *args], capture_output=True, text=True, timeout=10)


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
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "password_file" in lines[0] and ":1" in lines[0], r.stderr
    conf.write_text(f'port = 0\nacl_file = "{tmp_path / "missing"}"\n')
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 2 and "acl_file" in r.stderr and "missing" in r.stderr
