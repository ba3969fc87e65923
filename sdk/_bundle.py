"""Bundle verification and the on-disk bundle store (stage → verify → commit / rollback).

A bundle is one zip (format 1, see ``docs/bundle-format.md``): ``manifest.json``, its
Ed25519 signature ``manifest.sig``, ``models/<id>.onnx``, ``catalog.sqlite`` and any other
files the manifest lists with their sha256. Verification trusts nothing in the zip until the
signature over the manifest checks out, and nothing else until its hash matches the manifest.

On a device, :class:`BundleStore` keeps bundles under ``state_dir/bundles``::

    bundles/
      active.json                 active + previous pointers, highest version per name
      <name>/<version>-<id>/      one extracted, verified bundle (never modified once there)
      .staging-<id>/              a bundle being extracted (renamed into place when verified)

``stage`` extracts into a fresh directory and renames it to its final place; ``commit`` flips
the pointer in ``active.json`` with one atomic ``os.replace``; nothing the active bundle uses is
touched before that moment, so a failed install leaves the running bundle exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._clock import Clock, to_datetime
from ._errors import BundleError
from ._keys import TrustedKey, load_public_key, parse_signature, trusted_key_map, verify_manifest_signature
from ._types import BundleInfo
from ._vocabulary import BUNDLE_NAME_RE

__all__ = [
    "sha256_file",
    "FORMAT",
    "MAX_ENTRIES",
    "MAX_TOTAL_UNCOMPRESSED",
    "BundleStore",
    "StagedBundle",
    "VerifiedBundle",
    "bundle_info",
    "check_name",
    "inspect_bundle",
    "load_trusted_keys",
    "parse_iso",
    "parse_manifest",
    "verify_bundle",
    "version_tuple",
]

FORMAT = 1
"""The bundle format this SDK reads and writes."""
MAX_TOTAL_UNCOMPRESSED = 512 * 1024 * 1024
"""Refuse a bundle whose files add up to more than this once extracted (zip-bomb guard)."""
MAX_ENTRIES = 1000
"""Refuse a zip with more entries than this."""
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_STATE_FILE = "active.json"
_STAGING_PREFIX = ".staging-"
_CHUNK = 1024 * 1024

# Bundle names and model ids become directory and file names: keep them boring.
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True, slots=True)
class StagedBundle:
    """A verified bundle extracted into its final directory, not (yet) active."""

    directory: Path
    manifest: Mapping[str, Any]
    info: BundleInfo
    manifest_sha256: str = ""


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """The result of reading a bundle zip: its manifest and where its files were extracted."""

    directory: Path
    manifest: Mapping[str, Any]
    manifest_sha256: str
    key_id: str
    """The signing key id named by ``manifest.sig`` (checked unless this came from inspect)."""
    signature_checked: bool


# -- small parsers -------------------------------------------------------------------------


def check_name(value: Any, *, what: str) -> str:
    """A bundle name or model id: 1–64 of ``A-Z a-z 0-9 . _ -``, not starting with a dot."""
    if not isinstance(value, str) or not BUNDLE_NAME_RE.match(value):
        raise BundleError(f"{what} must be 1-64 characters of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def parse_iso(value: str) -> datetime:
    """An ISO-8601 timestamp as an aware UTC datetime (naive means UTC); ``ValueError`` if bad."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def version_tuple(value: str) -> tuple[int, ...]:
    """``"1.10.2rc1"`` → ``(1, 10, 2)``: the leading numeric release parts, compared as numbers."""
    parts: list[int] = []
    for piece in value.strip().split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):  # a pre-release suffix ends the release part
            break
    if not parts:
        raise ValueError(f"not a version: {value!r}")
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _sdk_version() -> str:
    from . import __version__  # the package is fully imported by the time a bundle is read

    return __version__


