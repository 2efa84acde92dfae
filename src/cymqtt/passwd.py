"""mosquitto password files: read them, check a password against them, and write them.

A password file holds one `user:hash` line per user, the hash in one of the forms mosquitto
writes (`mosquitto_passwd`, mosquitto's security_default.c / password_mosq.c):

    $6$<base64 salt>$<base64 SHA-512(password + salt)>          mosquitto 1.x, one salted SHA-512
    $7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>   mosquitto 2.0 (default, 101 rounds)
    $argon2id$v=19$m=47104,t=1,p=1$<salt>$<hash>                 mosquitto 2.1 (libargon2's form)

`PasswordFile.load(path)` parses a file once; `verify(username, password)` is slow by design
(PBKDF2, argon2) and is safe to run in a thread pool: it reads immutable data and has no side
effects. `hash_password()` makes a hash field; `main(argv)` is `cymqtt passwd`, which behaves like
mosquitto_passwd (-c, -b, -D, -U, -H) and writes files mosquitto 2.0 accepts.

This module knows nothing of sockets, the event loop, MQTT or the broker: it is handed a path or
a text and answers questions about it.
"""
from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterable, Sequence

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("cymqtt.passwd")

SALT_LEN = 12               # bytes; mosquitto_passwd's SALT_LEN, the only salt 2.0 accepts
SALT_LEN_21 = 64            # mosquitto 2.1 also writes (and accepts) 64-byte salts
HASH_LEN = 64               # SHA-512 / PBKDF2-HMAC-SHA512 output (EVP_MAX_MD_SIZE)
DEFAULT_ITERATIONS = 101    # PW_DEFAULT_ITERATIONS in mosquitto 2.0's password_mosq.h
SCHEMES = ("sha512-pbkdf2", "sha512", "argon2id")

# mosquitto 2.1's MOSQ_ARGON2_T/M/P and HASH_LEN-long salt and hash (libcommon password).
_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=47104, parallelism=1, hash_len=64,
                                salt_len=64, type=argon2.Type.ID)


# PBKDF2-SHA512 rounds past which a check takes over about a millisecond (1,000 rounds: 1.25 ms
# here; mosquitto 2.0's default of 101: 0.1 ms).
SLOW_ITERATIONS = 800


class PasswordFileError(ValueError):
    """A password file that cannot be used: the message names the file and line."""


# ---------------------------------------------------------------------------------------------
# Hashes

@dataclass(frozen=True, slots=True)
class Sha512Hash:
    """`$6$`: SHA-512(password + salt), mosquitto 1.x's only scheme."""

    salt: bytes
    digest: bytes

    def verify(self, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.sha512(password + self.salt).digest(), self.digest)


@dataclass(frozen=True, slots=True)
class Pbkdf2Hash:
    """`$7$`: PBKDF2-HMAC-SHA512 with `iterations` rounds, 64 bytes out (mosquitto 2.0)."""

    iterations: int
    salt: bytes
    digest: bytes

    def verify(self, password: bytes) -> bool:
        got = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations, HASH_LEN)
        return hmac.compare_digest(got, self.digest)


@dataclass(frozen=True, slots=True)
class Argon2idHash:
    """`$argon2id$...`: libargon2's encoded string, as mosquitto 2.1 stores it."""

    encoded: str

    def verify(self, password: bytes) -> bool:
        try:
            return _ARGON2.verify(self.encoded, password)
        except (VerificationError, InvalidHashError):
            return False


PasswordHash = Sha512Hash | Pbkdf2Hash | Argon2idHash


def _b64(field: str, what: str, lengths: Iterable[int]) -> bytes:
    try:
        raw = base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not valid base64") from None
    lengths = tuple(lengths)
    if len(raw) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise ValueError(f"the {what} is {len(raw)} bytes, mosquitto needs {want}")
    return raw


def decode_hash(text: str) -> PasswordHash:
    """The hash of a password file's second field; ValueError says what is wrong with it."""
    if text.startswith("$argon2id$"):
        try:
            argon2.extract_parameters(text)
        except InvalidHashError:
            raise ValueError("the $argon2id$ hash is not in libargon2's encoded form") from None
        return Argon2idHash(text)
    parts = text.split("$")
    if text.startswith("$6$"):
        if len(parts) != 4:
            raise ValueError("a $6$ hash is $6$<salt>$<hash>")
        return Sha512Hash(_b64(parts[2], "salt", (SALT_LEN, SALT_LEN_21)),
                          _b64(parts[3], "hash", (HASH_LEN,)))
    if text.startswith("$7$"):
        if len(parts) != 5:
            raise ValueError("a $7$ hash is $7$<iterations>$<salt>$<hash>")
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"the iteration count {parts[2]!r} is not a positive integer")
        return Pbkdf2Hash(int(parts[2]), _b64(parts[3], "salt", (SALT_LEN, SALT_LEN_21)),
                          _b64(parts[4], "hash", (HASH_LEN,)))
    if not text.startswith("$"):
        raise ValueError("the password is plain text: hash the file with `cymqtt passwd -U FILE`")
    raise ValueError(f"unknown hash type {text.split('$')[1]!r} (known: $6$, $7$, $argon2id$)")


