"""Signing keys and bundle build: catalog + ONNX models → one signed, deterministic zip.

The zip is reproducible: entries are sorted, every timestamp is 1980-01-01, permissions are
fixed, and paths are relative — a bundle built on one machine verifies on any other. Pass
``created_at`` to make two builds byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbo.sdk import BundleError, Clock, InputError, ModelError, SystemClock
from nbo.sdk import __version__ as sdk_version
from nbo.sdk.core import (
    FORMAT,
    MANIFEST,
    SIGNATURE,
    check_name,
    generate_private_key,
    key_id,
    load_private_key,
    parse_iso,
    private_key_pem,
    public_key_pem,
    sha256_file,
    sign_manifest,
    to_datetime,
    unsafe_path_reason,
)

from ._catalog import _parse_catalog_bytes, _read_bytes, compile_catalog, validate_catalog

__all__ = ["BuiltBundle", "GeneratedKeys", "build_bundle", "generate_keys", "model_signature"]

INPUT_PREFIXES = ("customer__", "offer__", "context__")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# onnxruntime type strings → the short names the manifest records
_ORT_TYPES = {
    "tensor(float)": "float",
    "tensor(double)": "double",
    "tensor(string)": "string",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True, slots=True)
class GeneratedKeys:
    """Where :func:`generate_keys` wrote the key pair, and its key id."""

    private_key: Path
    public_key: Path
    key_id: str


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    """A bundle written by :func:`build_bundle`."""

    path: Path
    manifest: Mapping[str, Any]
    key_id: str
    sha256: str
    """sha256 of the zip file itself."""
    offer_count: int


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file created with ``mode`` (never world-readable in between), then rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed or widened nothing; be exact
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_keys(out_dir: str | os.PathLike[str], *, force: bool = False) -> GeneratedKeys:
    """Write a new Ed25519 key pair: ``out_dir/signing.key`` (PKCS#8, mode 0600) and ``signing.pub``.

    Existing key files are never overwritten unless ``force`` — losing a signing key means
    devices can no longer be sent bundles they trust.
    """
    out = Path(out_dir)
    private_path, public_path = out / "signing.key", out / "signing.pub"
    if not force:
        for p in (private_path, public_path):
            if p.exists():
                raise InputError(f"{p} already exists; refusing to overwrite a key (use --force)", field="out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = generate_private_key()
        _write_new_file(private_path, private_key_pem(key), 0o600)
        _write_new_file(public_path, public_key_pem(key.public_key()), 0o644)
    except OSError as exc:
        raise InputError(f"cannot write keys to {out}: {exc.strerror or exc}", field="out") from exc
    return GeneratedKeys(private_path, public_path, key_id(key.public_key()))


def model_signature(model_id: str, path: Path) -> tuple[list[dict[str, str]], str]:
    """The ``(inputs, output)`` a model declares, read with onnxruntime (no ``onnx`` package)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"model {model_id!r} ({path}) does not load in onnxruntime: {exc}") from exc
    inputs = [{"name": i.name, "type": _ORT_TYPES.get(i.type, i.type)} for i in session.get_inputs()]
    outputs = session.get_outputs()
    if not inputs or not outputs:
        raise ModelError(f"model {model_id!r} ({path}) has no inputs or no outputs")
    for spec in inputs:
        if not spec["name"].startswith(INPUT_PREFIXES) or spec["name"] in INPUT_PREFIXES:
            raise ModelError(
                f"model {model_id!r} ({path}): input {spec['name']!r} must be named customer__X, offer__X or "
                "context__X (docs/training.md)"
            )
        if spec["type"] not in ("float", "string"):
            raise ModelError(
                f"model {model_id!r} ({path}): input {spec['name']!r} has type {spec['type']}; "
                "the SDK feeds float or string columns"
            )
    return inputs, outputs[-1].name


def _utc_text(value: str | datetime, what: str) -> str:
    try:
        moment = parse_iso(value) if isinstance(value, str) else value
    except ValueError as exc:
        raise InputError(f"{what} is not an ISO-8601 time: {value!r}", field=what) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(_TS_FORMAT)




def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, whatever machine builds it
    info.external_attr = 0o644 << 16
    return info


