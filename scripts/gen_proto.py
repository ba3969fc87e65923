"""Generate the Python code of the nbo.v1 wire contract from proto/nbo/v1/*.proto.

Usage::

    python scripts/gen_proto.py           # (re)write proto/nbo/v1/*_pb2.py, *_pb2_grpc.py, *_pb2.pyi
    python scripts/gen_proto.py --check   # generate into a temp dir; exit 1 listing stale files

The include root is ``proto/``, so generated modules import each other as ``from nbo.v1 import
x_pb2`` — the package ``nbo.v1`` is mapped to ``proto/nbo/v1`` by pyproject.toml. Output is
deterministic for a given grpcio-tools version (files are passed in sorted order, relative paths
only), so the committed files can be compared byte for byte.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "nbo" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def proto_files() -> list[str]:
    """The .proto files of the package, relative to the include root, sorted."""
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PACKAGE_DIR.glob("*.proto"))


def is_generated(name: str) -> bool:
    """True for a file name protoc produces in this package."""
    return name.endswith(GENERATED_SUFFIXES)


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every contract file, writing under ``out_root`` (mirrors ``proto/``).

    Returns the generated files, relative to ``out_root``.
    """
    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files in {PACKAGE_DIR}")
    out_root.mkdir(parents=True, exist_ok=True)
    # `python -m grpc_tools.protoc` adds the bundled google/protobuf/*.proto include path itself.
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        *files,
    ]
    result = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")
    return sorted(
        p.relative_to(out_root) for p in out_root.rglob("*") if p.is_file() and is_generated(p.name)
    )


def stale_files() -> list[str]:
    """Generated files under proto/ that differ from a fresh generation, are missing or are extra."""
    committed = {
        p.relative_to(PROTO_ROOT) for p in PACKAGE_DIR.iterdir() if p.is_file() and is_generated(p.name)
    }
    with tempfile.TemporaryDirectory(prefix="nbo-proto-") as tmp:
        fresh_root = Path(tmp)
        fresh = set(generate(fresh_root))
        stale: list[str] = []
        for rel in sorted(fresh | committed):
            current = PROTO_ROOT / rel
            if rel not in fresh:
                stale.append(f"{current.relative_to(ROOT)} (extra: no .proto generates it)")
            elif rel not in committed:
                stale.append(f"{current.relative_to(ROOT)} (missing)")
            elif current.read_bytes() != (fresh_root / rel).read_bytes():
                stale.append(f"{current.relative_to(ROOT)} (differs)")
    return stale


def write() -> list[Path]:
    """Regenerate in place: generate into a temp dir, then replace the package's generated files."""
    with tempfile.TemporaryDirectory(prefix="nbo-proto-") as tmp:
        fresh_root = Path(tmp)
        fresh = generate(fresh_root)
        for old in PACKAGE_DIR.iterdir():
            if old.is_file() and is_generated(old.name):
                old.unlink()
        for rel in fresh:
            target = PROTO_ROOT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh_root / rel, target)
    return [PROTO_ROOT / rel for rel in fresh]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report stale generated files; exit 1 if any"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated protobuf files (run `make proto`):")
            for line in stale:
                print(f"  {line}")
            return 1
        print("generated protobuf files are up to date")
        return 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
