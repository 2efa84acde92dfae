"""mosquitto password files (cymqtt.passwd): every hash format, files written by Debian's
mosquitto_passwd read by PasswordFile, files written by `cymqtt passwd` accepted by a real
mosquitto 2.0, and the command line's -c/-b/-D/-U/-H and interactive prompt."""
from __future__ import annotations

import getpass
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import time

import pytest

from cymqtt.passwd import (PasswordFile, PasswordFileError, decode_hash, hash_password,
                           Argon2idHash, Pbkdf2Hash, Sha512Hash)
from _testbase import free_port

# Not run again on uvloop by make test: the passwd command and mosquitto, processes of their own.
pytestmark = pytest.mark.loop_independent

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
needs_mosquitto = pytest.mark.skipif(not (os.path.exists(MOSQUITTO) and MOSQUITTO_PASSWD),
                                     reason="mosquitto 2.0 and mosquitto_passwd not installed")


def cymqtt_passwd(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cymqtt.passwd", *args], capture_output=True,
                          text=True, input=input, timeout=30)


# ---------------------------------------------------------------------------------------------
# Formats

# Fixed vectors: SHA-512("pw" + salt) and PBKDF2-HMAC-SHA512("pw", salt, 101) for the 12-byte
# salt b"0123456789ab", written the way mosquitto_passwd writes them.
SALT = b"0123456789ab"


def _vectors():
    import base64
    import hashlib
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    six = f"$6${b64(SALT)}${b64(hashlib.sha512(b'pw' + SALT).digest())}"
    seven = f"$7$101${b64(SALT)}${b64(hashlib.pbkdf2_hmac('sha512', b'pw', SALT, 101, 64))}"
    return six, seven


@pytest.mark.parametrize("scheme,cls", [("sha512", Sha512Hash), ("sha512-pbkdf2", Pbkdf2Hash),
                                        ("argon2id", Argon2idHash)])
def test_each_scheme_round_trips(scheme, cls):
    h = hash_password("s3cret", scheme)
    assert isinstance(decode_hash(h), cls)
    pf = PasswordFile.parse(f"alice:{h}\n", "t")
    assert pf.verify("alice", b"s3cret")
    assert not pf.verify("alice", b"s3cret ")
    assert not pf.verify("alice", b"")
    assert not pf.verify("alice", None)
    assert not pf.verify("bob", b"s3cret")


def test_hash_fields_are_mosquitto_shaped():
    import base64
    seven = hash_password("x")
    _, t, it, salt, digest = seven.split("$")
    assert (t, it) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64
    six = hash_password("x", "sha512").split("$")
    assert six[1] == "6" and len(base64.b64decode(six[2])) == 12
    a = hash_password("x", "argon2id")
    assert a.startswith("$argon2id$v=19$m=47104,t=1,p=1$")   # mosquitto 2.1's parameters
    assert hash_password("x", iterations=5).startswith("$7$5$")


def test_fixed_vectors_verify():
    six, seven = _vectors()
    pf = PasswordFile.parse(f"a:{six}\nb:{seven}\n")
    assert pf.users == {"a", "b"} and "a" in pf and "c" not in pf and len(pf) == 2
    assert pf.verify("a", b"pw") and pf.verify("b", b"pw")
    assert not pf.verify("a", b"pW") and not pf.verify("b", b"p")


def test_argon2_verifies_with_argon2_cffi():
    from argon2 import PasswordHasher
    h = hash_password("pw", "argon2id")
    assert PasswordHasher().verify(h, "pw")
    other = PasswordHasher().hash("pw")          # argon2-cffi's own defaults also verify
    assert PasswordFile.parse(f"u:{other}").verify("u", b"pw")


def test_comments_blank_lines_and_whitespace_are_skipped():
    six, _ = _vectors()
    pf = PasswordFile.parse(f"# a comment\n\n   \n\t\r\n  a : {six}  \r\n")
    assert pf.users == {"a"} and pf.verify("a", b"pw")


