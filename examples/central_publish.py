"""The central CRM team's release: train → report → bundle → publish.

    python examples/central_publish.py [--customers 300] [--model logreg|gbt] [--keep DIR]
    NBO_TOKEN=PUBLISHER_TOKEN python examples/central_publish.py --hub HOST:PORT --key signing.key

1. sample data (stand-in for the CRM extract: customers, transactions, catalog, offer history);
2. train a calibrated propensity model, export it to ONNX (parity-checked against scikit-learn);
3. write the evaluation report (HTML) next to the release;
4. sign a bundle with the catalog and the model;
5. publish it to the gateway, which verifies the signature, serves the bundle to terminals
   and switches its own engine to it — then ask the gateway for a decision to see it live.

Without ``--hub`` it starts a gateway in-process on a free loopback port (SQLite hub) that
trusts a freshly generated key, and shows that a bundle signed with another key is refused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

PUBLISHER_TOKEN = "central-publisher-token"
APP_TOKEN = "central-app-token"


def start_gateway(root: Path, public_key: Path) -> tuple[Any, str]:
    """A gateway in-process on 127.0.0.1:0 trusting ``public_key``, with a SQLite hub."""
    from nbo.gateway import create_server, parse_config

    config = parse_config({
        "tokens": [{"token": PUBLISHER_TOKEN, "role": "publisher"}, {"token": APP_TOKEN, "role": "app"}],
        "trust": {"keys": [str(public_key)]},
        "hub": {"db": f"sqlite:///{root / 'gateway' / 'hub.sqlite'}"},
    })
    server, port = create_server(config, state_dir=root / "gateway", listen="127.0.0.1:0", bundle_poll_seconds=0)
    server.start()
    return server, f"127.0.0.1:{port}"


def ask_gateway(hub: str, customer_id: str) -> None:
    """What an app backend sees now: one gRPC Decide."""
    import grpc
    from nbo.v1 import decision_pb2, decision_pb2_grpc

    with grpc.insecure_channel(hub) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        response = stub.Decide(decision_pb2.DecideRequest(customer_id=customer_id, channel="app", limit=3),
                               metadata=(("authorization", f"Bearer {APP_TOKEN}"),), timeout=10)
    print(f"gateway now decides with bundle {response.bundle_name} v{response.bundle_version}: "
          + " / ".join(f"{o.category.upper()} {o.name} {o.score:.1f}" for o in response.offers))


def release(root: Path, args: argparse.Namespace) -> int:
    from nbo.model_export import (
        PublishRefused,
        build_bundle,
        generate_demo_data,
        generate_keys,
        publish_bundle,
        train_from_directory,
        write_report,
    )

    data = generate_demo_data(root / "data", customers=args.customers, seed=args.seed)
    print(f"[1] data: {data.n_customers} customers, {data.n_transactions} transactions, "
          f"{data.n_history} logged offer shows")

    trained = train_from_directory(data.directory, root / "model", model=args.model, seed=args.seed, progress=False)
    m = trained.metrics
    print(f"[2] model: {trained.model_path.name} ({args.model}), holdout AUC {m['auc']:.3f}, "
          f"log loss {m['log_loss']:.4f}, ONNX parity {m['parity_max_abs_diff']:.1e}")

    release_dir = root / "release"
    report = write_report(trained.model_path.parent, out=release_dir / f"report-v{args.version}.html")
    print(f"[3] report: {report} ({report.stat().st_size // 1024} KiB)")

    own_gateway = args.hub is None
    key = Path(args.key) if args.key else generate_keys(root / "keys").private_key
    built = build_bundle(catalog=data.catalog, models={"propensity": trained.model_path}, name=args.name,
                         version=args.version, key=key, out=release_dir / f"{args.name}-v{args.version}.zip")
    print(f"[4] bundle: {built.path.name}, {built.offer_count} offers, signed by key {built.key_id}, "
          f"sha256 {built.sha256[:16]}…")

    server = None
    try:
        if own_gateway:
            server, hub = start_gateway(root, key.with_name("signing.pub"))
            token = PUBLISHER_TOKEN
        else:
            hub, token = args.hub, args.token
        result = publish_bundle(built.path, hub, token=token, timeout=60)
        state = "published" if result.accepted else "already published (no change)"
        print(f"[5] {hub}: {result.name} v{result.version} {state}, {result.offers} offers")
        if own_gateway:
            ask_gateway(hub, "C000001")
            again = publish_bundle(built.path, hub, token=token, timeout=60)
            print(f"    publishing the same file again: {'accepted' if again.accepted else 'no change'}")
            rogue_key = generate_keys(root / "rogue-keys").private_key
            rogue = build_bundle(catalog=data.catalog, models={"propensity": trained.model_path}, name=args.name,
                                 version=args.version + 1, key=rogue_key, out=root / "rogue.zip")
            try:
                publish_bundle(rogue.path, hub, token=token, timeout=60)
                print("error: the gateway accepted a bundle signed by an untrusted key", file=sys.stderr)
                return 1
            except PublishRefused as exc:  # the gateway verifies the signature before storing anything
                print(f"    a bundle signed by an unknown key is refused: {exc}")
            # another customer: C000001 has had its three app offers for today (a contact policy)
            ask_gateway(hub, "C000002")
    finally:
        if server is not None:
            server.stop(grace=2).wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--customers", type=int, default=300, help="sample customers (default 300)")
    parser.add_argument("--model", choices=("logreg", "gbt"), default="logreg", help="model kind (default logreg)")
    parser.add_argument("--name", default="retail", help="bundle name (default retail)")
    parser.add_argument("--version", type=int, default=1, help="bundle version (default 1)")
    parser.add_argument("--seed", type=int, default=11, help="random seed (default 11)")
    parser.add_argument("--hub", help="publish to this gateway (HOST:PORT) instead of an in-process one")
    parser.add_argument("--token", default=os.environ.get("NBO_TOKEN"),
                        help="publisher token for --hub (default: $NBO_TOKEN, which keeps it out of `ps`)")
    parser.add_argument("--key", help="signing.key to sign with (default: a new key pair)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir, deleted)")
    args = parser.parse_args(argv)
    if args.hub and not (args.token and args.key):
        parser.error("--hub needs a publisher token (NBO_TOKEN or --token) and --key (a key the gateway trusts)")

    from nbo.sdk import NboError

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nbo-central-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return release(root, args)
    except NboError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
