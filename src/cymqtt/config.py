"""Broker configuration: one frozen dataclass, loadable from a TOML file.

Knows nothing of sockets. Every key of the TOML file is a field of `Config`, at the top level;
unknown keys and wrong types are errors that name the key and what it takes.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ClusterConfig", "Config", "ConfigError", "HttpConfig", "ListenerConfig",
           "config_from_dict", "load_config"]

SHARED_STRATEGIES = ("round_robin", "random", "hash_clientid", "hash_topic", "sticky")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LISTENER_PROTOCOLS = ("mqtt", "websockets")    # MQTT over TCP, over WebSocket
TLS_VERSIONS = ("tlsv1.2", "tlsv1.3")
DEFAULT_DATA_DIR = "cymqtt-data"


class ConfigError(ValueError):
    """A configuration a user wrote that cannot be used; the message says which key and why,
    one line per error (`errors`: the lines), every error found at once."""

    @property
    def errors(self) -> list[str]:
        return str(self).splitlines()


@dataclass(frozen=True)
class ListenerConfig:
    """One `[[listeners]]` table, with mosquitto's key names. `protocol` is "mqtt" (MQTT over
    TCP) or "websockets" (MQTT over WebSocket, any request path). TLS when `certfile` and
    `keyfile` are both set (then "mqtts" or "wss"); `cafile` checks client certificates
    (required with `require_certificate`); `use_identity_as_username` makes the client
    certificate's CN the user name."""

    port: int
    host: str = "127.0.0.1"
    protocol: str = "mqtt"
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False
    ciphers: str | None = None            # OpenSSL cipher list (TLS 1.2 and below)
    tls_version: str | None = None        # minimum: "tlsv1.2" or "tlsv1.3"
    max_connections: int = -1             # clients connected at once; -1 = no limit

    @property
    def tls(self) -> bool:
        return self.certfile is not None and self.keyfile is not None

    def check(self, where: str) -> list[str]:
        """What is wrong with it, one line each (empty when nothing)."""
        errors = []
        if not 0 <= self.port <= 65535:
            errors.append(f"{where}: 'port' must be a port number 0..65535, not {self.port!r}")
        if self.protocol not in LISTENER_PROTOCOLS:
            errors.append(f"{where}: 'protocol' must be one of {', '.join(LISTENER_PROTOCOLS)},"
                          f" not {self.protocol!r}")
        if (self.certfile is None) != (self.keyfile is None):
            errors.append(f"{where}: TLS needs both 'certfile' and 'keyfile'")
        if not self.tls and (self.cafile or self.require_certificate or self.ciphers
                             or self.tls_version or self.use_identity_as_username):
            errors.append(f"{where}: 'cafile', 'require_certificate', "
                          "'use_identity_as_username', 'ciphers' and 'tls_version' need TLS "
                          "('certfile' and 'keyfile')")
        if (self.require_certificate or self.use_identity_as_username) and not self.cafile:
            errors.append(f"{where}: client certificates need 'cafile' (the CA that signs them)")
        if self.tls_version is not None and self.tls_version not in TLS_VERSIONS:
            errors.append(f"{where}: 'tls_version' must be one of {', '.join(TLS_VERSIONS)}, "
                          f"not {self.tls_version!r}")
        if self.max_connections < -1:
            errors.append(f"{where}: 'max_connections' must be -1 (no limit) or >= 0")
        return errors


_LISTENER_TYPES = {f.name: f.type for f in fields(ListenerConfig)}