def hash_password(password: str | bytes, scheme: str = "sha512-pbkdf2",
                  iterations: int = DEFAULT_ITERATIONS) -> str:
    """A new hash field for `password` (the part after `user:`) with a fresh random salt.

    `scheme` is "sha512-pbkdf2" ($7$, mosquitto 2.0's default, 12-byte salt), "sha512" ($6$,
    mosquitto 1.x) or "argon2id" (mosquitto 2.1's parameters; mosquitto 2.0 cannot read it).
    """
    pw = password.encode() if isinstance(password, str) else password
    if scheme == "argon2id":
        return _ARGON2.hash(pw)
    salt = os.urandom(SALT_LEN)
    b64 = base64.b64encode
    if scheme == "sha512-pbkdf2":
        if iterations < 1:
            raise ValueError("iterations must be > 0")
        digest = hashlib.pbkdf2_hmac("sha512", pw, salt, iterations, HASH_LEN)
        return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"
    if scheme == "sha512":
        digest = hashlib.sha512(pw + salt).digest()
        return f"$6${b64(salt).decode()}${b64(digest).decode()}"
    raise ValueError(f"unknown hash scheme {scheme!r} (known: {', '.join(SCHEMES)})")


# ---------------------------------------------------------------------------------------------
# Files

def _split_entry(line: str) -> tuple[str, str] | None:
    """(user, hash) of an entry line, trimmed as mosquitto trims them; None for a line mosquitto
    skips (a '#' comment in column 0, blank, or without ':')."""
    if line.startswith("#") or not line.strip() or ":" not in line:
        return None
    user, _, rest = line.partition(":")
    return user.strip(), rest.strip()


# A fixed entry to check unknown users against, so that a wrong user name costs as much time as
# a wrong password (mosquitto answers unknown users at once, which tells user names apart).
_DUMMY = Pbkdf2Hash(DEFAULT_ITERATIONS, b"\0" * SALT_LEN, b"\0" * HASH_LEN)


class PasswordFile:
    """The users of one mosquitto password file and their hashes (immutable once parsed)."""

    __slots__ = ("source", "_hashes", "warnings")

    def __init__(self, hashes: dict[str, PasswordHash], source: str = "<string>",
                 warnings: Sequence[str] = ()) -> None:
        self.source = source
        self._hashes = dict(hashes)
        self.warnings = tuple(warnings)

    @classmethod
    def load(cls, path: str | os.PathLike, *, strict: bool = True) -> PasswordFile:
        """Parse the file at `path`; PasswordFileError names the file and the cause."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PasswordFileError(f"{os.fspath(path)}: cannot read the password file: "
                                    f"{e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise PasswordFileError(f"{os.fspath(path)}:{line}: not UTF-8 text") from None
        return cls.parse(text, os.fspath(path), strict=strict)

    @classmethod
    def parse(cls, text: str, source: str = "<string>", *, strict: bool = True) -> PasswordFile:
        """Parse a password file's text.

        Blank lines and lines starting with '#' are skipped, as mosquitto skips them. With
        `strict` (the default) any other line that is not `user:hash` with a hash mosquitto can
        use raises PasswordFileError naming `source:line`. With `strict=False` such lines are
        skipped, as mosquitto 2.0 does ("Invalid password hash ..., removing entry"), and each
        skip is logged and kept in `warnings`.
        """
        hashes: dict[str, PasswordHash] = {}
        warnings: list[str] = []
        for lineno, line in enumerate(text.split("\n"), 1):
            try:
                entry = cls._parse_line(line, hashes)
            except ValueError as e:
                msg = f"{source}:{lineno}: {e}"
                if strict:
                    raise PasswordFileError(msg) from None
                log.warning("%s; line skipped", msg)
                warnings.append(msg)
                continue
            if entry is not None:
                hashes[entry[0]] = entry[1]
        return cls(hashes, source, warnings)

    @staticmethod
    def _parse_line(line: str, seen: dict[str, PasswordHash]) -> tuple[str, PasswordHash] | None:
        line = line.rstrip("\r")
        if line.startswith("#") or not line.strip():
            return None
        entry = _split_entry(line)
        if entry is None:
            raise ValueError("expected user:hash, found no ':'")
        user, field = entry
        if not user:
            raise ValueError("empty user name before ':'")
        if not field:
            raise ValueError(f"no password hash for user {user!r}")
        if ":" in field:
            raise ValueError(f"more than one ':' in the line of user {user!r}")
        if user in seen:
            raise ValueError(f"user {user!r} appears twice")
        try:
            return user, decode_hash(field)
        except ValueError as e:
            raise ValueError(f"user {user!r}: {e}") from None

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._hashes)

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"<PasswordFile {self.source!r} users={len(self._hashes)}>"

    def is_slow(self, username: str) -> bool:
        """Whether checking `username`'s password takes long enough (over about a
        millisecond: argon2id, PBKDF2 past SLOW_ITERATIONS) to be worth a worker thread;
        cheaper checks cost less inline than the handoff."""
        h = self._hashes.get(username)
        return isinstance(h, Argon2idHash) or (
            isinstance(h, Pbkdf2Hash) and h.iterations > SLOW_ITERATIONS)

    def verify(self, username: str, password: bytes | None) -> bool:
        """Whether `password` is `username`'s. Slow by design; thread-safe, no side effects.

        The digest comparison is constant-time, and an unknown user costs one PBKDF2 so that
        timing does not tell which user names exist.
        """
        h = self._hashes.get(username)
        if h is None or password is None:
            _DUMMY.verify(password or b"")
            return False
        return h.verify(bytes(password))


# ---------------------------------------------------------------------------------------------
# `cymqtt passwd`: mosquitto_passwd's command line, messages and exit codes

USAGE = """\
cymqtt passwd is a tool for managing password files for mosquitto and cymqtt.

