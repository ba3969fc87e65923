"""Bundles signed by a trusted key but not made by ``nbo bundle build``: a careless or older
builder, whose catalog never went through the build's checks. The device and the gateway must
refuse what the build would have refused."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from bundle_fixtures import read_member, rewrite_zip
from nbo.sdk.core import load_private_key, sign_manifest


def recatalog(src: Path, dst: Path, *, key: Path, mutate: Callable[[sqlite3.Connection], None]) -> Path:
    """``src`` with its ``catalog.sqlite`` changed by ``mutate(connection)``, the manifest's
    catalog hash updated and the manifest signed again with ``key``."""
    manifest = json.loads(read_member(src, "manifest.json"))
    member = manifest["catalog"]["path"]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.sqlite"
        catalog.write_bytes(read_member(src, member))
        db = sqlite3.connect(catalog)
        try:
            with db:
                mutate(db)
        finally:
            db.close()
        data = catalog.read_bytes()
    manifest["catalog"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    sig = sign_manifest(load_private_key(key), manifest_bytes)
    return rewrite_zip(src, dst, replace={member: data, "manifest.json": manifest_bytes, "manifest.sig": sig})


def with_rule(src: Path, dst: Path, *, key: Path, rule_id: str, expression: str, applies_to: str = "*") -> Path:
    """``src`` with one more business rule, exactly as given."""
    def add(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO rules (rule_id, kind, applies_to, expression, description) VALUES (?, ?, ?, ?, ?)",
                   (rule_id, "business", applies_to, expression, "added by a careless builder"))

    return recatalog(src, dst, key=key, mutate=add)


def assert_install_refused(state: Path, *, pub: Path, good: Path, bad: Path, match: str) -> None:
    """A device with ``good`` installed refuses ``bad`` (``BundleError`` matching ``match``)
    and keeps deciding with ``good``."""
    import pytest
    from nbo.sdk import BundleError, Client, ManualClock

    client = Client.open(state, device_id="pos-1", trusted_keys=[pub.read_bytes()], clock=ManualClock())
    try:
        active = client.install_bundle(good)
        with pytest.raises(BundleError, match=match):
            client.install_bundle(bad)
        assert client.bundle is not None and client.bundle.version == active.version
        assert client.decide("c1", channel="app").bundle_version == active.version
    finally:
        client.close()
