"""Ed25519 signing keys and bundle signatures.

Keys are the standard PEM files: ``signing.key`` (PKCS#8, private, mode 0600) and
``signing.pub`` (SubjectPublicKeyInfo). A key is known by its *key id*, the first 16 hex
characters of the sha256 of the raw 32-byte public key, so a signature can name the key
that made it without carrying the key itself.

``manifest.sig`` is a small JSON document over the exact bytes of ``manifest.json``::

    {"key_id": "3f2a…", "algorithm": "ed25519", "signature": "<base64>"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import BundleError, InputError

__all__ = [
    "ALGORITHM",
    "TrustedKey",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_signature",
    "private_key_pem",
    "public_key_pem",
    "sign_manifest",
    "trusted_key_map",
    "verify_manifest_signature",
]

ALGORITHM = "ed25519"
_MAX_KEY_FILE_BYTES = 64 * 1024
_MAX_SIG_BYTES = 4096


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key a device trusts, with its key id."""

    key_id: str
    public_key: Ed25519PublicKey


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PEM PKCS#8 (protect it with file permissions)."""
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read_key_source(source: bytes | str | os.PathLike[str], *, what: str) -> tuple[bytes, str]:
    """Key bytes and a label for messages. ``bytes`` or a PEM ``str`` is content; else a path."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), f"{what} (bytes)"
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode("ascii", "replace"), f"{what} (PEM text)"
    if not isinstance(source, str | os.PathLike):
        raise InputError(f"{what} must be PEM bytes or a path, got {type(source).__name__}", field=what)
    path = Path(source)
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}", field=what) from exc
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise InputError(f"{what} {path} is too large to be a key file", field=what)
    return data, str(path)


def load_public_key(source: bytes | str | os.PathLike[str] | Ed25519PublicKey) -> TrustedKey:
    """Parse a ``signing.pub`` (PEM bytes, PEM text or a path) into a :class:`TrustedKey`."""
    if isinstance(source, Ed25519PublicKey):
        return TrustedKey(key_id(source), source)
    data, label = _read_key_source(source, what="trusted_keys")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{label} is not a PEM public key", field="trusted_keys") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{label} is not an Ed25519 public key", field="trusted_keys")
    return TrustedKey(key_id(key), key)


def load_private_key(source: bytes | str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Parse a ``signing.key`` (PEM PKCS#8 bytes or a path)."""
    data, label = _read_key_source(source, what="key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{label} is not an unencrypted PEM private key", field="key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{label} is not an Ed25519 private key", field="key")
    return key


def trusted_key_map(keys: Iterable[TrustedKey]) -> dict[str, TrustedKey]:
    """Index trusted keys by key id."""
    return {k.key_id: k for k in keys}


def sign_manifest(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The ``manifest.sig`` document for these exact manifest bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("utf-8")


def parse_signature(sig_bytes: bytes) -> tuple[str, bytes]:
    """The ``(key_id, raw signature)`` of a ``manifest.sig``; ``BundleError`` when malformed."""
    if len(sig_bytes) > _MAX_SIG_BYTES:
        raise BundleError("manifest.sig is too large")
    try:
        doc = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError("manifest.sig is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise BundleError("manifest.sig is not a JSON object")
    if doc.get("algorithm") != ALGORITHM:
        raise BundleError(f"manifest.sig algorithm must be {ALGORITHM!r}, got {doc.get('algorithm')!r}")
    kid, sig = doc.get("key_id"), doc.get("signature")
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise BundleError("manifest.sig needs string fields key_id and signature")
    try:
        raw = base64.b64decode(sig.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise BundleError("manifest.sig signature is not valid base64") from exc
    return kid, raw


def verify_manifest_signature(
    manifest_bytes: bytes, sig_bytes: bytes, trusted: Mapping[str, TrustedKey]
) -> str:
    """Check ``manifest.sig`` against the trusted keys; return the signing key id.

    Raises ``BundleError`` when the key is not trusted or the signature does not match.
    """
    kid, raw = parse_signature(sig_bytes)
    key = trusted.get(kid)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise BundleError(f"bundle is signed by untrusted key {kid} (trusted: {known}): sign it with a trusted "
                          f"key, or add the signing.pub of key {kid} to the trusted keys")
    try:
        key.public_key.verify(raw, manifest_bytes)
    except InvalidSignature as exc:
        raise BundleError(f"signature of manifest.json does not verify with key {kid}") from exc
    return kid