Usage: cymqtt passwd [-H sha512 | -H sha512-pbkdf2 | -H argon2id] [-c | -D] passwordfile username
       cymqtt passwd [-H sha512 | -H sha512-pbkdf2 | -H argon2id] [-c] -b passwordfile username password
       cymqtt passwd -U passwordfile
 -b : run in batch mode to allow passing passwords on the command line.
 -c : create a new password file. This will overwrite existing files.
 -D : delete the username rather than adding/updating its password.
 -H : specify the hashing algorithm. Defaults to sha512-pbkdf2, which is recommended.
      Mosquitto 1.6 and earlier defaulted to sha512; argon2id needs mosquitto 2.1.
 -I : PBKDF2 iterations (default 101, mosquitto 2.0's).
 -U : update a plain text password file to use hashed passwords.
"""


class _Exit(Exception):
    """Leave main() with this exit code after printing `message` to stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Args:
    scheme: str = "sha512-pbkdf2"
    iterations: int = DEFAULT_ITERATIONS
    batch: bool = False
    create: bool = False
    delete: bool = False
    update: bool = False
    rest: Sequence[str] = ()


def _parse_options(argv: Sequence[str]) -> _Args:
    a = _Args()
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt in ("-H", "-I"):
            if i + 1 == len(argv):
                raise _Exit(1, f"Error: {opt} argument given but not enough other arguments.")
            value = argv[i + 1]
            i += 1
            if opt == "-H":
                if value not in SCHEMES:
                    raise _Exit(1, f"Error: Unknown hash type '{value}'")
                a.scheme = value
            else:
                if not value.isdigit() or int(value) < 1:
                    raise _Exit(1, "Error: Number of iterations must be > 0.")
                a.iterations = int(value)
        elif opt in ("-b", "-c", "-D", "-U"):
            setattr(a, {"-b": "batch", "-c": "create", "-D": "delete", "-U": "update"}[opt], True)
        else:
            break
        i += 1
    a.rest = argv[i:]
    for x, y, nx, ny in (("create", "delete", "c", "D"), ("create", "update", "c", "U"),
                         ("delete", "update", "D", "U"), ("delete", "batch", "b", "D")):
        if getattr(a, x) and getattr(a, y):
            raise _Exit(1, f"Error: -{nx} and -{ny} cannot be used together.")
    return a


def _positional(a: _Args) -> tuple[str, str | None, str | None]:
    """(file, user, password) from the positional arguments, as mosquitto_passwd counts them."""
    r, n = a.rest, len(a.rest)
    if a.create:
        need = 3 if a.batch else 2
        if n < need:
            what = "password file, username, or password" if a.batch else \
                "password file or username"
            raise _Exit(1, f"Error: -c argument given but {what} missing.")
        return r[0], r[1], r[2] if a.batch else None
    if a.delete:
        if n < 2:
            raise _Exit(1, "Error: -D argument given but password file or username missing.")
        return r[0], r[1], None
    if a.update:
        if n != 1:
            raise _Exit(1, "Error: -U argument given but password file missing.")
        return r[0], None, None
    if a.batch and n == 3:
        return r[0], r[1], r[2]
    if not a.batch and n == 2:
        return r[0], r[1], None
    raise _Exit(1, USAGE)


def _check_username(user: str | None) -> None:
    if user is None:
        return
    if len(user.encode()) > 65535:
        raise _Exit(1, "Error: Username must be less than 65536 characters long.")
    if any(ord(c) < 32 or ord(c) == 127 for c in user):
        raise _Exit(1, "Error: Username must not contain control characters.")
    if ":" in user:
        raise _Exit(1, "Error: Username must not contain the ':' character.")


def _prompt_password() -> str:
    """Ask twice on the terminal, as mosquitto_passwd's get_password() does."""
    try:
        first = getpass.getpass("Password: ")
        if not first:
            raise _Exit(1, "Error: Empty password.")
        second = getpass.getpass("Reenter password: ")
    except (EOFError, KeyboardInterrupt):
        raise _Exit(1, "") from None
    if first != second:
        raise _Exit(2, "Error: Passwords do not match.")
    return first


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as e:
        raise _Exit(1, f"Error: Unable to open password file {path}. {e.strerror}.") from None
    except UnicodeDecodeError:
        raise _Exit(1, f"Error: Password file {path} is not UTF-8 text.") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        entry = _split_entry(line.rstrip("\r"))
        blank = line.startswith("#") or not line.strip()
        if not blank and (entry is None or not entry[0] or not entry[1]):
            raise _Exit(1, f"Error: Corrupt password file at line {n}.")
    return lines


def _write_atomic(path: str, lines: Iterable[str], mode: int) -> None:
    """Write `lines` to a temporary file beside `path`, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            for line in lines:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _is_hashed(field: str) -> bool:
    return field.startswith(("$6$", "$7$", "$argon2id$"))


def _run(a: _Args) -> int:
    path, user, password = _positional(a)
    _check_username(user)
    if password is not None and len(password.encode()) > 65535:
        raise _Exit(1, "Error: Password must be less than 65536 characters long.")
    path = os.path.realpath(path)       # rewrite the file a symlink points to, not the link

    def line_for(name: str, pw: str) -> str:
        return f"{name}:{hash_password(pw, a.scheme, a.iterations)}"

    if a.create:
        if password is None:
            password = _prompt_password()
        try:
            _write_atomic(path, [line_for(user, password)], 0o600)
        except OSError as e:
            raise _Exit(1, f"Error: Unable to open file {path} for writing. {e.strerror}.") \
                from None
        return 0
    lines = _read_lines(path)
    mode = os.stat(path).st_mode & 0o7777
    if a.delete:
        kept = [ln for ln in lines if (_split_entry(ln.rstrip("\r")) or ("",))[0] != user]
        if len(kept) == len(lines):
            raise _Exit(1, f"Warning: User {user} not found in password file.")
        out = kept
    elif a.update:
        out = []
        for ln in lines:
            entry = _split_entry(ln.rstrip("\r"))
            # Unlike mosquitto_passwd, an entry already hashed is kept, not hashed again.
            out.append(ln if entry is None or _is_hashed(entry[1])
                       else line_for(entry[0], entry[1]))
    else:
        if password is None:
            password = _prompt_password()
        out, found = [], False
        for ln in lines:
            entry = _split_entry(ln.rstrip("\r"))
            if entry is not None and entry[0] == user:
                ln, found = line_for(user, password), True
            out.append(ln)
        if not found:
            out.append(line_for(user, password))
    try:
        _write_atomic(path, out, mode)
    except OSError as e:
        raise _Exit(1, f"Error: Unable to write password file {path}. {e.strerror}.") from None
    return 0


def main(argv: Sequence[str]) -> int:
    """`cymqtt passwd ARGS`: mosquitto_passwd's options, messages and exit codes."""
    if not argv:
        sys.stdout.write(USAGE)
        return 1
    try:
        return _run(_parse_options(list(argv)))
    except _Exit as e:
        if e.message:
            stream = sys.stdout if e.message is USAGE else sys.stderr
            print(e.message, file=stream, end="" if e.message is USAGE else "\n")
        return e.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
