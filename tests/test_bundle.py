"""Bundle build and verification: manifest, signature, determinism, and every refusal of verify_bundle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import nbo.sdk
import pytest
from bundle_fixtures import (
    CATALOG_YAML,
    flip_byte,
    make_bundle,
    make_keys,
    make_model,
    read_member,
    resign,
    rewrite_zip,
    small_catalog,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nbo.model_export import build_bundle, generate_keys
from nbo.sdk import BundleError, CatalogError, InputError, ManualClock, ModelError, _bundle
from nbo.sdk._bundle import version_tuple
from nbo.sdk.core import inspect_bundle, load_trusted_keys, verify_bundle

NOW = ManualClock().now()  # 2023-11-14


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    key, pub = make_keys(root / "keys")
    bundle = make_bundle(root / "out", key=key, version=3)
    return {"root": root, "key": key, "pub": pub, "bundle": bundle, "model": root / "out/models-src/propensity.onnx"}


def verify(bundle: Path, pub: Path, dest: Path, *, now: float = NOW) -> _bundle.VerifiedBundle:
    dest.mkdir(parents=True, exist_ok=True)
    return verify_bundle(bundle, dest, trusted_keys=load_trusted_keys([pub]), now=now)


def refused(bundle: Path, pub: Path, tmp_path: Path, *, now: float = NOW) -> str:
    with pytest.raises(BundleError) as info:
        verify(bundle, pub, tmp_path / "extract", now=now)
    message = str(info.value)
    assert "\n" not in message and message
    return message


# -- build --------------------------------------------------------------------------------------


def test_manifest_describes_every_file(built):
    with zipfile.ZipFile(built["bundle"]) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == 1
        assert (manifest["name"], manifest["version"]) == ("small", 3)
        assert manifest["created_at"] == "2026-01-01T00:00:00Z" and manifest["expires_at"] is None
        assert manifest["min_sdk"] == nbo.sdk.__version__
        [model] = manifest["models"]
        assert model["id"] == "propensity" and model["path"] == "models/propensity.onnx"
        assert model["sha256"] == hashlib.sha256(zf.read("models/propensity.onnx")).hexdigest()
        assert model["inputs"] == [
            {"name": "customer__frequency", "type": "float"},
            {"name": "customer__lifecycle_stage", "type": "string"},
            {"name": "offer__category", "type": "string"},
            {"name": "context__channel", "type": "string"},
        ]
        assert model["output"] == "probabilities"
        assert manifest["catalog"] == {
            "path": "catalog.sqlite", "sha256": hashlib.sha256(zf.read("catalog.sqlite")).hexdigest()}
        assert manifest["files"] == {}
        assert zf.read("models/propensity.onnx") == built["model"].read_bytes()


def test_zip_is_deterministic_sorted_and_relative(built, tmp_path):
    again = make_bundle(tmp_path / "elsewhere", key=built["key"], version=3)
    assert again.read_bytes() == built["bundle"].read_bytes()
    with zipfile.ZipFile(again) as zf:
        names = zf.namelist()
        assert names == sorted(names) == ["catalog.sqlite", "manifest.json", "manifest.sig", "models/propensity.onnx"]
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert not info.filename.startswith("/") and ".." not in info.filename.split("/")
        assert str(tmp_path) not in zf.read("manifest.json").decode()


def test_signature_is_ed25519_over_the_exact_manifest_bytes(built):
    manifest_bytes = read_member(built["bundle"], "manifest.json")
    sig = json.loads(read_member(built["bundle"], "manifest.sig"))
    public = serialization.load_pem_public_key(built["pub"].read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert sig["algorithm"] == "ed25519"
    assert sig["key_id"] == hashlib.sha256(raw).hexdigest()[:16]
    public.verify(base64.b64decode(sig["signature"]), manifest_bytes)  # raises if wrong


def test_generate_keys_writes_a_private_key_only_the_owner_can_read(tmp_path):
    keys = generate_keys(tmp_path / "k")
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert keys.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert len(keys.key_id) == 16
    before = keys.private_key.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        generate_keys(tmp_path / "k")
    assert keys.private_key.read_bytes() == before
    replaced = generate_keys(tmp_path / "k", force=True)
    assert replaced.key_id != keys.key_id
    assert stat.S_IMODE(replaced.private_key.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["signing.key", "signing.pub"]


def test_build_refuses_a_model_input_outside_the_prefixes(built, tmp_path):
    model = make_model(tmp_path / "bad.onnx", inputs=[("customer__frequency", "float"), ("age", "float")])
    with pytest.raises(ModelError, match=r"input 'age' must be named customer__X, offer__X or context__X"):
        build_bundle(catalog=CATALOG_YAML, models={"propensity": model}, name="x", version=1,
                     key=built["key"], out=tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_build_refuses_a_catalog_model_id_that_is_not_a_bundle_model(built, tmp_path):
    with pytest.raises(CatalogError, match=r"offers\[0\] \(offer_id=CARD_GOLD\): model_id: model 'propensity' is not"):
        build_bundle(catalog=CATALOG_YAML, models={"other": built["model"]}, name="x", version=1,
                     key=built["key"], out=tmp_path / "x.zip")
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def test_build_refuses_a_file_that_is_not_onnx(built, tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="does not load in onnxruntime"):
        build_bundle(catalog=CATALOG_YAML, models={"propensity": bogus}, name="x", version=1,
                     key=built["key"], out=tmp_path / "x.zip")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"version": 0}, "version"),
    ({"version": True}, "version"),
    ({"name": "../evil"}, "name"),
    ({"name": ""}, "name"),
    ({"expires_at": "2025-01-01T00:00:00Z"}, "expires_at"),  # before created_at
    ({"expires_at": "soon"}, "expires_at"),
    ({"models": {"../m": "x.onnx"}}, "model"),
    ({"extra_files": {"../x": CATALOG_YAML}}, "extra_files"),
    ({"extra_files": {"manifest.json": CATALOG_YAML}}, "extra_files"),
])
def test_build_refuses_bad_arguments(built, tmp_path, kwargs, field):
    args: dict[str, Any] = {"catalog": CATALOG_YAML, "models": {"propensity": built["model"]}, "name": "x",
                            "version": 1, "key": built["key"], "out": tmp_path / "x.zip",
                            "created_at": "2026-01-01T00:00:00Z"}
    args.update(kwargs)
    with pytest.raises(InputError) as info:
        build_bundle(**args)
    assert info.value.field == field


def test_build_refuses_a_public_key_as_signing_key(built, tmp_path):
    with pytest.raises(InputError, match="not an unencrypted PEM private key"):
        build_bundle(catalog=CATALOG_YAML, models={"propensity": built["model"]}, name="x", version=1,
                     key=built["pub"], out=tmp_path / "x.zip")


# -- verify -------------------------------------------------------------------------------------


def test_verify_extracts_exactly_the_signed_files(built, tmp_path):
    result = verify(built["bundle"], built["pub"], tmp_path / "x")
    assert result.manifest["version"] == 3 and result.signature_checked
    with zipfile.ZipFile(built["bundle"]) as zf:
        for name in zf.namelist():
            assert (tmp_path / "x" / name).read_bytes() == zf.read(name)
    extracted = sorted(p.relative_to(tmp_path / "x").as_posix() for p in (tmp_path / "x").rglob("*") if p.is_file())
    assert extracted == sorted(zipfile.ZipFile(built["bundle"]).namelist())


def test_a_bundle_verifies_after_being_copied_to_another_place(built, tmp_path):
    moved = tmp_path / "somewhere" / "else" / "b.zip"
    moved.parent.mkdir(parents=True)
    shutil.copy(built["bundle"], moved)
    assert verify(moved, built["pub"], tmp_path / "x").manifest["name"] == "small"


def test_extra_files_are_listed_hashed_and_checked(built, tmp_path):
    readme = tmp_path / "README.txt"
    readme.write_text("release notes\n")
    bundle = make_bundle(tmp_path / "b", key=built["key"], models={"propensity": built["model"]},
                         extra_files={"docs/README.txt": readme})
    manifest = json.loads(read_member(bundle, "manifest.json"))
    assert manifest["files"] == {"docs/README.txt": hashlib.sha256(readme.read_bytes()).hexdigest()}
    verify(bundle, built["pub"], tmp_path / "ok")
    bad = rewrite_zip(bundle, tmp_path / "bad.zip", replace={"docs/README.txt": b"release notez\n"})
    assert "docs/README.txt" in refused(bad, built["pub"], tmp_path)


def test_refuses_an_untrusted_key(built, tmp_path):
    _, other_pub = make_keys(tmp_path / "other")
    message = refused(built["bundle"], other_pub, tmp_path)
    assert "untrusted key" in message


def test_refuses_a_signature_that_claims_a_trusted_key_id(built, tmp_path):
    other_key, _ = make_keys(tmp_path / "other")
    forged = resign(built["bundle"], tmp_path / "forged.zip", key=other_key, mutate=lambda m: None)
    sig = json.loads(read_member(forged, "manifest.sig"))
    sig["key_id"] = json.loads(read_member(built["bundle"], "manifest.sig"))["key_id"]
    forged2 = rewrite_zip(forged, tmp_path / "forged2.zip", replace={"manifest.sig": json.dumps(sig).encode()})
    assert "does not verify" in refused(forged2, built["pub"], tmp_path)


@pytest.mark.parametrize("member", ["models/propensity.onnx", "catalog.sqlite", "manifest.json", "manifest.sig"])
def test_refuses_a_flipped_byte_in_any_member(built, tmp_path, member):
    data = read_member(built["bundle"], member)
    if member == "manifest.sig":  # flip a byte of the signature itself, keeping valid base64
        sig = json.loads(data)
        raw = bytearray(base64.b64decode(sig["signature"]))
        raw[5] ^= 0x01
        sig["signature"] = base64.b64encode(bytes(raw)).decode()
        tampered = json.dumps(sig).encode()
    else:
        tampered = flip_byte(data)
    bad = rewrite_zip(built["bundle"], tmp_path / "bad.zip", replace={member: tampered})
    message = refused(bad, built["pub"], tmp_path)
    assert any(word in message for word in ("sha256", "signature", "manifest.json is not valid JSON"))


@pytest.mark.parametrize(("name", "reason"), [
    ("../evil.txt", "'..' in path"),
    ("models/../../evil.txt", "'..' in path"),
    ("/etc/evil", "absolute path"),
    ("C:/evil", "absolute path"),
    ("models\\evil.onnx", "backslash"),
    ("models/", "directory entry"),
])
def test_refuses_unsafe_entry_names(built, tmp_path, name, reason):
    bad = rewrite_zip(built["bundle"], tmp_path / "bad.zip", add={name: b"x"})
    assert reason in refused(bad, built["pub"], tmp_path)
    assert not (tmp_path / "evil.txt").exists()


def test_refuses_a_symlink_entry(built, tmp_path):
    bad = rewrite_zip(built["bundle"], tmp_path / "bad.zip", add={"link": b"/etc/passwd"}, symlinks=["link"])
    assert "symbolic link" in refused(bad, built["pub"], tmp_path)


def test_refuses_a_duplicate_entry(built, tmp_path):
    bad = rewrite_zip(built["bundle"], tmp_path / "bad.zip",
                      add={"catalog.sqlite": read_member(built["bundle"], "catalog.sqlite")})
    assert "appears twice" in refused(bad, built["pub"], tmp_path)


def test_refuses_an_added_and_a_removed_file(built, tmp_path):
    added = rewrite_zip(built["bundle"], tmp_path / "added.zip", add={"models/extra.onnx": b"x"})
    assert "does not list" in refused(added, built["pub"], tmp_path)
    removed = rewrite_zip(built["bundle"], tmp_path / "removed.zip", remove=["models/propensity.onnx"])
    assert "missing from the bundle" in refused(removed, built["pub"], tmp_path)
    unsigned = rewrite_zip(built["bundle"], tmp_path / "unsigned.zip", remove=["manifest.sig"])
    assert "no manifest.sig" in refused(unsigned, built["pub"], tmp_path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_refuses_a_truncated_zip(built, tmp_path, keep):
    data = built["bundle"].read_bytes()
    bad = tmp_path / "trunc.zip"
    bad.write_bytes(data[: int(len(data) * keep)])
    assert "not a readable zip" in refused(bad, built["pub"], tmp_path)


def test_refuses_missing_and_non_zip_files(built, tmp_path):
    assert "not found" in refused(tmp_path / "absent.zip", built["pub"], tmp_path)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(os.urandom(2000))
    assert "not a readable zip" in refused(junk, built["pub"], tmp_path)


def test_refuses_an_expired_bundle(built, tmp_path):
    bundle = make_bundle(tmp_path / "b", key=built["key"], models={"propensity": built["model"]},
                         created_at="2020-01-01T00:00:00Z", expires_at="2023-06-01T00:00:00Z")
    assert "expired at 2023-06-01T00:00:00Z" in refused(bundle, built["pub"], tmp_path)
    # before expiry it is fine
    verify(bundle, built["pub"], tmp_path / "ok", now=1_600_000_000.0)


def test_refuses_a_bundle_that_needs_a_newer_sdk(built, tmp_path):
    def future(m: dict[str, Any]) -> None:
        m["min_sdk"] = "99.0.1"

    bad = resign(built["bundle"], tmp_path / "bad.zip", key=built["key"], mutate=future)
    assert "needs SDK 99.0.1 or newer" in refused(bad, built["pub"], tmp_path)


@pytest.mark.parametrize(("mutation", "reason"), [
    (lambda m: m.update(format=2), "unsupported bundle format 2"),
    (lambda m: m.update(version=0), "version must be an integer >= 1"),
    (lambda m: m.update(name="../x"), "manifest name"),
    (lambda m: m["models"][0].update(path="../propensity.onnx"), "models[0].path"),
    (lambda m: m["catalog"].update(path="/abs/catalog.sqlite"), "absolute path"),
    (lambda m: m.update(files={"notes.txt": "0" * 64}), "missing from the bundle"),
    (lambda m: m.update(expires_at="whenever"), "expires_at is not an ISO-8601 time"),
])
def test_refuses_a_signed_but_malformed_manifest(built, tmp_path, mutation, reason):
    bad = resign(built["bundle"], tmp_path / "bad.zip", key=built["key"], mutate=mutation)
    assert reason in refused(bad, built["pub"], tmp_path)


def test_refuses_a_bundle_that_expands_past_the_size_cap(built, tmp_path, monkeypatch):
    base = sum(i.file_size for i in zipfile.ZipFile(built["bundle"]).infolist())
    monkeypatch.setattr(_bundle, "MAX_TOTAL_UNCOMPRESSED", base + 512 * 1024)
    verify(built["bundle"], built["pub"], tmp_path / "fits")  # the real bundle is under the cap
    bomb = rewrite_zip(built["bundle"], tmp_path / "bomb.zip", add={"zeros.bin": bytes(1024 * 1024)})
    # 1 MB of zeros compresses to ~1 kB: the declared sizes, not the zip size, are what count
    assert bomb.stat().st_size < built["bundle"].stat().st_size + 16 * 1024
    assert "expands to more than" in refused(bomb, built["pub"], tmp_path)
    assert not (tmp_path / "extract" / "zeros.bin").exists()


def test_refuses_too_many_entries(built, tmp_path, monkeypatch):
    monkeypatch.setattr(_bundle, "MAX_ENTRIES", 4)
    bad = rewrite_zip(built["bundle"], tmp_path / "bad.zip", add={"a": b"1"})
    assert "entries" in refused(bad, built["pub"], tmp_path)


def test_min_sdk_versions_compare_numerically():
    assert version_tuple("0.10.0") > version_tuple("0.9.9")
    assert version_tuple("1.0") == version_tuple("1.0.0") == version_tuple("1")
    assert version_tuple("1.2.0rc1") == (1, 2)
    with pytest.raises(ValueError):
        version_tuple("latest")


def test_inspect_reads_without_checking_the_signature(built, tmp_path):
    _, other_pub = make_keys(tmp_path / "other")
    del other_pub
    found = inspect_bundle(built["bundle"], tmp_path / "i")
    assert not found.signature_checked and found.manifest["version"] == 3
    bad = rewrite_zip(built["bundle"], tmp_path / "bad.zip", replace={"catalog.sqlite": b"x"})
    (tmp_path / "j").mkdir()
    with pytest.raises(BundleError, match="sha256 of catalog.sqlite"):
        inspect_bundle(bad, tmp_path / "j")


# -- trusted keys ---------------------------------------------------------------------------------


def test_trusted_keys_from_bytes_paths_and_pem_text(built):
    pem = built["pub"].read_bytes()
    ids = {k.key_id for k in load_trusted_keys([pem, str(built["pub"]), built["pub"], pem.decode()])}
    assert len(ids) == 1
    assert [k.key_id for k in load_trusted_keys(pem)] == list(ids)  # one key, not in a list


@pytest.mark.parametrize("bad", [b"not a key", "missing/signing.pub", 42])
def test_bad_trusted_keys_are_input_errors(bad):
    with pytest.raises(InputError) as info:
        load_trusted_keys([bad])
    assert info.value.field == "trusted_keys"


def test_a_private_key_is_not_accepted_as_trusted_key(built):
    with pytest.raises(InputError, match="not a PEM public key"):
        load_trusted_keys([built["key"]])


def test_importing_the_sdk_does_not_load_authoring_dependencies():
    code = ("import sys, nbo.sdk, nbo.sdk._bundle, nbo.sdk._keys; "
            "print(sorted(m for m in ('sqlite_utils', 'yaml', 'sklearn', 'skl2onnx', 'onnx', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_small_catalog_helper_returns_fresh_copies():
    a = small_catalog()
    a["offers"].clear()
    assert small_catalog()["offers"]
