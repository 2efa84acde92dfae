"""mosquitto.conf read natively, so that migrating is `cymqtt -c /etc/mosquitto/mosquitto.conf`.

The grammar of mosquitto.conf(5): one ``key value`` per line (the value is the rest of the
line), ``#`` at the start of a line makes it a comment, blank lines are ignored; ``listener PORT
[HOST]`` starts a listener section whose listener keys (certfile, protocol, max_connections, ...)
apply to it, while global keys may appear anywhere; ``include_dir DIR`` reads ``DIR/*.conf`` in
alphabetical order as if they were written there; a key given twice keeps the last value, except
``log_dest`` and ``log_type``, which add up; ``connection NAME`` starts a bridge.

`TRANSLATION` maps each mosquitto key to a cymqtt `Config` key and a value conversion. An entry
is supported when its cymqtt key is a field of `Config` *at run time*, so an entry whose feature
lands later starts working without a change here; every unsupported or unknown key gets one
warning naming it and its line, and is otherwise ignored.

mosquitto 2.0's defaults are mirrored: with no listener (and no ``port``) it listens on
localhost only (cymqtt's default host, 127.0.0.1); a ``listener`` without a host listens on every
interface; and once a listener is configured ``allow_anonymous`` defaults to false.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from typing import Any, Callable

from cymqtt import config as _config
from cymqtt.config import Config, ConfigError, config_from_dict, load_config

__all__ = ["TRANSLATION", "LISTENER_KEYS", "is_mosquitto_conf", "load", "translate"]


# -- value conversions: mosquitto's spelling -> cymqtt's value ---------------------------------

def _bool(v: str) -> bool:
    if v in ("true", "false"):
        return v == "true"
    raise ValueError("must be true or false")


def _int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ValueError("must be a number") from None


def _or(unlimited: Any, convert: Callable[[str], Any] = _int) -> Callable[[str], Any]:
    # mosquitto's "0 (or -1) means no limit" -> cymqtt's largest value (or None: its default).
    def conv(v: str) -> Any:
        n = convert(v)
        return unlimited if n <= 0 else n
    return conv


_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}


def _duration(v: str) -> int:
    # persistent_client_expiration: "<number><h|d|w|m|y>" (mosquitto.conf(5)).
    m = re.fullmatch(r"(\d+)([hdwmy])", v)
    if not m:
        raise ValueError("must be a number followed by h, d, w, m or y (e.g. 2d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


# log_type (repeated, adding up) -> the most verbose cymqtt log level among those given.
_LOG_TYPES = {"debug": 0, "all": 0, "information": 1, "notice": 1, "subscribe": 1,
              "unsubscribe": 1, "websockets": 1, "warning": 2, "error": 3, "none": 4}
_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_type(values: list[str]) -> str:
    for v in values:
        if v not in _LOG_TYPES:
            raise ValueError("must be one of " + ", ".join(_LOG_TYPES))
    return _LEVELS[min(_LOG_TYPES[v] for v in values)]


SKIP = object()   # a conversion's "leave cymqtt's default" (mosquitto's default spelled out)


def _log_dest(values: list[str]):
    # log_dest (repeated): cymqtt has one destination, the last one given that it has
    # ("file PATH" -> "file:PATH"); only `topic`/`dlt` given: cymqtt's default.
    for v in reversed(values):
        kind, _, arg = v.partition(" ")
        if kind == "file":
            if not arg.strip():
                raise ValueError("file needs a path")
            return "file:" + arg.strip()
        if kind in ("stderr", "stdout", "syslog", "none"):
            return kind
        if kind not in ("topic", "dlt"):
            raise ValueError("must be stderr, stdout, syslog, topic, dlt, none or file PATH")
    return SKIP

# mosquitto key -> (cymqtt Config key, conversion of the value). Supported when the cymqtt key
# is a Config field at run time. log_dest and log_type get every value of theirs, as a list.
TRANSLATION: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "allow_anonymous": ("allow_anonymous", _bool),
    "allow_zero_length_clientid": ("allow_zero_length_client_id", _bool),
    "max_inflight_messages": ("max_inflight", _or(65535)),
    "max_queued_messages": ("max_queued", _or(2 ** 31 - 1)),
    "queue_qos0_messages": ("queue_qos0", _bool),
    "retain_available": ("retain_available", _bool),
    "max_qos": ("maximum_qos", _int),
    "max_topic_alias": ("topic_alias_maximum", _int),
    "max_packet_size": ("max_packet_size", _or(268435460)),
    "max_keepalive": ("max_keepalive", _int),
    "max_connections": ("max_connections", _or(SKIP)),
    "sys_interval": ("sys_interval", _float),
    "persistent_client_expiration": ("session_expiry_default", _duration),
    "password_file": ("password_file", str),
    "acl_file": ("acl_file", str),
    "persistence": ("persistence", _bool),
    "persistence_location": ("data_dir", str),
    "persistence_file": ("persistence_file", str),
    # mosquitto snapshots every autosave_interval seconds; cymqtt commits every acknowledged
    # message before acknowledging it, so there is no interval to set (any value is accepted).
    "autosave_interval": ("persistence", lambda value: (_int(value), SKIP)[1]),
    "connection_messages": ("connection_messages", _bool),
    "log_type": ("log_level", _log_type),
    "log_dest": ("log_dest", lambda values: _log_dest(values)),
    "pid_file": ("pid_file", str),
    "user": ("user", str),
}
_REPEATED = ("log_dest", "log_type")

# Keys of a listener section, as the entries of Config.listeners name them (mosquitto's names).
LISTENER_KEYS: dict[str, Callable[[str], Any]] = {
    "port": _int, "host": str, "protocol": str, "certfile": str, "keyfile": str, "cafile": str,
    "require_certificate": _bool, "use_identity_as_username": _bool,
    "max_connections": _or(SKIP), "ciphers": str, "tls_version": str,
}
# Listener keys of mosquitto that cymqtt has no equivalent for (warned about like unknown keys).
_OTHER_LISTENER_KEYS = (
    "bind_interface", "capath", "ciphers_tls1.3", "crlfile", "dhparamfile", "http_dir",
    "mount_point", "psk_hint", "socket_domain", "tls_engine", "tls_engine_kpass_sha1",
    "tls_keyform", "use_subject_as_username", "use_username_as_clientid")


@dataclasses.dataclass
class _Listener:
    line: str                       # where it was declared ("file:line")
    values: dict[str, Any]


@dataclasses.dataclass
class _State:
    config_keys: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)
    repeated: dict[str, tuple[str, list[str]]] = dataclasses.field(default_factory=dict)
    default: _Listener = dataclasses.field(default_factory=lambda: _Listener("", {}))
    listeners: list[_Listener] = dataclasses.field(default_factory=list)
    current: _Listener | None = None          # the listener section we are in
    bridge: str | None = None                 # the bridge section we are in, by name
    warnings: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    warned: set[str] = dataclasses.field(default_factory=set)

    def warn(self, where: str, key: str, why: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.warnings.append(f"{where}: '{key}' {why}; ignored")


def is_mosquitto_conf(path: str, text: str) -> bool:
    """A file to read as mosquitto.conf: one that is not TOML with keys in it (mosquitto's
    `key value` lines never are) and whose name ends in .conf or whose first line that is not a
    comment reads `key value` (no `=`, no `[table]`)."""
    try:
        data = tomllib.loads(text)
        return path.endswith(".conf") and not data
    except tomllib.TOMLDecodeError:
        if path.endswith(".conf"):
            return True
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return re.fullmatch(r"[A-Za-z_][\w.]*(\s+[^=\s].*)?", line) is not None
    return False


def _parse(path: str, st: _State, depth: int = 0) -> None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        st.errors.append(f"cannot read config file {path}: {exc.strerror}")
        return
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.strip(), value.strip()
        where = f"{path}:{n}"
        if key == "include_dir":
            _include(value, where, st, depth)
        elif key == "connection":
            st.bridge, st.current = value, None
            st.warn(where, f"connection {value}", "(a bridge) is not supported: the bridge and "
                    "its settings are")
        elif key == "listener":
            st.bridge = None
            port, _, host = value.partition(" ")
            try:
                values: dict[str, Any] = {"port": _int(port)}
            except ValueError as exc:
                st.errors.append(f"{where}: listener port {exc}")
                continue
            values["host"] = host.strip() or "0.0.0.0"    # mosquitto: every interface
            st.current = _Listener(where, values)
            st.listeners.append(st.current)
        elif st.bridge is not None and key not in TRANSLATION:
            continue                      # a bridge's own setting: covered by its warning
        elif key in ("port", "bind_address"):
            # mosquitto 2: the default listener's port and address (deprecated there).
            _set_listener(st.default, "port" if key == "port" else "host", value, where, st)
            st.default.line = st.default.line or where
        elif key in LISTENER_KEYS and key not in TRANSLATION or key in _OTHER_LISTENER_KEYS:
            if st.current is None:
                st.default.line = st.default.line or where
            _set_listener(st.current or st.default, key, value, where, st)
        elif key in TRANSLATION:
            if st.current is not None and key == "max_connections":
                _set_listener(st.current, key, value, where, st)
            elif key in _REPEATED:
                st.repeated.setdefault(key, (where, []))[1].append(value)
            else:
                st.config_keys[key] = (where, value)
        elif key == "per_listener_settings":
            try:
                if _bool(value) and len(st.listeners) + bool(st.default.values) > 1:
                    st.warn(where, key, "is not supported (settings apply to every listener)")
            except ValueError as exc:
                st.errors.append(f"{where}: '{key}' {exc}")
        else:
            st.warn(where, key, "is not a mosquitto.conf key cymqtt knows")


def _include(directory: str, where: str, st: _State, depth: int) -> None:
    if depth > 8:
        st.errors.append(f"{where}: include_dir nested too deep")
        return
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".conf"))
    except OSError as exc:
        st.errors.append(f"{where}: cannot read include_dir {directory}: {exc.strerror}")
        return
    for name in names:
        _parse(os.path.join(directory, name), st, depth + 1)


def _set_listener(lst: _Listener, key: str, value: str, where: str, st: _State) -> None:
    convert = LISTENER_KEYS.get(key)
    if convert is None:
        st.warn(where, key, "is not supported")
        return
    converted = _convert(convert, value, where, key, st)
    if converted is not SKIP:
        lst.values[key] = converted


def _convert(convert: Callable[[Any], Any], value: Any, where: str, key: str, st: _State):
    # The value in cymqtt's terms; SKIP (and one error line) when mosquitto would refuse it.
    try:
        return convert(value)
    except ValueError as exc:
        st.errors.append(f"{where}: '{key}' {exc}")
        return SKIP


def _listener_tables(listeners: list[_Listener], st: _State) -> list[dict[str, Any]]:
    # The `listeners` tables, with only the keys (and protocols) cymqtt's listeners have at
    # run time; a listener of a protocol cymqtt does not speak is left out with a warning.
    lc = getattr(_config, "ListenerConfig", None)
    keys = {f.name for f in dataclasses.fields(lc)} if lc is not None else set(LISTENER_KEYS)
    protocols = getattr(_config, "LISTENER_PROTOCOLS", ("mqtt",))
    tables = []
    for lst in listeners:
        protocol = lst.values.get("protocol", "mqtt")
        if protocol not in protocols:
            st.warn(lst.line, f"listener {lst.values['port']}", f"(protocol {protocol}) is not "
                    "supported by cymqtt yet: the listener is left out")
            continue
        for key in [k for k in lst.values if k not in keys]:
            st.warn(lst.line, key, "(listener setting) is not supported by cymqtt yet")
            del lst.values[key]
        tables.append(lst.values)
    return tables


def translate(path: str) -> tuple[dict[str, Any], list[str]]:
    """The cymqtt config dict for the mosquitto.conf at `path`, and the warning lines (one per
    unsupported or unknown key, naming it and where it is). Raises ConfigError with every value
    it cannot convert (one line each) and for unreadable files."""
    st = _State()
    _parse(path, st)
    fields = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    items = [(k, w, v) for k, (w, v) in st.config_keys.items()]
    items += [(k, w, v) for k, (w, v) in st.repeated.items()]
    for key, where, value in items:
        target, convert = TRANSLATION[key]
        if target not in fields:
            st.warn(where, key, "is not supported by cymqtt yet")
            continue
        converted = _convert(convert, value, where, key, st)
        if converted is not SKIP:
            out[target] = converted
    listeners = ([st.default] if st.default.values else []) + st.listeners
    for lst in listeners:
        if "host" not in lst.values:
            lst.values["host"] = "0.0.0.0"       # `port` without bind_address: every interface
        lst.values.setdefault("port", 1883)
    if listeners:
        # mosquitto 2.0: with a listener configured, anonymous clients need allow_anonymous.
        out.setdefault("allow_anonymous", False)
    if "listeners" in fields and listeners:
        out["listeners"] = _listener_tables(listeners, st)
    elif listeners:
        # One listener until Config has `listeners`: the first one becomes host and port.
        first, rest = listeners[0], listeners[1:]
        for key, value in first.values.items():
            if key in ("port", "host") or key in fields:
                out[key] = value
            elif not (key == "protocol" and value == "mqtt"):
                st.warn(first.line, key, "(listener setting) is not supported by cymqtt yet")
        for lst in rest:
            st.warn(lst.line, f"listener {lst.values['port']}",
                    "is not supported (cymqtt listens on one port for now)")
    if st.errors:
        raise ConfigError("\n".join(sorted(st.errors, key=_by_line)))
    return out, sorted(st.warnings, key=_by_line)


def _by_line(line: str) -> tuple[str, int]:
    # "file:12: ..." -> ("file", 12): messages in the order of the lines they are about.
    where = line.partition(": ")[0]
    path, _, n = where.rpartition(":")
    return (path, int(n)) if n.isdigit() else (where, 0)


def load(path: str) -> tuple[Config, list[str]]:
    """A Config from a TOML file or a mosquitto.conf (see `is_mosquitto_conf`), and the warning
    lines of the mosquitto.conf translation. Raises ConfigError (every error, one line each)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return load_config(path), []          # its error names the file and the cause
    if not is_mosquitto_conf(path, text):
        return load_config(path), []
    data, warnings = translate(path)
    try:
        return config_from_dict(data), warnings
    except ConfigError as exc:
        raise ConfigError("\n".join(f"{path} (as mosquitto.conf): {line}"
                                    for line in exc.errors)) from None
