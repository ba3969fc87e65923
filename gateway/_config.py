"""The gateway's TOML configuration (docs/operations.md, contract).

::

    [[tokens]]
    token = "s3cret-app-token"          # or token_sha256 = "<64 hex digits>"
    role = "app"                        # app | device | publisher | analyst (nbo console)

    [[tokens]]
    token_sha256 = "9f86d0…"
    role = "device"
    device_id = "pos-17"                # required for (and only for) devices

    [trust]
    keys = ["keys/signing.pub"]         # paths, relative to the config file

    [hub]
    db = "sqlite:///var/lib/nbo/hub.sqlite"   # or "postgresql://user@host/db"

    [tls]                               # optional; client_ca turns on mutual TLS
    cert = "tls/server.crt"
    key = "tls/server.key"
    client_ca = "tls/ca.crt"

    [server]                            # optional
    processes = 2                       # serving processes on the port; default: the number of cores
    health_probe_seconds = 5            # how often health probes hub writes and bundle expiry; 0 = never

    [metrics]                           # optional; Prometheus /metrics over HTTP
    port = 9464                         # 0 = any free port
    addr = "127.0.0.1"                  # default; "0.0.0.0" to expose it

    [limits]                            # optional; thread budgets and stream limits, defaults shown
    decision_threads = 16               # (gateway/_call_limits.py, docs/operations.md)
    sync_threads = 8
    control_threads = 4
    max_downloads = 16
    max_publishes = 2
    max_open_streams = 8
    stream_idle_seconds = 60
    stream_total_seconds = 1800

Unknown tables or keys are errors (a typo must not silently switch security off). Plain
tokens are hashed on load; only SHA-256 digests are kept in memory.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nbo.sdk import ConfigError
from nbo.sdk.core import id_problem

from ._call_limits import CallLimits

__all__ = ["ROLES", "GatewayConfig", "TokenSpec", "load_config", "parse_config"]

ROLES = frozenset({"app", "device", "publisher", "analyst"})
"""``analyst`` opens the central team's web console (``nbo console``) and no RPC."""
_TOP_LEVEL = frozenset({"tokens", "trust", "hub", "tls", "server", "metrics", "limits"})
_TOKEN_KEYS = frozenset({"token", "token_sha256", "role", "device_id"})
RESERVED_DEVICE_ID = "app"
"""The hub event log's device id for events the gateway writes itself (DecisionService)."""
_TRUST_KEYS = frozenset({"keys"})
_HUB_KEYS = frozenset({"db"})
_TLS_KEYS = frozenset({"cert", "key", "client_ca"})
_SERVER_KEYS = frozenset({"processes", "health_probe_seconds"})
_METRICS_KEYS = frozenset({"port", "addr"})


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSpec:
    """One bearer token: its SHA-256 digest and the principal it stands for."""

    sha256: bytes
    role: str
    device_id: str | None = None

    def __repr__(self) -> str:  # never print even the digest in full
        return f"TokenSpec(role={self.role!r}, device_id={self.device_id!r}, sha256={self.sha256.hex()[:8]}…)"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """Everything ``nbo serve`` needs besides the state directory and listen address."""

    tokens: tuple[TokenSpec, ...] = ()
    trusted_keys: tuple[Path, ...] = ()
    hub_db: str | None = None
    """``sqlite:///abs/path``, ``sqlite:rel/path`` or ``postgresql://…``; ``None`` = ``STATE/hub.sqlite``."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    processes: int | None = None
    """Serving processes of ``nbo serve`` (``[server] processes``); ``None`` = the number of cores."""
    health_probe_seconds: float = 5.0
    """How often the health service probes hub writes and bundle expiry (``gateway/_health.py``); 0 = never."""
    metrics_port: int | None = None
    """Port of the Prometheus ``/metrics`` endpoint; ``None`` = no endpoint."""
    metrics_addr: str = "127.0.0.1"
    limits: CallLimits = CallLimits()
    """Thread budgets per kind of call and stream time limits (``[limits]``)."""
    source: Path | None = field(default=None, compare=False)

    @property
    def tls(self) -> bool:
        """Whether the server listens with TLS."""
        return self.tls_cert is not None

    def with_overrides(
        self,
        *,
        hub_db: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        client_ca: Path | None = None,
        metrics_port: int | None = None,
    ) -> GatewayConfig:
        """A copy with command-line flags taking precedence over the file."""
        updated = replace(
            self,
            hub_db=hub_db if hub_db is not None else self.hub_db,
            tls_cert=tls_cert if tls_cert is not None else self.tls_cert,
            tls_key=tls_key if tls_key is not None else self.tls_key,
            client_ca=client_ca if client_ca is not None else self.client_ca,
            metrics_port=metrics_port if metrics_port is not None else self.metrics_port,
        )
        if updated.metrics_port is not None and not 0 <= updated.metrics_port <= 65535:
            raise ConfigError("--metrics-port must be between 0 and 65535")
        _check_tls(updated.tls_cert, updated.tls_key, updated.client_ca, where="options")
        if updated.hub_db is not None:
            _check_db_url(updated.hub_db, where="--hub-db")
        return updated


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a gateway TOML file; relative paths resolve against its folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, base_dir=path.resolve().parent, source=path)


def parse_config(
    data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".", source: Path | None = None
) -> GatewayConfig:
    """Validate an already-parsed configuration mapping."""
    where = str(source) if source is not None else "config"
    base = Path(base_dir)
    if "decisions" in data:  # the removed decision worker's table: say what replaced it
        raise ConfigError(f"{where}: [decisions] worker_process was removed; every serving process now "
                          "decides in-process — use [server] processes (or nbo serve --processes N) for more cores")
    _unknown(data, _TOP_LEVEL, where, prefix="")

    tokens = _parse_tokens(data.get("tokens", []), where)

    trust = _table(data, "trust", where)
    _unknown(trust, _TRUST_KEYS, where, prefix="trust.")
    keys_raw = trust.get("keys", [])
    if not isinstance(keys_raw, list) or not all(isinstance(k, str) and k for k in keys_raw):
        raise ConfigError(f"{where}: trust.keys must be a list of file paths")
    trusted = tuple(_path(base, k) for k in keys_raw)

    hub = _table(data, "hub", where)
    _unknown(hub, _HUB_KEYS, where, prefix="hub.")
    db = hub.get("db")
    if db is not None:
        if not isinstance(db, str):
            raise ConfigError(f"{where}: hub.db must be a string URL")
        db = _check_db_url(db, where=f"{where}: hub.db", base=base)

    tls = _table(data, "tls", where)
    _unknown(tls, _TLS_KEYS, where, prefix="tls.")
    paths: dict[str, Path | None] = {}
    for key in ("cert", "key", "client_ca"):
        value = tls.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where}: tls.{key} must be a file path")
        paths[key] = _path(base, value) if value else None
    _check_tls(paths["cert"], paths["key"], paths["client_ca"], where=where)

    server = _table(data, "server", where)
    _unknown(server, _SERVER_KEYS, where, prefix="server.")
    processes = server.get("processes")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ConfigError(f"{where}: server.processes must be a positive integer")
    probe = server.get("health_probe_seconds", 5.0)
    if isinstance(probe, bool) or not isinstance(probe, int | float) or not probe >= 0:
        raise ConfigError(f"{where}: server.health_probe_seconds must be a number of seconds (0 = never)")

    metrics = _table(data, "metrics", where)
    _unknown(metrics, _METRICS_KEYS, where, prefix="metrics.")
    metrics_port = metrics.get("port")
    if metrics_port is not None and (
        isinstance(metrics_port, bool) or not isinstance(metrics_port, int) or not 0 <= metrics_port <= 65535
    ):
        raise ConfigError(f"{where}: metrics.port must be an integer between 0 and 65535")
    metrics_addr = metrics.get("addr", "127.0.0.1")
    if not isinstance(metrics_addr, str) or not metrics_addr:
        raise ConfigError(f"{where}: metrics.addr must be a host address")

    limits = _parse_limits(_table(data, "limits", where), where)

    return GatewayConfig(
        tokens=tokens,
        trusted_keys=trusted,
        hub_db=db,
        tls_cert=paths["cert"],
        tls_key=paths["key"],
        client_ca=paths["client_ca"],
        processes=processes,
        health_probe_seconds=float(probe),
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        limits=limits,
        source=source,
    )


def _parse_limits(table: Mapping[str, Any], where: str) -> CallLimits:
    defaults = CallLimits()
    known = frozenset(CallLimits.__dataclass_fields__)
    _unknown(table, known, where, prefix="limits.")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(getattr(defaults, key), int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: limits.{key} must be a positive integer")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{where}: limits.{key} must be a positive number of seconds")
        values[key] = value
    return CallLimits(**values)


def _parse_tokens(raw: Any, where: str) -> tuple[TokenSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: tokens must be an array of tables ([[tokens]])")
    specs: list[TokenSpec] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(raw):
        at = f"tokens[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: {at} must be a table")
        _unknown(entry, _TOKEN_KEYS, where, prefix=f"{at}.")
        token, digest_hex = entry.get("token"), entry.get("token_sha256")
        if (token is None) == (digest_hex is None):
            raise ConfigError(f"{where}: {at} needs exactly one of token or token_sha256")
        if token is not None:
            if not isinstance(token, str) or not token.strip():
                raise ConfigError(f"{where}: {at}.token must be a non-empty string")
            digest = hashlib.sha256(token.encode("utf-8")).digest()
        else:
            if not isinstance(digest_hex, str) or len(digest_hex) != 64:
                raise ConfigError(f"{where}: {at}.token_sha256 must be 64 hex digits")
            try:
                digest = bytes.fromhex(digest_hex)
            except ValueError:
                raise ConfigError(f"{where}: {at}.token_sha256 must be 64 hex digits") from None
        role = entry.get("role")
        if role not in ROLES:
            raise ConfigError(f"{where}: {at}.role must be one of {', '.join(sorted(ROLES))}, not {role!r}")
        device_id = entry.get("device_id")
        if role == "device":
            if not isinstance(device_id, str) or not device_id:
                raise ConfigError(f"{where}: {at}.device_id is required for role device")
            problem = id_problem(device_id)  # the one id rule: a device must be able to push as itself
            if problem is not None:
                raise ConfigError(f"{where}: {at}.device_id {problem}")
            if device_id == RESERVED_DEVICE_ID:
                raise ConfigError(f"{where}: {at}.device_id {device_id!r} is reserved for the gateway's own "
                                  "app-channel events; choose another device id")
        elif device_id is not None:
            raise ConfigError(f"{where}: {at}.device_id is only allowed for role device")
        if digest in seen:
            raise ConfigError(f"{where}: {at} repeats a token already configured")
        seen.add(digest)
        specs.append(TokenSpec(sha256=digest, role=role, device_id=device_id))
    return tuple(specs)


def _table(data: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _unknown(data: Mapping[str, Any], allowed: frozenset[str], where: str, *, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {prefix}{key}")


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _check_tls(cert: Path | None, key: Path | None, client_ca: Path | None, *, where: str) -> None:
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: tls.cert and tls.key must be given together")
    if client_ca is not None and cert is None:
        raise ConfigError(f"{where}: tls.client_ca (mutual TLS) needs tls.cert and tls.key")


def _check_db_url(url: str, *, where: str, base: Path | None = None) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return url
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        if not rest:
            raise ConfigError(f"{where}: sqlite URL has no path")
        if base is not None and not Path(rest).is_absolute():
            # relative paths in a config file resolve against the file's folder
            return "sqlite:" + str(base / rest)
        return url
    raise ConfigError(f"{where}: must start with sqlite: or postgresql://, got {url.split(':', 1)[0]!r}")