def listener_from_dict(data: Any, where: str) -> ListenerConfig:
    """A ListenerConfig from one [[listeners]] table; ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, not {type(data).__name__}")
    errors = []
    for key, value in data.items():
        t = _LISTENER_TYPES.get(key)
        if t is None:
            close = difflib.get_close_matches(key, _LISTENER_TYPES, n=1)
            errors.append(f"{where}: unknown key '{key}'" + (
                f"; did you mean '{close[0]}'?" if close else
                f" (known: {', '.join(_LISTENER_TYPES)})"))
        elif not _is_type(value, str(t)):
            errors.append(f"{where}: '{key}' must be {str(t).split(' ')[0]}, not {value!r}")
    if "port" not in data:
        errors.append(f"{where}: 'port' is required")
    if errors:
        raise ConfigError("\n".join(errors))
    listener = ListenerConfig(**data)
    errors = listener.check(where)
    if errors:
        raise ConfigError("\n".join(errors))
    return listener


@dataclass(frozen=True)
class HttpConfig:
    """The `[http]` table: the HTTP listener serving the REST API (`/api/v1/`), Prometheus
    metrics (`/metrics`) and the dashboard (`/`). Off unless configured. `token`, when set, is
    required as ``Authorization: Bearer <token>`` on every `/api/` request (mosquitto has no
    equivalent keys)."""

    port: int
    host: str = "127.0.0.1"
    token: str | None = field(default=None, repr=False)

    def check(self, where: str = "[http]") -> list[str]:
        """What is wrong with it, one line each (empty when nothing)."""
        errors = []
        if not 0 <= self.port <= 65535:
            errors.append(f"{where}: 'port' must be a port number 0..65535, not {self.port!r}")
        if not self.host:
            errors.append(f"{where}: 'host' must be an address to listen on, not empty")
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            errors.append(f"{where}: 'token' must be a non-empty string without surrounding "
                          "spaces (leave it out for no token)")
        return errors


@dataclass(frozen=True)
class ClusterConfig:
    """The `[cluster]` table: this broker is one node of a cluster whose nodes meet on a NATS
    server (or a NATS cluster). `nats` is one URL or a list ("nats://host:4222",
    "tls://host:4222"); `node` names this node (default: host name and process id), unique
    in the cluster; `name` keeps two clusters sharing one NATS apart (it prefixes every
    subject and bucket). Credentials and TLS are NATS's own: a `token`, a `user` and
    `password`, a `credentials` file (.creds, JWT and NKey), and `tls_ca_file` /
    `tls_cert_file` / `tls_key_file` for a TLS connection (and a client certificate)."""

    nats: tuple[str, ...]
    node: str | None = None
    name: str = "cymqtt"
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    credentials: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # How long a CONNECT waits for the other nodes to give up its client id, and how long a
    # node may stay silent before the others drop its routes (seconds).
    claim_timeout: float = 2.0
    node_timeout: float = 3.0

    def check(self, where: str = "[cluster]") -> list[str]:
        """What is wrong with it, one line each (empty when nothing)."""
        errors = []
        if not self.nats or not all(isinstance(u, str) and u.strip() for u in self.nats):
            errors.append(f"{where}: 'nats' must be a NATS server URL or a list of them "
                          "(\"nats://127.0.0.1:4222\")")
        for key in ("node", "name"):
            value = getattr(self, key)
            if value is not None and (not value or any(c in value for c in " .*>\t\r\n")):
                errors.append(f"{where}: '{key}' must be a name without spaces, '.', '*' or "
                              f"'>', not {value!r}")
        if (self.user is None) != (self.password is None):
            errors.append(f"{where}: 'user' and 'password' go together")
        if self.tls_cert_file is not None and self.tls_key_file is None:
            errors.append(f"{where}: 'tls_cert_file' needs 'tls_key_file'")
        for key in ("claim_timeout", "node_timeout"):
            if not getattr(self, key) > 0:
                errors.append(f"{where}: '{key}' must be > 0, not {getattr(self, key)!r}")
        return errors


def _table_from_dict(cls: type, data: Any, key: str, required: tuple[str, ...],
                     convert: dict[str, Any] | None = None) -> Any:
    """A config dataclass (HttpConfig, ClusterConfig) from its TOML table, every bad key
    named at once; `convert` turns a key's TOML value into the field's value first."""
    where = f"[{key}]"
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{key}' must be a table ({where}), not "
                          f"{type(data).__name__}")
    types = {f.name: str(f.type) for f in fields(cls)}
    values = {}
    errors = []
    for name, value in data.items():
        t = types.get(name)
        if t is None:
            close = difflib.get_close_matches(name, types, n=1)
            errors.append(f"{where}: unknown key '{name}'" + (
                f"; did you mean '{close[0]}'?" if close else
                f" (known: {', '.join(types)})"))
            continue
        if convert and name in convert:
            value = convert[name](value)
        if not _is_type(value, t):
            what = "a string or a list of strings" if t.startswith("tuple") else t.split(" ")[0]
            errors.append(f"{where}: '{name}' must be {what}, not {value!r}")
        values[name] = value
    errors.extend(f"{where}: '{name}' is required" for name in required if name not in data)
    if not errors:
        errors = cls(**values).check(where)
    if errors:
        raise ConfigError("\n".join(errors))
    return cls(**values)


def http_from_dict(data: Any, where: str = "[http]") -> HttpConfig:
    """An HttpConfig from the [http] table; ConfigError naming every bad key at once."""
    return _table_from_dict(HttpConfig, data, "http", ("port",))


def _urls(value: Any) -> Any:
    # `nats` takes one URL or a list of them.
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return value


def cluster_from_dict(data: Any) -> ClusterConfig:
    """A ClusterConfig from the [cluster] table; ConfigError naming every bad key at once."""
    return _table_from_dict(ClusterConfig, data, "cluster", ("nats",), {"nats": _urls})


def _is_type(value: Any, type_name: str) -> bool:
    if type_name.startswith("tuple"):
        return isinstance(value, tuple)
    if type_name.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "bool":
        return isinstance(value, bool)
    return isinstance(value, str)


@dataclass(frozen=True)
class Config:
    """Everything the broker can be told. All fields have the defaults `cymqtt` runs with.

    :param host: address to listen on. 127.0.0.1 by default (as mosquitto 2 without a config);
        use "0.0.0.0" to accept connections from other machines.
    :param port: TCP port; 0 picks a free one (``Broker.port`` tells which). With
        `listeners`, the top-level host/port is a listener only when `port` is set too (as in
        mosquitto, where `listener` lines replace the default one): None means none.
    :param listeners: further listeners (TLS, mTLS, other ports), `[[listeners]]` tables.
    :param http: the HTTP API, metrics and dashboard listener (`[http]`), or None for none.
    """

    host: str = "127.0.0.1"
    port: int | None = 1883
    listeners: tuple[ListenerConfig, ...] = ()
    # Security limit: a packet larger than this is refused (0x95) before its body is buffered.
    max_packet_size: int = 1024 * 1024
    # Outbound flow control per session (narrowed by the client's MQTT 5 receive maximum).
    max_inflight: int = 32
    max_queued: int = 1000
    queue_qos0: bool = False
    # Inbound: QoS 2 messages a client may have awaiting PUBREL (MQTT 5 receive maximum).
    receive_maximum: int = 32
    # Seconds a new socket may take to send CONNECT before it is closed.
    connect_timeout: float = 10.0
    # Keep alive the broker imposes (MQTT 5 server keep alive); None keeps the client's.
    server_keep_alive: int | None = None
    # Session expiry for MQTT 3.x persistent sessions (clean session 0), seconds; None = never.
    session_expiry_default: int | None = 7200
    # Upper bound for MQTT 5 session expiry intervals a client asks for; None = no bound.
    max_session_expiry: int | None = None
    # MQTT 3.x only: re-send an unacknowledged QoS 1/2 message on a live connection after this
    # many seconds (EMQX's retry_interval); 0 = only on reconnect. MQTT 5 forbids it [MQTT-4.4.0-1].
    retry_interval: float = 30.0
    # A connection whose socket stays unwritable this long (seconds) is closed.
    write_timeout: float = 30.0
    # Back-pressure: while a subscriber's socket is full but draining, the publishers feeding it
    # are not read (TCP slows them down). One that makes no progress for this many seconds is
    # stalled: it stops slowing anyone, and its QoS 0 messages are dropped (counted).
    stall_timeout: float = 1.0
    # Empty client ids get an assigned one (MQTT 3.1.1 only with clean session 1).
    allow_zero_length_client_id: bool = True
    # $SYS/broker/... publish interval in seconds; 0 disables.
    sys_interval: float = 10.0
    retain_available: bool = True
    wildcard_subscription_available: bool = True
    subscription_identifier_available: bool = True
    shared_subscription_available: bool = True
    shared_subscription_strategy: str = "round_robin"
    maximum_qos: int = 2
    # Inbound topic aliases a client may use (MQTT 5 topic alias maximum); 0 disables. Each
    # holds a topic of up to 64 KiB, so this bounds what one client can make the broker keep.
    topic_alias_maximum: int = 64
    # MQTT 5 response information sent when a client requests it; "{client_id}" is replaced.
    response_information: str | None = None
    # Refuse MQTT 5 PUBLISHes whose payload format indicator says UTF-8 but whose payload is not
    # (QoS 1/2: PUBACK/PUBREC 0x99; QoS 0: dropped).
    validate_utf8_payload: bool = True
    # Server redirection: send clients elsewhere (MQTT 5 CONNACK 0x9C, or 0x9D when permanent,
    # with this server reference; MQTT 3.x: CONNACK 3, server unavailable).
    redirect_to: str | None = None
    redirect_permanent: bool = False
    # Users for password authentication (CONNECT user name/password) and the built-in
    # SCRAM-SHA-256 enhanced authentication: user name -> password.
    users: dict[str, str] = field(default_factory=dict, repr=False)
    # With users configured, whether clients without a user name may connect.
    allow_anonymous: bool = True
    # mosquitto_passwd files ($6$, $7$, $argon2id$) and mosquitto acl_files; SIGHUP reloads them.
    password_file: str | None = None
    acl_file: str | None = None
    # Limits against abuse. Clients connected at once (-1: no limit; per listener too);
    # PUBLISH packets per second per client (token bucket, a second's worth of burst; 0: no
    # limit); subscriptions per client (0: no limit); topic name/filter length and levels.
    max_connections: int = -1
    max_publish_rate: float = 0.0
    max_subscriptions_per_client: int = 0
    max_topic_length: int = 65535
    max_topic_levels: int = 128
    log_level: str = "info"
    # -- operations (as mosquitto's keys of the same names) --
    # Keep alive cap: a client asking for more, or for 0, is told this (MQTT 5 server keep
    # alive); an MQTT 3.x client asking for more, or for 0, is refused (CONNACK 2), as
    # mosquitto >= 2.0.12 does. 65535 (the default) or 0: no cap.
    max_keepalive: int = 65535
    # Log each client's connect ("New client connected from ...") and disconnect, with why.
    connection_messages: bool = True
    # Where logs go: "stderr", "stdout", "file:/path/to/file", "syslog" or "none".
    log_dest: str = "stderr"
    # Written with the broker's pid at start, removed at stop (the `cymqtt` command).
    pid_file: str | None = None
    # -- persistence --
    # Keep retained messages, persistent sessions (subscriptions, queued and unacknowledged
    # messages, QoS 2 state) in data_dir/cymqtt.db (SQLite) across restarts. None: on for the
    # `cymqtt` command; off for Broker() unless data_dir is given.
    persistence: bool | None = None
    data_dir: str | None = None           # default "cymqtt-data" (in the working directory)
    # "normal": a committed message survives the broker being killed (kill -9, a crash);
    # "full": also a power loss (one fsync per group commit).
    store_sync: str = "normal"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The REST API, Prometheus /metrics and the dashboard ([http]); None: not served.
    http: HttpConfig | None = None
    # This broker as one node of a cluster on NATS ([cluster]); None: a single node.
    cluster: ClusterConfig | None = None
    # Worker processes of the `cymqtt` command, sharing the listeners (SO_REUSEPORT) and meeting
    # on NATS ("auto": one per core, os.cpu_count()); 1: one process. A Broker whose config says
    # more than 1 is one of them: its listeners share their ports with the others.
    workers: int = 1

    def __post_init__(self) -> None:
        errors: list[str] = []

        def need(cond: bool, key: str, what: str) -> None:
            if not cond:
                errors.append(f"config key '{key}' must be {what}, not {getattr(self, key)!r}")

        need(self.port is None or 0 <= self.port <= 65535, "port", "a port number 0..65535")
        need(self.port is not None or bool(self.listeners), "port",
             "set when there are no [[listeners]]")
        need(2 <= self.max_packet_size <= 268435460, "max_packet_size", "2 .. 268435460")
        need(1 <= self.max_inflight <= 65535, "max_inflight", "1 .. 65535")
        need(0 <= self.max_queued, "max_queued", ">= 0")
        need(1 <= self.receive_maximum <= 65535, "receive_maximum", "1 .. 65535")
        need(self.connect_timeout > 0, "connect_timeout", "> 0")
        need(self.server_keep_alive is None or 0 <= self.server_keep_alive <= 65535,
             "server_keep_alive", "0 .. 65535 or absent")
        need(self.session_expiry_default is None or self.session_expiry_default >= 0,
             "session_expiry_default", ">= 0 or absent")
        need(self.max_session_expiry is None or self.max_session_expiry >= 0,
             "max_session_expiry", ">= 0 or absent")
        need(self.write_timeout > 0, "write_timeout", "> 0")
        need(self.stall_timeout > 0, "stall_timeout", "> 0")
        need(self.retry_interval >= 0, "retry_interval", ">= 0")
        need(self.sys_interval >= 0, "sys_interval", ">= 0")
        need(self.shared_subscription_strategy in SHARED_STRATEGIES,
             "shared_subscription_strategy", "one of " + ", ".join(SHARED_STRATEGIES))
        need(self.maximum_qos in (0, 1, 2), "maximum_qos", "0, 1 or 2")
        need(0 <= self.topic_alias_maximum <= 65535, "topic_alias_maximum", "0 .. 65535")
        need(all(isinstance(k, str) and isinstance(v, str) for k, v in self.users.items()),
             "users", "a table of user name = \"password\" strings")
        need(self.max_connections >= -1, "max_connections", "-1 (no limit) or >= 0")
        need(self.max_publish_rate >= 0, "max_publish_rate", ">= 0 (0: no limit)")
        need(self.max_subscriptions_per_client >= 0, "max_subscriptions_per_client",
             ">= 0 (0: no limit)")
        need(1 <= self.max_topic_length <= 65535, "max_topic_length", "1 .. 65535")
        need(1 <= self.max_topic_levels, "max_topic_levels", ">= 1")
        need(self.log_level.lower() in LOG_LEVELS, "log_level",
             "debug, info, warning, error or critical")
        need(0 <= self.max_keepalive <= 65535, "max_keepalive", "0 .. 65535")
        need(self.log_dest in ("stderr", "stdout", "syslog", "none") or (
            self.log_dest.startswith("file:") and len(self.log_dest) > 5), "log_dest",
            '"stderr", "stdout", "syslog", "none" or "file:/path"')
        need(self.pid_file is None or self.pid_file != "", "pid_file", "a path")
        need(self.data_dir is None or self.data_dir != "", "data_dir", "a directory")
        need(self.store_sync in ("normal", "full"), "store_sync", '"normal" or "full"')
        need(self.http is None or isinstance(self.http, HttpConfig), "http",
             "an HttpConfig (the [http] table)")
        if isinstance(self.http, HttpConfig):
            errors.extend(self.http.check())
        need(self.cluster is None or isinstance(self.cluster, ClusterConfig), "cluster",
             "a ClusterConfig (the [cluster] table)")
        if isinstance(self.cluster, ClusterConfig):
            errors.extend(self.cluster.check())
        errors.extend(self._check_workers())
        if errors:
            raise ConfigError("\n".join(errors))

    def _check_workers(self) -> list[str]:
        if self.workers == "auto":
            object.__setattr__(self, "workers", os.cpu_count() or 1)
        n = self.workers
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return [f"config key 'workers' must be an integer >= 1 or \"auto\", not {n!r}"]
        if n == 1:
            return []
        # Each worker binds the same ports; with port 0 each would pick a different one. ([http]
        # is worker 1's alone.)
        ports = [("config key 'port'", self.port)] + [
            (f"[[listeners]] #{i + 1}: 'port'", lc.port) for i, lc in enumerate(self.listeners)]
        return [f"{key} must not be 0 with workers > 1 (each worker would pick a different "
                "port); choose a port" for key, port in ports if port == 0]

    def store_path(self) -> str | None:
        """The database file the broker persists to, or None when persistence is off
        (`persistence` None: on when data_dir is given; the `cymqtt` command sets it True)."""
        on = self.persistence if self.persistence is not None else self.data_dir is not None
        if not on:
            return None
        return os.path.join(self.data_dir or DEFAULT_DATA_DIR, "cymqtt.db")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_TYPES: dict[str, tuple[type, ...]] = {}
for _f in fields(Config):
    if _f.name in ("extra", "listeners"):
        continue
    _t = str(_f.type)
    if _t.startswith("int"):
        _TYPES[_f.name] = (int,)
    elif _t.startswith("float"):
        _TYPES[_f.name] = (int, float)
    elif _t in ("bool", "bool | None"):
        _TYPES[_f.name] = (bool,)
    elif _t.startswith("dict"):
        _TYPES[_f.name] = (dict,)
    else:
        _TYPES[_f.name] = (str,)


_TYPES["workers"] = (str, int)       # an int, or "auto" (Config checks which string)

_TABLES = {"http": http_from_dict, "cluster": cluster_from_dict}


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """A Config from parsed TOML (or any mapping); every key is checked, and the ConfigError
    names every bad key and value at once, one line each."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in data.items():
        if key == "listeners":
            if not isinstance(value, list):
                errors.append("config key 'listeners' must be an array of tables "
                              "([[listeners]]), not " + type(value).__name__)
                continue
            listeners = []
            for i, item in enumerate(value):
                try:
                    listeners.append(listener_from_dict(item, f"[[listeners]] #{i + 1}"))
                except ConfigError as exc:
                    errors.extend(exc.errors)
            if len(listeners) < len(value):
                continue        # (not also "'port' must be set when there are no listeners")
            values[key] = tuple(listeners)
            if "port" not in data:
                values["port"] = None     # only the listeners, as mosquitto's `listener`
            continue
        if key in _TABLES:
            try:
                values[key] = _TABLES[key](value)
            except ConfigError as exc:
                errors.extend(exc.errors)
            continue
        if key not in _TYPES:
            close = difflib.get_close_matches(key, _TYPES, n=1)
            errors.append(f"unknown config key '{key}'" + (
                f"; did you mean '{close[0]}'?" if close else " (README.md lists the keys)"))
            continue
        types = _TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            errors.append(f"config key '{key}' must be {types[-1].__name__}, "
                          f"not {type(value).__name__} {value!r}")
            continue
        values[key] = value
    try:
        config = dataclasses.replace(base or Config(), **values)
    except ConfigError as exc:
        errors.extend(exc.errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def load_config(path: str) -> Config:
    """Read a TOML config file. Raises ConfigError (unreadable, not TOML, bad key or value)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc} (a mosquitto.conf is "
                          f"read as one when its name ends in .conf)") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in exc.errors)) from None
