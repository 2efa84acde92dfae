"""TLS and mTLS listeners, with certificates made in the test (trustme: a CA, a server
certificate for 127.0.0.1, client certificates) and real clients: mosquitto_pub/mosquitto_sub
with --cafile/--cert/--key, paho with tls_set, and raw sockets for what must fail."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys

import pytest

from cymqtt.config import ListenerConfig
from helpers_paho import V5, V311, PahoClient, wait_until

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) are not installed")


class Certs:
    """PEM files of a test PKI: `ca` signs the server's and alice's certificates; `rogue` is
    a CA nobody trusts, with a client certificate of its own."""

    def __init__(self, tmp_path) -> None:
        ca = trustme.CA()
        rogue = trustme.CA()
        self.dir = tmp_path
        self.ca = self._write("ca.pem", ca.cert_pem.bytes())
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self._write("server.pem", b"".join(
            b.bytes() for b in server.cert_chain_pems))
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        alice = ca.issue_cert("alice@example.org", common_name="alice")
        self.alice_cert = self._write("alice.pem", alice.cert_chain_pems[0].bytes())
        self.alice_key = self._write("alice.key", alice.private_key_pem.bytes())
        mallory = rogue.issue_cert("mallory@example.org", common_name="mallory")
        self.rogue_cert = self._write("mallory.pem", mallory.cert_chain_pems[0].bytes())
        self.rogue_key = self._write("mallory.key", mallory.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def listener(self, **kw) -> ListenerConfig:
        return ListenerConfig(0, "127.0.0.1", certfile=self.server_cert,
                              keyfile=self.server_key, **kw)


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


def ports(bt) -> dict[str, int]:
    """Listener kind -> port: 'mqtt' (plain), 'tls', 'mtls'."""
    out = {}
    for info in bt.broker.listeners:
        kind = "mtls" if info["mtls"] else "tls" if info["tls"] else "mqtt"
        out[kind] = info["port"]
    return out


def mosquitto(tool: str, port: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout)


def sub_pub(bt, port: int, tls_args: list[str], topic: str, payload: str):
    """mosquitto_sub (-C 1) and mosquitto_pub through `port` with `tls_args`; the line the
    subscriber printed."""
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                            "-C", "1", "-W", "5", "-i", "tls-sub", *tls_args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sub.poll() is not None or bt.call(
            lambda: (s := bt.broker.session("tls-sub")) is not None and topic in s.subscriptions),
            5, what="mosquitto_sub subscribed over TLS")
        r = mosquitto("mosquitto_pub", port, "-t", topic, "-m", payload, *tls_args)
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    return out.strip()


def test_mosquitto_clients_over_tls_with_cafile(make_broker, certs):
    """A TLS listener beside the plain one: mosquitto_sub and mosquitto_pub with --cafile
    exchange a message; the server certificate is checked against the CA and 127.0.0.1."""
    bt = make_broker(listeners=(certs.listener(),))
    p = ports(bt)
    assert p["tls"] != p["mqtt"]
    assert sub_pub(bt, p["tls"], ["--cafile", certs.ca], "secure/t", "over-tls") == "over-tls"


def test_paho_over_tls_and_plain_clients_share_the_broker(make_broker, certs):
    """paho with tls_set on the TLS port and a plain paho client on the plain port see each
    other's messages: one broker, the same routing."""
    bt = make_broker(listeners=(certs.listener(),))
    p = ports(bt)
    secure = PahoClient(p["tls"], "secure", V5, tls={"ca_certs": certs.ca})
    plain = PahoClient(p["mqtt"], "plain", V311)
    try:
        secure.subscribe("mix/#", 1)
        plain.subscribe("mix/#", 1)
        plain.publish("mix/a", b"from-plain", 1)
        secure.publish("mix/b", b"from-tls", 1)
        wait_until(lambda: len(secure.messages) == 2 and len(plain.messages) == 2)
        assert sorted(secure.payloads()) == [b"from-plain", b"from-tls"]
        assert bt.call(lambda: bt.broker.client("secure")["listener"]).startswith("mqtts:")
    finally:
        secure.close()
        plain.close()


def test_plain_mqtt_to_a_tls_port_fails_and_the_listener_keeps_serving(make_broker, certs):
    """A plain CONNECT to the TLS port gets no CONNACK (the TLS handshake fails, the socket
    closes), and a TLS client connects right after."""
    bt = make_broker(listeners=(certs.listener(),))
    p = ports(bt)
    s = socket.create_connection(("127.0.0.1", p["tls"]), timeout=5)
    s.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd")
    data = b""
    try:
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert not data.startswith(b"\x20")          # no CONNACK: whatever came was TLS
    assert bt.call(lambda: bt.broker.session("abcd")) is None
    r = mosquitto("mosquitto_pub", p["tls"], "--cafile", certs.ca, "-t", "after", "-m", "x")
    assert r.returncode == 0, r.stderr


def test_client_that_does_not_trust_the_server_refuses_it(make_broker, certs, tmp_path):
    """mosquitto_pub with another CA as --cafile does not connect (the server's certificate is
    not trusted): what a client checks is the real certificate chain."""
    bt = make_broker(listeners=(certs.listener(),))
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    r = mosquitto("mosquitto_pub", ports(bt)["tls"], "--cafile", str(other), "-t", "x", "-m", "y")
    assert r.returncode != 0


