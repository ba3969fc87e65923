"""The gateway TOML configuration (docs/operations.md): valid files load, every mistake is a ConfigError."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from nbo.gateway import GatewayConfig, load_config
from nbo.sdk import ConfigError

FULL = """
[[tokens]]
token = "app-token-123"
role = "app"

[[tokens]]
token_sha256 = "{sha}"
role = "device"
device_id = "pos-1"

[[tokens]]
token = "pub-token"
role = "publisher"

[trust]
keys = ["keys/signing.pub", "/etc/nbo/other.pub"]

[hub]
db = "sqlite:hub/hub.sqlite"

[tls]
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "tls/ca.crt"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_full_config_loads(tmp_path: Path) -> None:
    sha = hashlib.sha256(b"device-token").hexdigest()
    cfg = load_config(write(tmp_path, FULL.format(sha=sha)))
    assert isinstance(cfg, GatewayConfig)
    roles = [(t.role, t.device_id) for t in cfg.tokens]
    assert roles == [("app", None), ("device", "pos-1"), ("publisher", None)]
    assert cfg.tokens[0].sha256 == hashlib.sha256(b"app-token-123").digest()
    assert cfg.tokens[1].sha256.hex() == sha
    assert "app-token-123" not in repr(cfg)
    assert cfg.trusted_keys == (tmp_path / "keys/signing.pub", Path("/etc/nbo/other.pub"))
    assert cfg.hub_db == f"sqlite:{tmp_path / 'hub/hub.sqlite'}"
    assert cfg.tls_cert == tmp_path / "tls/server.crt"
    assert cfg.client_ca == tmp_path / "tls/ca.crt"
    assert cfg.tls


def test_empty_config_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.tokens == () and cfg.hub_db is None and not cfg.tls


def test_absolute_sqlite_and_postgres_urls(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[hub]\ndb = "sqlite:///var/lib/nbo/hub.sqlite"\n'))
    assert cfg.hub_db == "sqlite:///var/lib/nbo/hub.sqlite"
    cfg = load_config(write(tmp_path, '[hub]\ndb = "postgresql://nbo@db.internal/hub"\n'))
    assert cfg.hub_db == "postgresql://nbo@db.internal/hub"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown key colour"),
        ("[hub]\ndb = 'sqlite:x'\npool = 3\n", "unknown key hub.pool"),
        ("[tls]\ncert = 'a'\nkey = 'b'\nciphers = 'x'\n", "unknown key tls.ciphers"),
        ("[trust]\nkeys = ['a']\nkey = 'b'\n", "unknown key trust.key"),
        ("[[tokens]]\ntoken = 'abc'\nrole = 'app'\nscope = 'x'\n", "unknown key tokens[0].scope"),
        ("[[tokens]]\nrole = 'app'\n", "exactly one of token or token_sha256"),
        ("[[tokens]]\ntoken = 'a'\ntoken_sha256 = 'b'\nrole = 'app'\n", "exactly one"),
        ("[[tokens]]\ntoken_sha256 = 'abc'\nrole = 'app'\n", "64 hex digits"),
        ("[[tokens]]\ntoken_sha256 = '" + "z" * 64 + "'\nrole = 'app'\n", "64 hex digits"),
        ("[[tokens]]\ntoken = 'abc'\nrole = 'admin'\n", "tokens[0].role"),
        ("[[tokens]]\ntoken = 'abc'\nrole = 'device'\n", "device_id is required"),
        ("[[tokens]]\ntoken = 'abc'\nrole = 'app'\ndevice_id = 'x'\n", "only allowed for role device"),
        ("[[tokens]]\ntoken = 'abc'\nrole = 'device'\ndevice_id = 'app'\n", "reserved for the gateway"),
        ("[[tokens]]\ntoken = ''\nrole = 'app'\n", "non-empty"),
        ("[[tokens]]\ntoken = 'same'\nrole = 'app'\n[[tokens]]\ntoken = 'same'\nrole = 'publisher'\n",
         "tokens[1] repeats"),
        ("[hub]\ndb = 'mysql://x'\n", "hub.db"),
        ("[hub]\ndb = 3\n", "hub.db"),
        ("[tls]\ncert = 'a'\n", "tls.cert and tls.key"),
        ("[tls]\nclient_ca = 'a'\n", "tls.cert and tls.key"),
        ("[trust]\nkeys = 'one.pub'\n", "trust.keys"),
        ("tokens = 3\n", "tokens must be"),
        ("[hub\n", "not valid TOML"),
    ],
)
def test_invalid_configs(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_overrides_take_precedence(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[hub]\ndb = 'sqlite:a.sqlite'\n"))
    updated = cfg.with_overrides(hub_db="postgresql://x/y", tls_cert=Path("c"), tls_key=Path("k"))
    assert updated.hub_db == "postgresql://x/y" and updated.tls
    with pytest.raises(ConfigError):
        cfg.with_overrides(client_ca=Path("ca"))
    with pytest.raises(ConfigError):
        cfg.with_overrides(hub_db="oracle://x")


def test_the_removed_decision_worker_switch_is_refused_pointing_at_processes(tmp_path: Path) -> None:
    for value in ("true", "false"):
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, f"[decisions]\nworker_process = {value}\n"))
        message = str(caught.value)
        assert "\n" not in message and "gateway.toml" in message
        assert "worker_process was removed" in message and "[server] processes" in message