def build_bundle(
    *,
    catalog: str | os.PathLike[str] | Mapping[str, Any],
    models: Mapping[str, str | os.PathLike[str]],
    name: str,
    version: int,
    key: str | os.PathLike[str] | bytes,
    out: str | os.PathLike[str],
    expires_at: str | datetime | None = None,
    created_at: str | datetime | None = None,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    clock: Clock | None = None,
) -> BuiltBundle:
    """Validate and compile the catalog, read the models, sign, and write the bundle zip.

    ``models`` maps model id → ``.onnx`` path (stored as ``models/<id>.onnx``). ``key`` is the
    ``signing.key`` path (or its PEM bytes). ``extra_files`` maps a relative path inside the
    bundle → a local file, listed under ``files`` in the manifest. Raises ``CatalogError``
    (invalid catalog), ``ModelError`` (a model that does not load or has inputs outside the
    ``customer__``/``offer__``/``context__`` prefixes), ``InputError`` (bad arguments).
    """
    try:
        check_name(name, what="bundle name")
    except BundleError as exc:
        raise InputError(str(exc), field="name") from exc
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"bundle version must be an integer >= 1, got {version!r}", field="version")
    now = to_datetime((clock or SystemClock()).now())
    created = _utc_text(created_at, "created_at") if created_at is not None else now.strftime(_TS_FORMAT)
    expires = None
    if expires_at is not None:
        expires = _utc_text(expires_at, "expires_at")
        if expires <= created:
            raise InputError(f"expires_at {expires} is not after created_at {created}", field="expires_at")
    private_key = load_private_key(key if isinstance(key, bytes) else Path(key))

    model_entries: list[dict[str, Any]] = []
    model_paths: dict[str, Path] = {}
    for model_id in sorted(models):
        try:
            check_name(model_id, what="model id")
        except BundleError as exc:
            raise InputError(str(exc), field="model") from exc
        path = Path(models[model_id])
        if not path.is_file():
            raise InputError(f"model {model_id!r}: file not found: {path}", field="model")
        inputs, output = model_signature(model_id, path)
        inner = f"models/{model_id}.onnx"
        model_paths[inner] = path
        model_entries.append(
            {"id": model_id, "path": inner, "sha256": sha256_file(path), "inputs": inputs, "output": output}
        )

    extras: dict[str, Path] = {}
    reserved = {MANIFEST, SIGNATURE, "catalog.sqlite", *model_paths}
    for inner, local in sorted((extra_files or {}).items()):
        reason = unsafe_path_reason(inner)
        if reason is not None or inner in reserved:
            raise InputError(f"extra file path {inner!r} is not allowed: {reason or 'reserved name'}",
                             field="extra_files")
        if not Path(local).is_file():
            raise InputError(f"extra file not found: {local}", field="extra_files")
        extras[inner] = Path(local)

    model_inputs = {i["name"]: i["type"] for entry in model_entries for i in entry["inputs"]}
    if isinstance(catalog, Mapping):
        valid = validate_catalog(catalog, model_ids=models.keys(), model_inputs=model_inputs, name=name)
    else:
        catalog_path = Path(catalog)
        data = _read_bytes(catalog_path)
        valid = validate_catalog(
            _parse_catalog_bytes(data, catalog_path),
            source=catalog_path.name,
            model_ids=models.keys(),
            model_inputs=model_inputs,
            name=name,
            source_sha256=hashlib.sha256(data).hexdigest(),
        )

    target = Path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {target.parent}: {exc.strerror or exc}", field="out") from exc
    # build next to the target so that the final rename stays on one filesystem
    with tempfile.TemporaryDirectory(prefix=".nbo-build-", dir=target.parent) as tmp:
        catalog_file = compile_catalog(valid, Path(tmp) / "catalog.sqlite")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "created_at": created,
            "expires_at": expires,
            "min_sdk": sdk_version,
            "models": model_entries,
            "catalog": {"path": "catalog.sqlite", "sha256": sha256_file(catalog_file)},
            "files": {inner: sha256_file(local) for inner, local in extras.items()},
        }
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
        sig_bytes = sign_manifest(private_key, manifest_bytes)
        contents: dict[str, Path | bytes] = {
            MANIFEST: manifest_bytes,
            SIGNATURE: sig_bytes,
            "catalog.sqlite": catalog_file,
            **model_paths,
            **extras,
        }
        try:
            tmp_zip = Path(tmp) / "bundle.zip"
            with zipfile.ZipFile(tmp_zip, "w") as zf:
                for inner in sorted(contents):
                    item = contents[inner]
                    zf.writestr(_zip_entry(inner), item if isinstance(item, bytes) else item.read_bytes())
            digest = sha256_file(tmp_zip)
            os.replace(tmp_zip, target)
        except OSError as exc:
            raise InputError(f"cannot write bundle {target}: {exc.strerror or exc}", field="out") from exc
    return BuiltBundle(
        path=target, manifest=manifest, key_id=key_id(private_key.public_key()), sha256=digest,
        offer_count=len(valid.offers),
    )
