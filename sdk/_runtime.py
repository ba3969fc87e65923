"""A bundle loaded into memory: catalog rows, compiled rules and warm ONNX sessions.

``load_bundle`` is called while installing, *before* the switch, so a bundle whose models
do not load never becomes active. A :class:`LoadedBundle` is immutable once built; a decision
grabs one reference and uses only it, which is what makes the switch atomic for callers.

(Owned by the decision-engine work: precomputed offer columns and compiled rules live here.)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import BundleError
from ._types import BundleInfo

__all__ = ["LoadedBundle", "load_bundle"]


@dataclass(frozen=True, slots=True)
class LoadedBundle:
    info: BundleInfo
    directory: Path
    manifest: Mapping[str, Any]
    offers: tuple[Mapping[str, Any], ...]
    rules: tuple[Mapping[str, Any], ...]
    strategies: Mapping[str, Mapping[str, float]]
    strategy_assignment: tuple[Mapping[str, Any], ...]
    contact_policies: tuple[Mapping[str, Any], ...]
    meta: Mapping[str, str]
    sessions: Mapping[str, Any] = field(default_factory=dict)


def _read_table(conn: sqlite3.Connection, table: str, order: str) -> list[dict[str, Any]]:
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]  # noqa: S608


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_bundle(directory: Path, manifest: Mapping[str, Any], info: BundleInfo) -> LoadedBundle:
    """Read a verified, extracted bundle directory into memory and load its models."""
    catalog_path = directory / manifest["catalog"]["path"]
    try:
        conn = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True)
        try:
            offers = _read_table(conn, "offers", "offer_id")
            rules = _read_table(conn, "rules", "rule_id")
            strategies = {
                r["strategy"]: json.loads(r["weights"]) for r in _read_table(conn, "strategies", "strategy")
            }
            assignment = _read_table(conn, "strategy_assignment", "priority")
            policies = _read_table(conn, "contact_policies", "policy_id")
            meta = {r["key"]: r["value"] for r in _read_table(conn, "meta", "key")}
        finally:
            conn.close()
    except (sqlite3.DatabaseError, KeyError, json.JSONDecodeError) as exc:
        raise BundleError(f"catalog of bundle {info.name} v{info.version} is unreadable: {exc}") from exc
    sessions: dict[str, Any] = {}
    for model in manifest.get("models", []):
        try:
            sessions[model["id"]] = _session(directory / model["path"])
        except Exception as exc:  # onnxruntime raises its own types; none may escape
            raise BundleError(f"model {model.get('id')!r} does not load: {exc}") from exc
    return LoadedBundle(
        info=info,
        directory=directory,
        manifest=manifest,
        offers=tuple(offers),
        rules=tuple(rules),
        strategies=strategies,
        strategy_assignment=tuple(assignment),
        contact_policies=tuple(policies),
        meta=meta,
        sessions=sessions,
    )
