"""The cluster on a NATS server that wants TLS, a client certificate and a password (issue 13:
"TLS and credentials to NATS as NATS takes them"): certificates made in the test (trustme: a
CA, a server certificate for 127.0.0.1, a client certificate), a real nats-server with
`tls { verify: true }` and `authorization`, two real nodes whose [cluster] table carries the
credentials, and paho clients on both. Wrong credentials are one clear error at start."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from cymqtt.config import ClusterConfig, ConfigError
from helpers_paho import V5, PahoClient
from _testbase import BrokerThread, free_port, nats_server_binary

pytest.importorskip("nats")
trustme = pytest.importorskip("trustme")

USER, PASSWORD = "cymqtt", "s3cret pass"


@pytest.fixture
def secure_nats(tmp_path):
    """A nats-server (JetStream) that takes TLS only, with a client certificate signed by the
    test CA, and the user USER / PASSWORD; yields (URL, CA file, client cert, client key)."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("node@example.org", common_name="node")
    files = {}
    for name, blob in (("ca.pem", ca.cert_pem.bytes()),
                       ("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems)),
                       ("server.key", server.private_key_pem.bytes()),
                       ("client.pem", client.cert_chain_pems[0].bytes()),
                       ("client.key", client.private_key_pem.bytes())):
        files[name] = tmp_path / name
        files[name].write_bytes(blob)
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        f'tls {{ cert_file: "{files["server.pem"]}", key_file: "{files["server.key"]}", '
        f'ca_file: "{files["ca.pem"]}", verify: true, timeout: 2 }}\n'
        f'authorization {{ user: "{USER}", password: "{PASSWORD}" }}\n')
    proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("nats-server did not start: " + proc.stderr.read())
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)
    yield (f"tls://127.0.0.1:{port}", str(files["ca.pem"]), str(files["client.pem"]),
           str(files["client.key"]))
    proc.terminate()
    proc.wait(10)


def _node(request, node: str, url: str, **creds) -> BrokerThread:
    cfg = ClusterConfig(nats=(url,), node=node, name="sec", node_timeout=1.5, **creds)
    return BrokerThread(request.config.getoption("--loop"), cluster=cfg)


def test_nodes_meet_over_tls_with_a_client_certificate_and_a_password(request, secure_nats):
    url, ca, cert, key = secure_nats
    creds = dict(user=USER, password=PASSWORD, tls_ca_file=ca, tls_cert_file=cert,
                 tls_key_file=key)
    a = _node(request, "a", url, **creds)
    b = _node(request, "b", url, **creds)
    clients = []
    try:
        assert a.call(a.broker.stats)["cluster_nodes"] == 2
        sub = PahoClient(a.port, "sub", V5)
        clients.append(sub)
        sub.subscribe("secure/#", 1)
        pub = PahoClient(b.port, "pub", V5)
        clients.append(pub)
        pub.publish("secure/x", b"over tls", qos=1, retain=True)
        assert sub.wait_messages(1)[0].payload == b"over tls"
        late = PahoClient(a.port, "late", V5)        # the retained bucket, over TLS too
        clients.append(late)
        late.subscribe("secure/x", 1)
        got = late.wait_messages(1)[0]
        assert got.payload == b"over tls" and got.retain
    finally:
        for c in clients:
            c.close()
        b.stop()
        a.stop()


@pytest.mark.parametrize("what", ["wrong password", "no client certificate", "untrusted CA"])
def test_credentials_nats_refuses_are_one_clear_error(request, secure_nats, tmp_path, what):
    url, ca, cert, key = secure_nats
    creds = dict(user=USER, password=PASSWORD, tls_ca_file=ca, tls_cert_file=cert,
                 tls_key_file=key)
    if what == "wrong password":
        creds["password"] = "guess"
    elif what == "no client certificate":
        del creds["tls_cert_file"], creds["tls_key_file"]
    else:
        other = tmp_path / "other-ca.pem"
        other.write_bytes(trustme.CA().cert_pem.bytes())
        creds["tls_ca_file"] = str(other)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach NATS at tls://127.0.0.1"):
        _node(request, "x", url, **creds)
    assert time.monotonic() - t0 < 15