def test_mtls_requires_a_certificate_signed_by_the_cafile(make_broker, certs):
    """require_certificate: alice's certificate (signed by the cafile) gets in; no certificate,
    or mallory's from an untrusted CA, are refused during the handshake."""
    bt = make_broker(listeners=(certs.listener(cafile=certs.ca, require_certificate=True),))
    port = ports(bt)["mtls"]
    ok = ["--cafile", certs.ca, "--cert", certs.alice_cert, "--key", certs.alice_key]
    assert sub_pub(bt, port, ok, "m/t", "mutual") == "mutual"
    r = mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "-t", "m/t", "-m", "x")
    assert r.returncode != 0
    r = mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "--cert", certs.rogue_cert,
                  "--key", certs.rogue_key, "-t", "m/t", "-m", "x")
    assert r.returncode != 0
    assert bt.call(lambda: bt.broker.retained_count) == 0


def test_paho_without_a_client_certificate_is_refused_by_mtls(make_broker, certs):
    bt = make_broker(listeners=(certs.listener(cafile=certs.ca, require_certificate=True),))
    ctx = ssl.create_default_context(cafile=certs.ca)
    with socket.create_connection(("127.0.0.1", ports(bt)["mtls"]), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                # TLS 1.3: the server's verdict on the (missing) certificate comes after the
                # client's handshake completes, with the first read.
                s.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd")
                if not s.recv(10):
                    raise ConnectionResetError("closed")


def test_use_identity_as_username_takes_the_certificate_cn(make_broker, certs):
    """use_identity_as_username: the user name is alice's CN, whatever CONNECT says; the
    password file is not consulted on that listener (a [users] entry would refuse 'bob')."""
    bt = make_broker(users={"bob": "secret"}, allow_anonymous=False, listeners=(
        certs.listener(cafile=certs.ca, require_certificate=True,
                       use_identity_as_username=True),))
    c = PahoClient(ports(bt)["mtls"], "cn-client", V5, username="bob", password="wrong",
                   tls={"ca_certs": certs.ca, "certfile": certs.alice_cert,
                        "keyfile": certs.alice_key})
    try:
        assert bt.call(lambda: bt.broker.client("cn-client")["username"]) == "alice"
    finally:
        c.close()


def test_optional_client_certificate_with_cafile(make_broker, certs):
    """cafile without require_certificate: clients may present a certificate or not; one
    that presents an untrusted certificate is still refused."""
    bt = make_broker(listeners=(certs.listener(cafile=certs.ca),))
    port = ports(bt)["tls"]
    assert mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "-t", "o", "-m", "1"
                     ).returncode == 0
    assert mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "--cert", certs.alice_cert,
                     "--key", certs.alice_key, "-t", "o", "-m", "2").returncode == 0
    assert mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "--cert", certs.rogue_cert,
                     "--key", certs.rogue_key, "-t", "o", "-m", "3").returncode != 0


def test_tls_version_minimum(make_broker, certs):
    """tls_version = "tlsv1.3": a client limited to TLS 1.2 is refused, TLS 1.3 gets in."""
    bt = make_broker(listeners=(certs.listener(tls_version="tlsv1.3"),))
    port = ports(bt)["tls"]
    old = ssl.create_default_context(cafile=certs.ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            old.wrap_socket(raw, server_hostname="127.0.0.1")
    assert mosquitto("mosquitto_pub", port, "--cafile", certs.ca, "--tls-version", "tlsv1.3",
                     "-t", "v", "-m", "1").returncode == 0


@pytest.mark.parametrize("problem", ["missing-cert", "key-mismatch", "not-pem", "missing-ca"])
def test_bad_certificate_or_key_is_one_line_at_startup_and_exit_2(certs, tmp_path, problem):
    """`cymqtt -c` with an unusable certificate, key or CA: one line on stderr naming the
    listener and the file, exit code 2, nothing bound."""
    other = trustme.CA().issue_cert("127.0.0.1")
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(other.private_key_pem.bytes())
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cert, key, ca = certs.server_cert, certs.server_key, None
    if problem == "missing-cert":
        cert = str(tmp_path / "nope.pem")
    elif problem == "key-mismatch":
        key = str(wrong_key)
    elif problem == "not-pem":
        cert = str(junk)
    else:
        ca = str(tmp_path / "no-ca.pem")
    conf = tmp_path / "tls.toml"
    lines = ["[[listeners]]", "port = 0", f'certfile = "{cert}"', f'keyfile = "{key}"']
    if ca:
        lines.append(f'cafile = "{ca}"')
    conf.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "listener mqtts:0" in lines[0]
    assert {"missing-cert": "nope.pem", "key-mismatch": "wrong.key", "not-pem": "junk.pem",
            "missing-ca": "no-ca.pem"}[problem] in lines[0]


def test_listeners_table_errors_are_named(tmp_path):
    """[[listeners]] keys are checked like the rest: unknown keys, half a TLS pair, mTLS
    without a CA; all reported with the listener's position."""
    conf = tmp_path / "bad.toml"
    conf.write_text('[[listeners]]\nport = 8883\ncertfile = "a.pem"\nprotcol = "mqtt"\n'
                    '[[listeners]]\nport = 8884\ncertfile = "a.pem"\nkeyfile = "b.pem"\n'
                    'require_certificate = true\n')
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 2
    assert "#1" in r.stderr and "protcol" in r.stderr
    assert "Traceback" not in r.stderr