def unsafe_path_reason(name: str) -> str | None:
    """Why a path inside a bundle is unacceptable, or ``None`` when it is a plain relative path."""
    if not name:
        return "empty path"
    if len(name) > 255:
        return "path too long"
    if any(ord(c) < 32 for c in name):
        return "control character in path"
    if "\\" in name:
        return "backslash in path"
    if name.startswith("/") or _DRIVE_RE.match(name):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in path"
    if any(p in ("", ".") for p in parts):
        return "directory entry or empty path component"
    return None


def _require_safe_path(name: Any, *, what: str) -> str:
    if not isinstance(name, str):
        raise BundleError(f"{what} must be a string path, got {type(name).__name__}")
    reason = unsafe_path_reason(name)
    if reason is not None:
        raise BundleError(f"{what} {name!r} is not allowed: {reason}")
    return name


def _require_sha(value: Any, *, what: str) -> str:
    if not isinstance(value, str) or not _HEX64_RE.match(value):
        raise BundleError(f"{what} must be 64 lowercase hex characters")
    return value


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Parse and check the structure of ``manifest.json`` (format 1). ``BundleError`` if bad."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json is not a JSON object")
    fmt = manifest.get("format")
    if type(fmt) is not int or fmt != FORMAT:
        raise BundleError(f"unsupported bundle format {fmt!r} (this SDK reads format {FORMAT})")
    check_name(manifest.get("name"), what="manifest name")
    version = manifest.get("version")
    if type(version) is not int or version < 1:
        raise BundleError(f"manifest version must be an integer >= 1, got {version!r}")
    for key in ("created_at", "min_sdk"):
        if not isinstance(manifest.get(key), str):
            raise BundleError(f"manifest {key} must be a string")
    try:
        parse_iso(manifest["created_at"])
    except ValueError as exc:
        raise BundleError(f"manifest created_at is not an ISO-8601 time: {manifest['created_at']!r}") from exc
    expires = manifest.get("expires_at")
    if expires is not None:
        if not isinstance(expires, str):
            raise BundleError("manifest expires_at must be an ISO-8601 string or null")
        try:
            parse_iso(expires)
        except ValueError as exc:
            raise BundleError(f"manifest expires_at is not an ISO-8601 time: {expires!r}") from exc
    try:
        version_tuple(manifest["min_sdk"])
    except ValueError as exc:
        raise BundleError(f"manifest min_sdk is not a version: {manifest['min_sdk']!r}") from exc

    paths: set[str] = {MANIFEST, SIGNATURE}

    def claim(path: str, what: str) -> None:
        if path in paths:
            raise BundleError(f"{what} {path!r} is listed twice in the manifest")
        paths.add(path)

    models = manifest.get("models")
    if not isinstance(models, list):
        raise BundleError("manifest models must be a list")
    for i, model in enumerate(models):
        if not isinstance(model, dict):
            raise BundleError(f"manifest models[{i}] must be an object")
        mid = check_name(model.get("id"), what=f"manifest models[{i}].id")
        if model.get("path") != f"models/{mid}.onnx":
            raise BundleError(f"manifest models[{i}].path must be 'models/{mid}.onnx'")
        claim(model["path"], "model")
        _require_sha(model.get("sha256"), what=f"manifest models[{i}].sha256")
        inputs = model.get("inputs")
        if not isinstance(inputs, list) or not all(
            isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("type"), str) for x in inputs
        ):
            raise BundleError(f"manifest models[{i}].inputs must be a list of {{name, type}}")
        if not isinstance(model.get("output"), str):
            raise BundleError(f"manifest models[{i}].output must be a string")
    catalog = manifest.get("catalog")
    if not isinstance(catalog, dict):
        raise BundleError("manifest catalog must be an object {path, sha256}")
    claim(_require_safe_path(catalog.get("path"), what="manifest catalog.path"), "catalog")
    _require_sha(catalog.get("sha256"), what="manifest catalog.sha256")
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise BundleError("manifest files must be an object {path: sha256}")
    for path, digest in files.items():
        claim(_require_safe_path(path, what="manifest file"), "file")
        _require_sha(digest, what=f"manifest files[{path!r}]")
    return manifest