@pytest.mark.parametrize("line,message", [
    ("justaname", "found no ':'"),
    ("u:plain", "plain text"),
    ("u:$8$x$y", "unknown hash type '8'"),
    ("u:$7$0$MDEyMzQ1Njc4OWFi$AAAA", "iteration count '0'"),
    ("u:$7$101$AAAA$AAAA", "salt is 3 bytes, mosquitto needs 12 or 64"),
    ("u:$6$MDEyMzQ1Njc4OWFi$AAAA", "hash is 3 bytes"),
    ("u:$6$MDEyMzQ1Njc4OWFi", "$6$<salt>$<hash>"),
    ("u:$6$***$AAAA", "not valid base64"),
    (":$6$x$y", "empty user name"),
    ("u:", "no password hash"),
    ("u:$argon2id$nonsense", "libargon2"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "pw"
    path.write_text("# header\n\n" + line + "\n")
    with pytest.raises(PasswordFileError) as e:
        PasswordFile.load(path)
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_duplicate_user_is_an_error_and_lenient_mode_skips_like_mosquitto():
    six, seven = _vectors()
    with pytest.raises(PasswordFileError, match=r"t:2: user 'a' appears twice"):
        PasswordFile.parse(f"a:{six}\na:{seven}\n", "t")
    pf = PasswordFile.parse(f"a:{six}\nbroken\nb:$9$x\nc:{seven}\n", "t", strict=False)
    assert pf.users == {"a", "c"}
    assert [w.split(":")[1] for w in pf.warnings] == ["2", "3"]


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(PasswordFileError, match="cannot read the password file"):
        PasswordFile.load(tmp_path / "missing")
    p = tmp_path / "latin1"
    p.write_bytes(b"ok:x\n\xe9t\xe9:y\n")
    with pytest.raises(PasswordFileError, match=r"latin1:2: not UTF-8"):
        PasswordFile.load(p)


def test_verify_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor
    pf = PasswordFile.parse("\n".join(f"u{i}:{hash_password(f'p{i}')}" for i in range(8)))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: pf.verify(f"u{i % 8}", f"p{i % 8 if i % 3 else 'x'}"
                                                .encode()), range(200)))
    assert got == [bool(i % 3) for i in range(200)]


# ---------------------------------------------------------------------------------------------
# Interoperability with mosquitto 2.0

@needs_mosquitto
@pytest.mark.parametrize("hash_opt", [[], ["-H", "sha512"]])
def test_file_written_by_mosquitto_passwd_verifies(tmp_path, hash_opt):
    path = tmp_path / "pw"
    subprocess.run([MOSQUITTO_PASSWD, *hash_opt, "-b", "-c", str(path), "alice", "wonder"],
                   check=True)
    subprocess.run([MOSQUITTO_PASSWD, *hash_opt, "-b", str(path), "bob", "b0b pw"], check=True)
    pf = PasswordFile.load(path)
    assert pf.users == {"alice", "bob"}
    assert pf.verify("alice", b"wonder") and pf.verify("bob", b"b0b pw")
    assert not pf.verify("alice", b"b0b pw")


@pytest.fixture
def mosquitto_with(tmp_path):
    """mosquitto_with(password_file) -> port of a mosquitto using it (stopped by pid)."""
    procs: list[subprocess.Popen] = []

    def start(password_file) -> int:
        port = free_port()
        conf = tmp_path / f"m{port}.conf"
        # `user`: mosquitto started as root otherwise drops to "mosquitto", which cannot read
        # a 0600 file of ours
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                        f"user {getpass.getuser()}\npassword_file {password_file}\n")
        p = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        procs.append(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: " + p.stderr.read().decode())

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connack(port: int, user: str, password: str, version: int = 4) -> int:
    """The CONNACK return code (3.1.1) or reason code (5.0) mosquitto sends for these
    credentials, read off the wire."""
    props = b"\x00" if version == 5 else b""
    var = _utf8("MQTT") + bytes([version, 0xC2]) + b"\x00\x3c" + props
    body = var + _utf8(f"t-{user}") + _utf8(user) + _utf8(password)
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        ack = s.recv(64)
    assert ack[0] == 0x20, ack
    return ack[3]


@needs_mosquitto
@pytest.mark.parametrize("hash_opt", [[], ["-H", "sha512"], ["-I", "1000"]])
def test_file_written_by_cymqtt_passwd_is_accepted_by_mosquitto(tmp_path, mosquitto_with,
                                                                hash_opt):
    path = tmp_path / "pw"
    assert cymqtt_passwd(*hash_opt, "-c", "-b", str(path), "alice", "wonder").returncode == 0
    assert cymqtt_passwd(*hash_opt, "-b", str(path), "bob", "second").returncode == 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    port = mosquitto_with(path)
    assert connack(port, "alice", "wonder") == 0
    assert connack(port, "bob", "second") == 0
    assert connack(port, "alice", "wrong") == 5                          # 3.1.1: not authorised
    assert connack(port, "alice", "wrong", 5) == 0x87          # mosquitto 2.0.11 sends 0x87
    assert connack(port, "nobody", "wonder") == 5
    pub = subprocess.run(["mosquitto_pub", "-p", str(port), "-u", "alice", "-P", "wonder",
                          "-t", "t", "-m", "m"], capture_output=True, timeout=10)
    assert pub.returncode == 0, pub.stderr
    pub = subprocess.run(["mosquitto_pub", "-p", str(port), "-u", "alice", "-P", "nope",
                          "-t", "t", "-m", "m"], capture_output=True, timeout=10)
    assert pub.returncode != 0 and b"not authorised" in pub.stderr


# ---------------------------------------------------------------------------------------------
# The command line

def test_create_update_delete(tmp_path):
    path = tmp_path / "pw"
    assert cymqtt_passwd("-c", "-b", str(path), "a", "1").returncode == 0
    assert cymqtt_passwd("-b", str(path), "b", "2").returncode == 0
    assert cymqtt_passwd("-b", str(path), "a", "3").returncode == 0    # update in place
    pf = PasswordFile.load(path)
    assert path.read_text().splitlines()[0].startswith("a:$7$101$")
    assert pf.verify("a", b"3") and pf.verify("b", b"2")
    r = cymqtt_passwd("-D", str(path), "a")
    assert r.returncode == 0
    assert PasswordFile.load(path).users == {"b"}
    r = cymqtt_passwd("-D", str(path), "zed")
    assert r.returncode == 1 and r.stderr == "Warning: User zed not found in password file.\n"
    assert cymqtt_passwd("-c", "-b", str(path), "c", "4").returncode == 0   # -c overwrites
    assert PasswordFile.load(path).users == {"c"}


def test_argon2id_scheme(tmp_path):
    path = tmp_path / "pw"
    assert cymqtt_passwd("-H", "argon2id", "-c", "-b", str(path), "a", "pw").returncode == 0
    assert path.read_text().startswith("a:$argon2id$v=19$")
    assert PasswordFile.load(path).verify("a", b"pw")


def test_upgrade_plain_text_file(tmp_path):
    path = tmp_path / "pw"
    six, _ = _vectors()
    path.write_text(f"# users\nalice:wonder\n\nbob:b0b\ncarol:{six}\n")
    os.chmod(path, 0o640)
    r = cymqtt_passwd("-U", str(path))
    assert r.returncode == 0, r.stderr
    lines = path.read_text().splitlines()
    assert lines[0] == "# users" and lines[2] == "" and lines[4] == f"carol:{six}"
    pf = PasswordFile.load(path)
    assert pf.verify("alice", b"wonder") and pf.verify("bob", b"b0b") and pf.verify("carol", b"pw")
    assert os.stat(path).st_mode & 0o777 == 0o640          # an existing file keeps its mode


@pytest.mark.parametrize("args,code,message", [
    ([], 1, None),
    (["-c", "-D", "f", "u"], 1, "Error: -c and -D cannot be used together.\n"),
    (["-c", "-U", "f"], 1, "Error: -c and -U cannot be used together.\n"),
    (["-D", "-U", "f"], 1, "Error: -D and -U cannot be used together.\n"),
    (["-b", "-D", "f", "u"], 1, "Error: -b and -D cannot be used together.\n"),
    (["-H", "md5", "-b", "f", "u", "p"], 1, "Error: Unknown hash type 'md5'\n"),
    (["-H"], 1, "Error: -H argument given but not enough other arguments.\n"),
    (["-c", "f"], 1, "Error: -c argument given but password file or username missing.\n"),
    (["-c", "-b", "f", "u"], 1,
     "Error: -c argument given but password file, username, or password missing.\n"),
    (["-U"], 1, "Error: -U argument given but password file missing.\n"),
    (["-b", "{f}", "a:b", "p"], 1, "Error: Username must not contain the ':' character.\n"),
    (["-b", "{f}", "a\tb", "p"], 1, "Error: Username must not contain control characters.\n"),
    (["-b", "{missing}", "u", "p"], 1, "Error: Unable to open password file {missing}."),
])
def test_errors_like_mosquitto_passwd(tmp_path, args, code, message):
    f, missing = tmp_path / "pw", str(tmp_path / "missing")
    f.write_text("")
    args = [a.format(f=f, missing=missing) for a in args]
    r = cymqtt_passwd(*args)
    assert r.returncode == code
    if message is None:
        assert r.stdout.startswith("cymqtt passwd is a tool")
    else:
        assert r.stderr.startswith(message.format(missing=missing))


def test_corrupt_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "pw"
    path.write_text("a:$6$x$y\nnot a line\n")
    r = cymqtt_passwd("-b", str(path), "b", "p")
    assert (r.returncode, r.stderr) == (1, "Error: Corrupt password file at line 2.\n")
    assert path.read_text() == "a:$6$x$y\nnot a line\n"


def _interactive(args: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    """Run `cymqtt passwd` on a pseudo-terminal, answering its prompts in turn."""
    pid, fd = pty.fork()
    if pid == 0:                                            # the child: becomes cymqtt passwd
        os.execv(sys.executable, [sys.executable, "-m", "cymqtt.passwd", *args])
    out = b""
    try:
        for answer in answers + [None]:
            deadline = time.monotonic() + 10
            while not out.rstrip().endswith(b":") and time.monotonic() < deadline:
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    try:
                        chunk = os.read(fd, 1024)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        break
                    out += chunk
                elif os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
            if answer is None:
                break
            os.write(fd, answer)
            out += b"|"                                     # so the next prompt is awaited
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def test_interactive_prompts_twice(tmp_path):
    path = tmp_path / "pw"
    code, out = _interactive(["-c", str(path), "alice"], [b"wonder\n", b"wonder\n"])
    assert code == 0, out
    assert b"Password:" in out and b"Reenter password:" in out and b"wonder" not in out
    assert PasswordFile.load(path).verify("alice", b"wonder")
    code, _ = _interactive([str(path), "bob"], [b"b0b\n", b"b0b\n"])
    assert code == 0 and PasswordFile.load(path).verify("bob", b"b0b")


def test_interactive_mismatch_and_empty(tmp_path):
    path = tmp_path / "pw"
    code, out = _interactive(["-c", str(path), "alice"], [b"one\n", b"two\n"])
    assert code == 2 and b"Error: Passwords do not match." in out
    assert not path.exists()
    code, out = _interactive(["-c", str(path), "alice"], [b"\n"])
    assert code == 1 and b"Error: Empty password." in out
