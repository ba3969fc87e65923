"""`nbo bundle build | verify | inspect`: make a signed bundle, check one, look inside one."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from nbo.model_export import format_table
from nbo.sdk import BundleError, InputError
from nbo.sdk.core import UsageError

from ._common import add_command, iso_time, positive_int
from .decide import open_device


def register(sub: Any) -> None:
    bundle = add_command(sub, "bundle", help="build, verify, inspect, install and roll back signed bundles",
                         description="Build, verify and inspect signed offer bundles (catalog + ONNX models); "
                         "install one on a device, or roll a device back.",
                         examples=["nbo bundle build --catalog catalog.yaml --model propensity=model/propensity.onnx "
                                   "--name retail --version 1 --key keys/signing.key --out retail-v1.zip",
                                   "nbo bundle verify retail-v1.zip --trusted-key keys/signing.pub",
                                   "nbo bundle inspect retail-v1.zip"])
    bsub = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND")

    build = add_command(
        bsub, "build",
        help="validate a catalog, add models, sign, write the bundle zip",
        description="Validate and compile a catalog (YAML or JSON), type-check its rules, add ONNX models, "
        "sign the manifest with an Ed25519 key and write one bundle zip.",
        examples=["nbo bundle build --catalog catalog.yaml --model propensity=model/propensity.onnx \\\n"
                  "      --name retail --version 2 --key keys/signing.key --out retail-v2.zip",
                  "nbo bundle build --catalog catalog.yaml --name retail --version 3 --key keys/signing.key "
                  "--out retail-v3.zip --expires-at 2027-01-31T00:00:00Z"],
    )
    build.add_argument("--catalog", required=True, metavar="FILE", help="catalog authoring file (.yaml or .json)")
    build.add_argument("--model", action="append", default=[], metavar="ID=PATH.onnx",
                       help="a propensity model and its id (repeatable); offers refer to it by model_id")
    build.add_argument("--name", required=True, metavar="NAME", help="bundle name (letters, digits, '.', '_', '-')")
    build.add_argument("--version", required=True, type=positive_int, metavar="N",
                       help="bundle version, an integer >= 1, strictly increasing per name")
    build.add_argument("--key", required=True, metavar="KEYFILE", help="the private signing key (signing.key)")
    build.add_argument("--out", required=True, metavar="FILE.zip", help="where to write the bundle")
    build.add_argument("--expires-at", metavar="ISO", type=iso_time,
                       help="optional expiry, e.g. 2027-01-31T00:00:00Z")
    build.add_argument("--promote", metavar="EXPERIMENT=ARM",
                       help="build with this challenger arm as the new champion (its replacements written into "
                            "the catalog; the experiment removed unless --keep-old-champion)")
    build.add_argument("--keep-old-champion", action="store_true",
                       help="with --promote: keep the experiment, the old champion as a challenger arm")
    build.add_argument("--promoted-catalog", metavar="FILE",
                       help="with --promote: also write the promoted catalog (YAML) to FILE, for the next build")
    build.set_defaults(func=_build)

    verify = add_command(
        bsub, "verify",
        help="check a bundle's signature, hashes and limits",
        description="Verify a bundle as a device would (signature by a trusted key, every sha256, paths, "
        "size limits, expiry, min_sdk). Exit 0 and a summary when valid; one line and exit 1 when not.",
        examples=["nbo bundle verify retail-v1.zip --trusted-key keys/signing.pub",
                  "nbo bundle verify retail-v2.zip --trusted-key old.pub --trusted-key new.pub   # key rotation"],
    )
    verify.add_argument("bundle", metavar="FILE.zip", help="the bundle to verify")
    verify.add_argument("--trusted-key", action="append", required=True, metavar="PUB",
                        help="a trusted public key file (signing.pub); repeatable")
    verify.set_defaults(func=_verify)

    inspect = add_command(
        bsub, "inspect",
        help="show a bundle's manifest, models, offers, rules, strategies and contact policies",
        description="Show what is inside a bundle as tables. Structure and hashes are checked; the "
        "signature is not (use `nbo bundle verify` for that).",
        examples=["nbo bundle inspect retail-v1.zip", "nbo bundle inspect retail-v1.zip | less -S"],
    )
    inspect.add_argument("bundle", metavar="FILE.zip", help="the bundle to inspect")
    inspect.set_defaults(func=_inspect)

    install = add_command(
        bsub, "install",
        help="verify and install a bundle on a device's state directory",
        description="Install a bundle on a device the way sync does: verify (trusted key, hashes, "
        "rollback protection, min_sdk, expiry), load and warm its models, then switch atomically. "
        "The previous bundle is kept for `nbo bundle rollback`. A refused bundle leaves the state "
        "directory as it was (a new one is not created).",
        examples=["nbo bundle install retail-v1.zip --state pos-1 --device-id pos-1 --trusted-key keys/signing.pub",
                  "nbo bundle install retail-v1.zip --state pos-1 --trusted-key keys/signing.pub --force"],
    )
    install.add_argument("bundle", metavar="FILE.zip", help="the bundle to install")
    install.add_argument("--state", required=True, metavar="DIR", help="the device state directory")
    install.add_argument("--trusted-key", action="append", required=True, metavar="PUB",
                         help="a trusted public key file (signing.pub); repeatable")
    install.add_argument("--device-id", metavar="ID", help="the device id (required for a new state directory; "
                         "default: the one recorded in it)")
    install.add_argument("--force", action="store_true",
                         help="install even if the version is not newer than the highest ever installed")
    install.set_defaults(func=_install)

    rollback = add_command(
        bsub, "rollback",
        help="switch a device back to its previous bundle",
        description="Switch the device back to the bundle that was active before the last install.",
        examples=["nbo bundle rollback --state pos-1 --trusted-key keys/signing.pub"],
    )
    rollback.add_argument("--state", required=True, metavar="DIR", help="the device state directory")
    rollback.add_argument("--trusted-key", action="append", required=True, metavar="PUB",
                          help="a trusted public key file (signing.pub); repeatable")
    rollback.add_argument("--device-id", metavar="ID", help="the device id (default: the one recorded in the state directory)")
    rollback.set_defaults(func=_rollback)


def _install(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    if not bundle.is_file():
        raise InputError(f"{bundle}: bundle file not found" if not bundle.exists() else f"{bundle} is not a file",
                         field="FILE.zip")
    state_dir = Path(args.state)
    undo = _undo_new_state(state_dir)
    try:
        with open_device(args, new_ok=True) as client:
            before = client.bundle
            info = client.install_bundle(bundle, force=args.force)
    except BaseException:
        undo()
        raise
    if info == before:
        print(f"{info.name} v{info.version} is already the active bundle in {args.state}; nothing to install")
        return 0
    print(f"installed {info.name} v{info.version} ({info.offer_count} offers) in {args.state}")
    return 0


def _undo_new_state(state_dir: Path) -> Any:
    """What removes a device state directory this install creates, should the install fail.

    Nothing for an existing device (a refused bundle leaves its state as it was); for a new
    one, the directories created on the way and the state files written into an existing
    empty directory.
    """
    if (state_dir / "state.sqlite").exists():
        return lambda: None
    top = state_dir
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    existed = set(state_dir.iterdir()) if state_dir.is_dir() else None

    def undo() -> None:
        if existed is None:
            shutil.rmtree(top, ignore_errors=True)  # the topmost directory this install created
            return
        for path in set(state_dir.iterdir()) - existed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    return undo


def _rollback(args: argparse.Namespace) -> int:
    with open_device(args) as client:
        info = client.rollback()
    print(f"rolled back to {info.name} v{info.version} ({info.offer_count} offers) in {args.state}")
    return 0


def _parse_models(specs: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for spec in specs:
        model_id, sep, path = spec.partition("=")
        if not sep or not model_id or not path:
            raise InputError(f"--model must look like ID=PATH.onnx, got {spec!r}", field="model")
        if model_id in models:
            raise InputError(f"--model id {model_id!r} is given twice", field="model")
        models[model_id] = path
    return models


def _build(args: argparse.Namespace) -> int:
    from nbo.model_export import build_bundle, load_catalog_file, promote_arm

    catalog: Any = args.catalog
    if args.promote is not None:
        experiment, _, arm = args.promote.partition("=")
        if not experiment or not arm:
            raise UsageError(f"--promote must be EXPERIMENT=ARM, not {args.promote!r}")
        catalog = promote_arm(load_catalog_file(args.catalog), experiment, arm,
                              keep_old_champion=args.keep_old_champion)
        if args.promoted_catalog is not None:
            _write_catalog(Path(args.promoted_catalog), catalog)
    elif args.keep_old_champion or args.promoted_catalog is not None:
        raise UsageError("--keep-old-champion and --promoted-catalog go with --promote")
    built = build_bundle(
        catalog=catalog,
        models=_parse_models(args.model),
        name=args.name,
        version=args.version,
        key=args.key,
        out=args.out,
        expires_at=args.expires_at,
    )
    m = built.manifest
    models = ", ".join(x["id"] for x in m["models"]) or "none"
    print(f"built {built.path}: bundle {m['name']} v{m['version']}, {built.offer_count} offers, models: {models}")
    print(f"signed by key {built.key_id}; sha256 {built.sha256}")
    if args.promote is not None:
        print(f"promoted {args.promote} to champion" + (f"; catalog written to {args.promoted_catalog}"
                                                         if args.promoted_catalog else ""))
    return 0


def _write_catalog(path: Path, catalog: Any) -> None:
    import yaml

    if path.exists():
        raise UsageError(f"--promoted-catalog: {path} already exists")
    try:
        path.write_text(yaml.safe_dump(catalog, sort_keys=False, allow_unicode=True), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--promoted-catalog: cannot write {path}: {exc.strerror or exc}") from exc


def _verify(args: argparse.Namespace) -> int:
    from nbo.sdk import SystemClock
    from nbo.sdk.core import count_offers, load_trusted_keys, verify_bundle

    trusted = load_trusted_keys([Path(p) for p in args.trusted_key])
    with tempfile.TemporaryDirectory(prefix="nbo-verify-") as tmp:
        verified = verify_bundle(Path(args.bundle), tmp, trusted_keys=trusted, now=SystemClock().now())
        m = verified.manifest
        offers = count_offers(Path(tmp) / m["catalog"]["path"])
    print(f"OK: bundle {m['name']} v{m['version']} is valid, signed by trusted key {verified.key_id}")
    print(f"created: {m['created_at']}  expires: {m.get('expires_at') or 'never'}  min_sdk: {m['min_sdk']}")
    models = ", ".join(f"{x['id']} ({len(x['inputs'])} inputs)" for x in m["models"]) or "none"
    print(f"models: {models}")
    print(f"offers: {offers}")
    return 0


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    try:
        return [tuple(r) for r in conn.execute(sql)]
    except sqlite3.Error as exc:
        raise BundleError(f"catalog is unreadable: {exc}") from exc


def _inspect(args: argparse.Namespace) -> int:
    from nbo.sdk.core import inspect_bundle

    with tempfile.TemporaryDirectory(prefix="nbo-inspect-") as tmp:
        found = inspect_bundle(Path(args.bundle), tmp)
        m = found.manifest
        catalog = Path(tmp) / m["catalog"]["path"]
        try:
            conn = sqlite3.connect(f"{catalog.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise BundleError(f"catalog is unreadable: {exc}") from exc
        try:
            offers = _rows(conn, "SELECT offer_id, name, category, channels, value, lever, model_id, mandatory, "
                                 "fallback, valid_from, valid_to FROM offers ORDER BY offer_id")
            rules = _rows(conn, "SELECT rule_id, kind, applies_to, expression FROM rules ORDER BY rule_id")
            strategies = _rows(conn, "SELECT strategy, weights FROM strategies ORDER BY strategy")
            assignment = _rows(conn, "SELECT priority, condition, strategy FROM strategy_assignment "
                                     "ORDER BY priority")
            policies = _rows(conn, "SELECT policy_id, applies_to, scope, event, max_count, window_days, channel "
                                   "FROM contact_policies ORDER BY policy_id")
            meta = dict(_rows(conn, "SELECT key, value FROM meta ORDER BY key"))
        finally:
            conn.close()

    manifest_rows: list[tuple[str, Any]] = [
        ("name", m["name"]), ("version", m["version"]), ("format", m["format"]),
        ("created_at", m["created_at"]), ("expires_at", m.get("expires_at") or "never"),
        ("min_sdk", m["min_sdk"]), ("signed by key", f"{found.key_id} (signature not checked; use verify)"),
        ("catalog sha256", m["catalog"]["sha256"]),
    ]
    manifest_rows += [(f"meta.{k}", v) for k, v in sorted(meta.items()) if k != "categories"]
    manifest_rows += [(f"file {p}", digest) for p, digest in sorted(m.get("files", {}).items())]
    sections = [
        format_table(["field", "value"], manifest_rows, title="Manifest"),
        format_table(
            ["model", "path", "sha256", "inputs", "output"],
            [(x["id"], x["path"], x["sha256"][:16], len(x["inputs"]), x["output"]) for x in m["models"]],
            title=f"Models ({len(m['models'])})",
        ),
        # one row per input: a model reads tens of them, which on one line ran to 600 characters
        format_table(
            ["model", "input", "type", "filled from"],
            [(x["id"], i["name"], i["type"], i["name"].replace("__", ".", 1)) for x in m["models"] for i in x["inputs"]],
            title=f"Model inputs ({sum(len(x['inputs']) for x in m['models'])})",
        ),
        format_table(
            ["offer_id", "name", "category", "channels", "value", "lever", "model", "mandatory", "fallback",
             "valid_from", "valid_to"],
            [(o[0], o[1], o[2], ", ".join(json.loads(o[3] or "[]")) or "all", o[4], o[5], o[6] or "",
              bool(o[7]), bool(o[8]), o[9] or "", o[10] or "") for o in offers],
            title=f"Offers ({len(offers)})",
        ),
        format_table(["rule_id", "kind", "applies_to", "expression"], rules, title=f"Rules ({len(rules)})"),
        format_table(
            ["strategy", "weights"],
            [(s[0], ", ".join(f"{k}={v:g}" for k, v in json.loads(s[1]).items()) or "(all 1.0)")
             for s in strategies],
            title=f"Strategies ({len(strategies)})",
        ),
        format_table(["priority", "condition", "strategy"], assignment,
                     title=f"Strategy assignment ({len(assignment)}, first match wins)"),
        format_table(
            ["policy_id", "applies_to", "scope", "event", "max_count", "window_days", "channel"],
            [(*p[:6], p[6] or "any") for p in policies],
            title=f"Contact policies ({len(policies)})",
        ),
    ]
    if meta.get("experiments"):
        sections.append(_experiments_table(meta["experiments"]))
    print("\n\n".join(sections))
    return 0


def _experiments_table(text: str) -> str:
    """The bundle's experiments, one row per arm (docs/experiments.md)."""
    try:
        experiments = json.loads(text)
        rows = []
        for e in experiments:
            traffic = f"[{e['offset']:g}, {e['offset'] + e['share']:g})"
            for a in e["arms"]:
                replaces = "; ".join(
                    [f"model {old}→{new}" for old, new in (a.get("models") or {}).items()]
                    + [f"lever {o}={v:g}" for o, v in (a.get("levers") or {}).items()]
                    + [f"{st}.{c}={w:g}" for st, ws in (a.get("strategy_weights") or {}).items() for c, w in ws.items()])
                rows.append((e["id"], e["seed"], traffic, a["id"], a["kind"],
                             "shadow" if a.get("shadow") else f"{a['weight']:g}", replaces))
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"catalog meta.experiments is unreadable: {exc!r}") from exc
    return format_table(["experiment", "seed", "traffic", "arm", "kind", "weight", "replaces"], rows,
                        title=f"Experiments ({len(experiments)})")