def _expected_files(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Every file of the bundle except the manifest and its signature → sha256."""
    expected = {m["path"]: m["sha256"] for m in manifest["models"]}
    expected[manifest["catalog"]["path"]] = manifest["catalog"]["sha256"]
    expected.update(manifest.get("files", {}))
    return expected


def check_policy(manifest: Mapping[str, Any], *, now: float, sdk_version: str | None = None) -> None:
    """Refuse an expired bundle or one that needs a newer SDK."""
    sdk = sdk_version or _sdk_version()
    if version_tuple(manifest["min_sdk"]) > version_tuple(sdk):
        raise BundleError(f"bundle needs SDK {manifest['min_sdk']} or newer; this SDK is {sdk}")
    expires = manifest.get("expires_at")
    if expires is not None and parse_iso(expires) <= to_datetime(now):
        raise BundleError(f"bundle {manifest['name']} v{manifest['version']} expired at {expires}")


# -- reading a zip -------------------------------------------------------------------------


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise BundleError(f"{info.filename} is too large ({info.file_size} bytes)")
    with zf.open(info) as fh:
        return fh.read(limit + 1)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the data files are synced
        pass
    finally:
        os.close(fd)


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, expected_sha: str) -> None:
    target = dest / info.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    # "xb": a name can never overwrite another entry's file, whatever the zip claims
    with zf.open(info) as src, target.open("xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:  # zipfile stops at file_size; belt and braces
                raise BundleError(f"{info.filename} is larger than its declared size")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != expected_sha:
        raise BundleError(f"sha256 of {info.filename} does not match the manifest (file was modified)")


def _read_bundle(
    path: Path,
    dest: Path,
    *,
    trusted: Mapping[str, TrustedKey] | None,
    before_extract: Callable[[Mapping[str, Any]], None] | None = None,
) -> VerifiedBundle:
    """Check a bundle zip and extract it into the empty directory ``dest``.

    With ``trusted=None`` the signature is parsed but not checked (``inspect`` only).
    """
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise BundleError(f"bundle file not found: {path}") from exc
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{path.name} is not a readable zip (truncated or corrupt): {exc}") from exc
    with zf:
        try:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise BundleError(f"bundle has {len(infos)} entries; at most {MAX_ENTRIES} are allowed")
            seen: set[str] = set()
            total = 0
            for info in infos:
                reason = unsafe_path_reason(info.filename)
                if reason is not None:
                    raise BundleError(f"bundle entry {info.filename!r} is not allowed: {reason}")
                if info.filename in seen:
                    raise BundleError(f"bundle entry {info.filename!r} appears twice")
                seen.add(info.filename)
                if info.flag_bits & 0x1:
                    raise BundleError(f"bundle entry {info.filename!r} is encrypted")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BundleError(f"bundle entry {info.filename!r} is a symbolic link")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise BundleError(f"bundle entry {info.filename!r} uses an unsupported compression")
                total += info.file_size
                if total > MAX_TOTAL_UNCOMPRESSED:
                    raise BundleError(
                        f"bundle expands to more than {MAX_TOTAL_UNCOMPRESSED // (1024 * 1024)} MB; refused"
                    )
            for required in (MANIFEST, SIGNATURE):
                if required not in seen:
                    raise BundleError(f"bundle has no {required}")
            manifest_bytes = _read_member(zf, zf.getinfo(MANIFEST), MAX_MANIFEST_BYTES)
            sig_bytes = _read_member(zf, zf.getinfo(SIGNATURE), 4096)
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{path.name} is corrupt: {exc}") from exc

        if trusted is not None:
            key_id = verify_manifest_signature(manifest_bytes, sig_bytes, trusted)
        else:
            key_id = parse_signature(sig_bytes)[0]
        manifest = parse_manifest(manifest_bytes)
        if before_extract is not None:
            before_extract(manifest)

        expected = _expected_files(manifest)
        present = seen - {MANIFEST, SIGNATURE}
        extra = sorted(present - expected.keys())
        if extra:
            raise BundleError(f"bundle contains {extra[0]!r}, which the manifest does not list")
        missing = sorted(expected.keys() - present)
        if missing:
            raise BundleError(f"{missing[0]!r} is listed in the manifest but missing from the bundle")

        try:
            for name in sorted(expected):
                _extract(zf, zf.getinfo(name), dest, expected[name])
            for name, data in ((MANIFEST, manifest_bytes), (SIGNATURE, sig_bytes)):
                with (dest / name).open("xb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{path.name} is corrupt: {exc}") from exc
    return VerifiedBundle(
        directory=dest,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        key_id=key_id,
        signature_checked=trusted is not None,
    )


def verify_bundle(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    trusted_keys: Iterable[TrustedKey],
    now: float,
    before_extract: Callable[[Mapping[str, Any]], None] | None = None,
) -> VerifiedBundle:
    """Fully verify a bundle zip and extract it into the empty directory ``dest``.

    Checks the signature against ``trusted_keys``, every sha256, that the zip holds exactly
    the files the manifest lists under plain relative paths, size limits, the format, that
    ``min_sdk`` is not newer than this SDK and that the bundle has not expired at ``now``.
    Any failure raises ``BundleError`` with a one-line reason.
    """

    def policy(manifest: Mapping[str, Any]) -> None:
        check_policy(manifest, now=now)
        if before_extract is not None:
            before_extract(manifest)

    return _read_bundle(Path(path), Path(dest), trusted=trusted_key_map(trusted_keys), before_extract=policy)


def inspect_bundle(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> VerifiedBundle:
    """Extract a bundle for display: structure and hashes are checked, the signature is NOT."""
    return _read_bundle(Path(path), Path(dest), trusted=None)


def count_offers(catalog_path: Path) -> int:
    """Number of offers in a compiled ``catalog.sqlite``."""
    try:
        conn = sqlite3.connect(f"{catalog_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT COUNT(*) FROM offers").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BundleError(f"catalog {catalog_path.name} is unreadable: {exc}") from exc
    return int(row[0])


def bundle_info(manifest: Mapping[str, Any], directory: Path, *, installed_at: float) -> BundleInfo:
    """The :class:`BundleInfo` of an extracted bundle."""
    return BundleInfo(
        name=manifest["name"],
        version=manifest["version"],
        installed_at=installed_at,
        offer_count=count_offers(directory / manifest["catalog"]["path"]),
        created_at=manifest["created_at"],
        expires_at=manifest.get("expires_at"),
        models=tuple(m["id"] for m in manifest["models"]),
    )


def load_trusted_keys(
    keys: Iterable[bytes | str | os.PathLike[str]] | bytes | str | os.PathLike[str],
) -> list[TrustedKey]:
    """Parse trusted public keys: ``signing.pub`` contents (bytes) or paths to them.

    A single key (not in a list) is accepted too. Bad keys raise ``InputError``.
    """
    if isinstance(keys, bytes | bytearray | str | os.PathLike):
        keys = [keys]
    return [load_public_key(k) for k in keys]


# -- the device's store ----------------------------------------------------------------------


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class BundleStore:
    """The bundles of one device: staged, active, previous; switched atomically.

    ``active.json`` holds the active and previous pointers and, per bundle name, the highest
    version ever installed (rollback protection). Single writer: the owning ``Client``
    serialises installs.
    """

    def __init__(self, root: Path, *, trusted_keys: Iterable[TrustedKey], clock: Clock) -> None:
        self.root = Path(root)
        self.trusted_keys = list(trusted_keys)
        self.clock = clock
        self._state_path = self.root / _STATE_FILE

    # -- state file --------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = self._state_path.read_bytes()
        except FileNotFoundError:
            return {"format": 1, "active": None, "previous": None, "highest": {}}
        except OSError as exc:
            raise BundleError(f"cannot read bundle state {self._state_path}: {exc}") from exc
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or not isinstance(state.get("highest"), dict):
                raise ValueError("not a bundle state object")
            for slot in ("active", "previous"):
                entry = state.get(slot)
                if entry is not None and not (
                    isinstance(entry, dict) and isinstance(entry.get("dir"), str)
                    and isinstance(entry.get("installed_at"), int | float)
                    and isinstance(entry.get("manifest_sha256"), str)
                ):
                    raise ValueError(f"bad {slot} entry")
        except ValueError as exc:
            raise BundleError(f"bundle state {self._state_path} is corrupt: {exc}") from exc
        return state

    def _write_state(self, state: Mapping[str, Any]) -> None:
        try:
            _write_json_atomic(self._state_path, state)
        except OSError as exc:
            raise BundleError(f"cannot switch bundles: writing {self._state_path} failed: {exc}") from exc

    def highest_versions(self) -> dict[str, int]:
        """Highest version ever installed, per bundle name."""
        return dict(self._read_state()["highest"])

    # -- opening installed bundles --------------------------------------------------------

    def _open_entry(self, entry: Mapping[str, Any], slot: str) -> StagedBundle:
        rel = entry["dir"]
        if unsafe_path_reason(rel) is not None:
            raise BundleError(f"{slot} bundle pointer {rel!r} is not a path under {self.root}")
        directory = self.root / rel
        what = f"{slot} bundle at {directory}"
        try:
            manifest_bytes = (directory / MANIFEST).read_bytes()
        except OSError as exc:
            raise BundleError(f"{what} is missing its manifest: {exc.strerror or exc}") from exc
        if hashlib.sha256(manifest_bytes).hexdigest() != entry["manifest_sha256"]:
            raise BundleError(f"{what} was modified on disk (manifest.json changed since install)")
        manifest = parse_manifest(manifest_bytes)
        for name, digest in sorted(_expected_files(manifest).items()):
            try:
                actual = sha256_file(directory / name)
            except OSError as exc:
                raise BundleError(f"{what} was modified on disk ({name}: {exc.strerror or exc})") from exc
            if actual != digest:
                raise BundleError(f"{what} was modified on disk ({name} does not match its sha256)")
        info = bundle_info(manifest, directory, installed_at=float(entry["installed_at"]))
        return StagedBundle(directory, manifest, info, entry["manifest_sha256"])

    def active(self) -> StagedBundle | None:
        """The active bundle, its files re-hashed against the manifest; ``None`` if none yet."""
        entry = self._read_state().get("active")
        return None if entry is None else self._open_entry(entry, "active")

    def previous(self) -> StagedBundle | None:
        """The bundle that was active before the current one (for one-step rollback)."""
        entry = self._read_state().get("previous")
        return None if entry is None else self._open_entry(entry, "previous")

    # -- install -------------------------------------------------------------------------

    def is_active_copy(self, path: Path) -> bool:
        """Whether the zip at ``path`` holds exactly the active bundle (the same manifest bytes).

        Installing it again then changes nothing, so it is not an error (a provisioning script
        run twice). Only the manifest is read; any doubt (unreadable, no manifest) is ``False``
        and the full verification of an install reports it.
        """
        entry = self._read_state().get("active")
        if entry is None:
            return False
        try:
            with zipfile.ZipFile(path) as zf:
                manifest_bytes = _read_member(zf, zf.getinfo(MANIFEST), MAX_MANIFEST_BYTES)
        except (KeyError, BundleError):
            return False
        except _ZIP_ERRORS:  # OSError among them
            return False
        return hashlib.sha256(manifest_bytes).hexdigest() == entry["manifest_sha256"]

    def _check_version(self, manifest: Mapping[str, Any], *, force: bool) -> None:
        if force:
            return
        name, version = manifest["name"], manifest["version"]
        highest = self._read_state()["highest"].get(name)
        if isinstance(highest, int) and version < highest:
            raise BundleError(
                f"bundle {name} v{version} is older than v{highest}, the highest installed "
                "(rollback protection; use force=True to install it anyway)"
            )
        if isinstance(highest, int) and version == highest:
            raise BundleError(
                f"bundle {name} v{version} was already installed (equal to the highest installed "
                "version); use force=True to reinstall it"
            )

    def stage(self, path: Path, *, force: bool) -> StagedBundle:
        """Verify the zip at ``path`` and extract it into its final directory (not active yet)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as exc:
            raise BundleError(f"cannot create a staging directory under {self.root}: {exc}") from exc
        try:
            verified = verify_bundle(
                path,
                tmp,
                trusted_keys=self.trusted_keys,
                now=self.clock.now(),
                before_extract=lambda m: self._check_version(m, force=force),
            )
            manifest = verified.manifest
            info = bundle_info(manifest, tmp, installed_at=0.0)
            final = self.root / manifest["name"] / f"{manifest['version']}-{uuid.uuid4().hex[:12]}"
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"cannot stage bundle {Path(path).name}: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StagedBundle(final, manifest, info, verified.manifest_sha256)

    def _kept_dirs(self, state: Mapping[str, Any]) -> set[str]:
        return {e["dir"] for e in (state.get("active"), state.get("previous")) if e is not None}

    def discard(self, staged: StagedBundle) -> None:
        """Remove a staged bundle that will not be committed (never the active or previous one)."""
        try:
            rel = staged.directory.relative_to(self.root).as_posix()
        except ValueError:
            return
        try:
            kept = self._kept_dirs(self._read_state())
        except BundleError:
            return  # cannot tell what is in use: leave it for the next sweep
        if rel in kept:
            return
        shutil.rmtree(staged.directory, ignore_errors=True)

    def _entry(self, staged: StagedBundle, installed_at: float) -> dict[str, Any]:
        return {
            "dir": staged.directory.relative_to(self.root).as_posix(),
            "installed_at": installed_at,
            "manifest_sha256": staged.manifest_sha256 or sha256_file(staged.directory / MANIFEST),
            "name": staged.info.name,
            "version": staged.info.version,
        }

    def commit(self, staged: StagedBundle) -> BundleInfo:
        """Make a staged bundle active with one atomic pointer flip; keep the old one as previous."""
        try:
            state = self._read_state()
            now = self.clock.now()
            entry = self._entry(staged, now)
            old = state.get("active")
            highest = dict(state["highest"])
            name, version = staged.info.name, staged.info.version
            highest[name] = max(version, int(highest.get(name, 0)))
            new_state = {
                "format": 1,
                "active": entry,
                "previous": old if old is not None and old["dir"] != entry["dir"] else state.get("previous"),
                "highest": highest,
            }
            self._write_state(new_state)
        except BaseException:
            self.discard(staged)
            raise
        self._sweep(new_state)
        return _with_installed_at(staged.info, now)

    def rollback(self) -> BundleInfo:
        """Make the previous bundle active again (one step; the rolled-back bundle is removed)."""
        state = self._read_state()
        if state.get("previous") is None:
            raise BundleError("there is no previous bundle to roll back to")
        previous = self._open_entry(state["previous"], "previous")
        now = self.clock.now()
        new_state = {
            "format": 1,
            "active": {**state["previous"], "installed_at": now},
            "previous": None,
            "highest": state["highest"],
        }
        self._write_state(new_state)
        self._sweep(new_state)
        return _with_installed_at(previous.info, now)

    def _sweep(self, state: Mapping[str, Any]) -> None:
        """Delete bundle directories that are neither active nor previous (best effort)."""
        keep = self._kept_dirs(state)
        try:
            children = list(self.root.iterdir())
        except OSError:
            return
        for child in children:
            if not child.is_dir() or child.is_symlink():
                continue
            if child.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(child, ignore_errors=True)  # left over from a crashed install
                continue
            try:
                version_dirs = list(child.iterdir())
            except OSError:
                continue
            for version_dir in version_dirs:
                if version_dir.is_dir() and f"{child.name}/{version_dir.name}" not in keep:
                    shutil.rmtree(version_dir, ignore_errors=True)
            try:
                child.rmdir()  # only succeeds when empty
            except OSError:
                pass


def _with_installed_at(info: BundleInfo, installed_at: float) -> BundleInfo:
    from dataclasses import replace

    return replace(info, installed_at=installed_at)
