"""Helpers for bundle tests: a real small ONNX model (scikit-learn + skl2onnx) and signed bundles.

The model is trained once per process and its bytes reused; every test writes its own copy
under its own ``tmp_path``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nbo.model_export import build_bundle, generate_keys, load_catalog_file

DATA = Path(__file__).parent / "data"
CATALOG_YAML = DATA / "catalog_small.yaml"
CATALOG_JSON = DATA / "catalog_small.json"

# Inputs named per the contract (docs/training.md): source prefix + raw feature name.
DEFAULT_INPUTS: tuple[tuple[str, str], ...] = (
    ("customer__frequency", "float"),
    ("customer__lifecycle_stage", "string"),
    ("offer__category", "string"),
    ("context__channel", "string"),
)


@functools.lru_cache(maxsize=8)
def _model_bytes(inputs: tuple[tuple[str, str], ...], seed: int) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(seed)
    n = 240
    columns: list[np.ndarray] = []
    for _, kind in inputs:
        if kind == "float":
            col = rng.integers(0, 20, n).astype(np.float64)
            col[::13] = np.nan
        else:
            col = rng.choice(np.array(["a", "b", "c", ""], dtype=object), n)
        columns.append(col)
    X = np.empty((n, len(inputs)), dtype=object)
    for j, col in enumerate(columns):
        X[:, j] = col
    float_idx = [j for j, (_, kind) in enumerate(inputs) if kind == "float"]
    string_idx = [j for j, (_, kind) in enumerate(inputs) if kind == "string"]
    signal = np.zeros(n)
    if float_idx:
        signal += np.nan_to_num(columns[float_idx[0]].astype(np.float64)) > 8
    if string_idx:
        signal += columns[string_idx[0]] == "a"
    y = (signal + rng.random(n) * 0.5 > 0.7).astype(int)
    y[:2] = [0, 1]  # both classes, whatever the seed
    transformers: list[tuple[str, Any, list[int]]] = []
    if float_idx:
        transformers.append(("num", SimpleImputer(strategy="median"), float_idx))
    if string_idx:
        transformers.append((
            "cat",
            Pipeline([
                ("impute", SimpleImputer(missing_values="", strategy="constant", fill_value="missing")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]),
            string_idx,
        ))
    model = Pipeline([("prep", ColumnTransformer(transformers)), ("clf", LogisticRegression(max_iter=200))])
    model.fit(X, y)
    initial_types = [
        (name, FloatTensorType([None, 1]) if kind == "float" else StringTensorType([None, 1]))
        for name, kind in inputs
    ]
    onx = convert_sklearn(
        model, initial_types=initial_types, options={id(model.steps[-1][1]): {"zipmap": False}}, target_opset=17
    )
    return onx.SerializeToString()


def make_model(path: Path, *, inputs: Sequence[tuple[str, str]] = DEFAULT_INPUTS, seed: int = 0) -> Path:
    """Write a small real ONNX propensity model (a fitted sklearn pipeline) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_model_bytes(tuple(inputs), seed))
    return path


def small_catalog() -> dict[str, Any]:
    """The raw test catalog (a fresh copy each call, safe to modify)."""
    return load_catalog_file(CATALOG_YAML)


def make_keys(directory: Path) -> tuple[Path, Path]:
    """A fresh signing key pair; returns ``(signing.key, signing.pub)``."""
    keys = generate_keys(directory)
    return keys.private_key, keys.public_key


def make_bundle(
    directory: Path,
    *,
    key: Path,
    version: int = 1,
    name: str = "small",
    catalog: Path | Mapping[str, Any] | None = None,
    models: Mapping[str, Path] | None = None,
    expires_at: str | None = None,
    created_at: str | None = "2026-01-01T00:00:00Z",
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Build a signed bundle from a catalog and models into ``directory/<name>-v<version>.zip``."""
    directory.mkdir(parents=True, exist_ok=True)
    if models is None:
        models = {"propensity": make_model(directory / "models-src" / "propensity.onnx")}
    out = directory / f"{name}-v{version}.zip"
    build_bundle(
        catalog=CATALOG_YAML if catalog is None else catalog,
        models=models,
        name=name,
        version=version,
        key=key,
        out=out,
        expires_at=expires_at,
        created_at=created_at,
        extra_files=extra_files,
    )
    return out


# -- tampering: rewrite a bundle zip the way an attacker or a bad download would -------------


def rewrite_zip(
    src: Path,
    dst: Path,
    *,
    replace: Mapping[str, bytes] | None = None,
    add: Mapping[str, bytes] | None = None,
    remove: Sequence[str] = (),
    symlinks: Sequence[str] = (),
) -> Path:
    """Copy a zip entry by entry, replacing, adding (any name, even ``../x``) or removing entries."""
    import warnings
    import zipfile

    replace = dict(replace or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns on duplicate names; duplicates are the point
            for info in zin.infolist():
                if info.filename in remove:
                    continue
                data = replace.get(info.filename, zin.read(info))
                zout.writestr(info, data)
            for name, data in (add or {}).items():
                entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                entry.compress_type = zipfile.ZIP_DEFLATED
                if name in symlinks:
                    entry.external_attr = (0o120777 << 16)
                zout.writestr(entry, data)
    return dst


def read_member(bundle: Path, name: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(bundle) as zf:
        return zf.read(name)


def flip_byte(data: bytes, index: int | None = None) -> bytes:
    """``data`` with one byte changed (in the middle unless ``index`` is given)."""
    i = len(data) // 2 if index is None else index
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def flip_stored_byte(src: Path, dst: Path, member: str) -> Path:
    """Flip one byte of ``member``'s compressed data in the raw zip file (bit rot / bad download)."""
    import struct
    import zipfile

    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(member)
    raw = bytearray(src.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0x01
    dst.write_bytes(bytes(raw))
    return dst


def resign(src: Path, dst: Path, *, key: Path, mutate: Any) -> Path:
    """Change the manifest with ``mutate(manifest_dict)`` and sign it again with ``key``.

    Models a bundle made by a trusted but different (e.g. future or careless) builder.
    """
    import json

    from nbo.sdk.core import load_private_key, sign_manifest

    manifest = json.loads(read_member(src, "manifest.json"))
    mutate(manifest)
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    sig = sign_manifest(load_private_key(key), manifest_bytes)
    return rewrite_zip(src, dst, replace={"manifest.json": manifest_bytes, "manifest.sig": sig})
