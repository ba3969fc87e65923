"""`nbo keys generate`: create the Ed25519 key pair that signs bundles."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_command


def register(sub: Any) -> None:
    keys = add_command(sub, "keys", help="manage bundle signing keys",
                       description="Manage the Ed25519 keys that sign bundles.",
                       examples=["nbo keys generate --out keys"])
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    gen = add_command(
        keys_sub, "generate",
        help="write a new signing key pair",
        description="Write DIR/signing.key (private, PEM PKCS#8, mode 0600) and DIR/signing.pub "
        "(public, PEM). Give signing.pub to devices as a trusted key; keep signing.key secret.",
        examples=["nbo keys generate --out keys", "nbo keys generate --out keys --force   # replace a lost pair"],
    )
    gen.add_argument("--out", required=True, metavar="DIR", help="directory to write the key pair into")
    gen.add_argument("--force", action="store_true", help="overwrite an existing key pair in DIR")
    gen.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from nbo.model_export import generate_keys

    keys = generate_keys(args.out, force=args.force)
    print(f"private key: {keys.private_key}  (keep secret; mode 0600)")
    print(f"public key:  {keys.public_key}  (give to devices as a trusted key)")
    print(f"key id:      {keys.key_id}")
    return 0
