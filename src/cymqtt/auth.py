"""Authentication: user name/password checks and MQTT 5 enhanced authentication (AUTH).

An `Authenticator` handles one authentication method. For each CONNECT (or re-authentication)
naming its method the broker calls `start()` and then feeds the exchange the client's
authentication data, one `step()` per packet, until the exchange says "success" or "failure":

    class Token(Authenticator):
        method = "TOKEN"
        def start(self, client_id, username):
            return TokenExchange()

    class TokenExchange(AuthExchange):
        def step(self, data):
            return AuthStep.success() if data == b"let-me-in" else AuthStep.failure()

    Broker(authenticators=[Token()])

`ScramSha256` (RFC 5802 / RFC 7677) is built in, for the users in the config's [users] table.

A decision may take time (a password hash, a call to another service): `step()` may return an
asyncio future of its `AuthStep` instead of the step itself. The connection reads nothing more
from that client until the future is done; other clients are not held up.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Awaitable, Callable

from cymqtt.consts import RC_BAD_USER_NAME_OR_PASSWORD, RC_NOT_AUTHORIZED

CONTINUE, SUCCESS, FAILURE = "continue", "success", "failure"


@dataclass(frozen=True)
class AuthStep:
    """What an exchange answers: go on (send `data` in AUTH 0x18), succeed, or fail."""

    status: str
    data: bytes | None = None
    reason_code: int = 0x87          # for failures: 0x86 bad credentials, 0x87 not authorized
    reason: str | None = None

    @classmethod
    def continue_with(cls, data: bytes) -> AuthStep:
        return cls(CONTINUE, data)

    @classmethod
    def success(cls, data: bytes | None = None) -> AuthStep:
        return cls(SUCCESS, data)

    @classmethod
    def failure(cls, reason_code: int = 0x87, reason: str | None = None) -> AuthStep:
        return cls(FAILURE, None, reason_code, reason)


class AuthExchange(ABC):
    """One authentication conversation with one client."""

    @abstractmethod
    def step(self, data: bytes | None) -> AuthStep | Awaitable[AuthStep]:
        """The client's authentication data (None when it sent none) -> the next step (or an
        asyncio future of it)."""


class Authenticator(ABC):
    """Enhanced authentication for one method (the MQTT 5 authentication method string)."""

    method: str = ""

    @abstractmethod
    def start(self, client_id: str, username: str | None) -> AuthExchange:
        """A new exchange, for a CONNECT or a re-authentication (AUTH 0x19)."""


class Auth:
    """Who may connect: the [users] passwords, a mosquitto password file, anonymous access,
    and the enhanced authentication methods (SCRAM-SHA-256 for [users], plus any
    `Authenticator` given).

    A password file's hashes can be slow by design (argon2, PBKDF2 of many rounds): for those
    `offload(fn, *args)` runs `fn` away from the event loop and returns an asyncio future of its
    result (the broker gives a thread pool; hashlib and argon2 release the GIL), so a connect
    storm with passwords does not stall message traffic. Cheap ones (mosquitto 2.0's default
    $7$ of 101 rounds: 0.1 ms) run inline, which costs less than the handoff; so does
    everything without `offload` (tests)."""

    def __init__(self, users: dict[str, str], allow_anonymous: bool = True,
                 authenticators: list[Authenticator] | None = None,
                 passwords=None, offload: Callable[..., Awaitable] | None = None) -> None:
        self._users = users
        self._allow_anonymous = allow_anonymous
        self.passwords = passwords            # passwd.PasswordFile, or None
        self._offload = offload
        self._methods: dict[str, Authenticator] = {}
        if users:
            scram = ScramSha256(users)
            self._methods[scram.method] = scram
        for a in authenticators or ():
            self._methods[a.method] = a

    def authenticator(self, method: str) -> Authenticator | None:
        """The authenticator for an MQTT 5 authentication method, or None."""
        return self._methods.get(method)

    def check(self, username: str | None,
              password: bytes | None) -> AuthStep | Awaitable[AuthStep]:
        """A CONNECT without an authentication method: its user name and password."""
        passwords = self.passwords
        if not self._users and passwords is None:
            return _ALLOWED
        if username is None:
            if self._allow_anonymous:
                return _ALLOWED
            return AuthStep.failure(RC_NOT_AUTHORIZED, "anonymous clients are not allowed")
        if username in self._users or passwords is None:
            return _ALLOWED if check_password(self._users, username, password) \
                else _bad_password(username)
        if self._offload is not None and password is not None and passwords.is_slow(username):
            return self._offload(_verify, passwords, username, password)
        return _verify(passwords, username, password)     # cheap ($6$, $7$ of few rounds)


def _verify(passwords, username: str, password: bytes | None) -> AuthStep:
    # In a worker thread: PasswordFile.verify is pure and thread-safe.
    if password is not None and passwords.verify(username, password):
        return _ALLOWED
    return _bad_password(username)


def _bad_password(username: str) -> AuthStep:
    return AuthStep.failure(RC_BAD_USER_NAME_OR_PASSWORD,
                            f"bad user name or password for {username!r}")


def check_password(users: dict[str, str], username: str | None,
                   password: bytes | None) -> bool:
    """True when `username` is configured and `password` is its password."""
    if username is None or username not in users or password is None:
        return False
    return hmac.compare_digest(users[username].encode(), password)


# -- SCRAM-SHA-256 ------------------------------------------------------------------------------

_ALLOWED = AuthStep.success()


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _attrs(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        if len(part) >= 2 and part[1] == "=":
            out[part[0]] = part[2:]
    return out


class _ScramUser:
    __slots__ = ("salt", "iterations", "stored_key", "server_key")

    def __init__(self, password: str, iterations: int) -> None:
        self.salt = os.urandom(16)
        self.iterations = iterations
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, iterations)
        self.stored_key = _h(_hmac(salted, b"Client Key"))
        self.server_key = _hmac(salted, b"Server Key")


class ScramSha256(Authenticator):
    """SCRAM-SHA-256 over MQTT 5 AUTH: CONNECT carries client-first, AUTH 0x18 server-first,
    AUTH 0x18 client-final, and CONNACK (or AUTH 0x00) server-final. Passwords are kept only as
    salted keys."""

    method = "SCRAM-SHA-256"

    def __init__(self, users: dict[str, str], iterations: int = 4096) -> None:
        self._users = {name: _ScramUser(pw, iterations) for name, pw in users.items()}

    def start(self, client_id: str, username: str | None) -> AuthExchange:
        return _ScramExchange(self._users)


class _ScramExchange(AuthExchange):
    def __init__(self, users: dict[str, _ScramUser]) -> None:
        self._users = users
        self._state = 0
        self._user: _ScramUser | None = None
        self._nonce = ""
        self._first_bare = ""
        self._server_first = ""

    def step(self, data: bytes | None) -> AuthStep:
        try:
            text = (data or b"").decode()
        except UnicodeDecodeError:
            return AuthStep.failure(0x86, "SCRAM message is not UTF-8")
        if self._state == 0:
            return self._client_first(text)
        if self._state == 1:
            return self._client_final(text)
        return AuthStep.failure(0x82, "SCRAM exchange already finished")

    def _client_first(self, text: str) -> AuthStep:
        # gs2 header "n,," (no channel binding), then "n=user,r=nonce"
        if not text.startswith(("n,,", "y,,")):
            return AuthStep.failure(0x86, "SCRAM client-first needs a 'n,,' header")
        bare = text[3:]
        a = _attrs(bare)
        name = a.get("n", "").replace("=2C", ",").replace("=3D", "=")
        user = self._users.get(name)
        if user is None or not a.get("r"):
            return AuthStep.failure(0x86, "unknown user or missing nonce")
        self._user = user
        self._nonce = a["r"] + base64.b64encode(os.urandom(18)).decode()
        self._first_bare = bare
        self._server_first = (f"r={self._nonce},s={base64.b64encode(user.salt).decode()},"
                              f"i={user.iterations}")
        self._state = 1
        return AuthStep.continue_with(self._server_first.encode())

    def _client_final(self, text: str) -> AuthStep:
        self._state = 2
        a = _attrs(text)
        if a.get("r") != self._nonce or "p" not in a:
            return AuthStep.failure(0x86, "SCRAM nonce mismatch")
        without_proof = text[:text.rindex(",p=")]
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        user = self._user
        assert user is not None
        try:
            proof = base64.b64decode(a["p"], validate=True)
        except ValueError:
            return AuthStep.failure(0x86, "SCRAM proof is not base64")
        signature = _hmac(user.stored_key, auth_message)
        if len(proof) != len(signature):
            return AuthStep.failure(0x86, "bad SCRAM proof")
        client_key = bytes(x ^ y for x, y in zip(proof, signature))
        if not hmac.compare_digest(_h(client_key), user.stored_key):
            return AuthStep.failure(0x86, "bad user name or password")
        verifier = base64.b64encode(_hmac(user.server_key, auth_message)).decode()
        return AuthStep.success(f"v={verifier}".encode())


def scram_client_proof(password: str, salt: bytes, iterations: int,
                       auth_message: bytes) -> bytes:
    """The client side of SCRAM-SHA-256's proof (for tests and clients written in Python)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    signature = _hmac(_h(client_key), auth_message)
    return bytes(x ^ y for x, y in zip(client_key, signature))
