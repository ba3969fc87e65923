"""A mobile-app backend talking to the nbo gateway with nothing but the `.proto` files.

It does not import nbo-edge: at start it compiles ``proto/nbo/v1/*.proto`` with grpc_tools into
a temporary directory and imports the generated stubs from there — exactly what a backend in
any language does with its own protoc plugin. Needs only ``grpcio``, ``grpcio-tools`` and
``protobuf``::

    NBO_TOKEN=APP_TOKEN python examples/mobile_backend_client.py --target 127.0.0.1:50051 \\
        [--ca-file ca.crt] [--client-cert c.crt --client-key c.key] [--customer C42]

It decides offers for a customer, records the response to the top offer, awards and redeems
loyalty points, reads the balance and records a payment linked to the decision, then prints
one ``RESULT {...}`` JSON line with what the gateway answered.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILES = ("nbo/v1/common.proto", "nbo/v1/decision.proto", "nbo/v1/sync.proto", "nbo/v1/publish.proto")


class _Refused(Exception):
    """A call the gateway refused (or answered with nothing to go on): reported in one line."""


def generate_stubs(proto_dir: Path, out_dir: Path) -> None:
    """Compile the nbo.v1 protos (plus the well-known types grpc_tools ships) into ``out_dir``."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", *PROTO_FILES]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {proto_dir}")


def load_stubs(proto_dir: Path) -> tuple[ModuleType, ModuleType, str]:
    """Generate the stubs into a temp dir and import them; returns (messages, services, dir)."""
    out = Path(tempfile.mkdtemp(prefix="nbo-stubs-"))
    generate_stubs(proto_dir, out)
    sys.path.insert(0, str(out))
    messages = importlib.import_module("nbo.v1.decision_pb2")
    services = importlib.import_module("nbo.v1.decision_pb2_grpc")
    return messages, services, str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="gateway HOST:PORT")
    parser.add_argument("--token", help="bearer token with role app (visible to `ps`: prefer --token-file or "
                                        "the NBO_TOKEN environment variable)")
    parser.add_argument("--token-file", type=Path, help="read the bearer token from this file (its first line)")
    parser.add_argument("--ca-file", help="CA certificate for a TLS gateway")
    parser.add_argument("--client-cert", help="client certificate for mutual TLS")
    parser.add_argument("--client-key", help="client key for mutual TLS")
    parser.add_argument("--customer", default="C-1001", help="customer id to decide for")
    parser.add_argument("--channel", default="app")
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR,
                        help="folder holding nbo/v1/*.proto (default: the repository's proto/)")
    args = parser.parse_args(argv)
    token = _token(args, parser)

    import grpc
    from google.protobuf import struct_pb2

    pb, pb_grpc, stub_dir = load_stubs(args.proto_dir)
    try:
        if args.ca_file or args.client_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(args.ca_file).read_bytes() if args.ca_file else None,
                private_key=Path(args.client_key).read_bytes() if args.client_key else None,
                certificate_chain=Path(args.client_cert).read_bytes() if args.client_cert else None,
            )
            channel = grpc.secure_channel(args.target, creds)
        else:
            channel = grpc.insecure_channel(args.target)
        auth = (("authorization", f"Bearer {token}"),)
        api = pb_grpc.DecisionServiceStub(channel)
        run = uuid.uuid4().hex[:8]  # fresh idempotency keys per run

        def call(method: str, request: Any) -> Any:
            try:
                return getattr(api, method)(request, metadata=auth, timeout=10)
            except grpc.RpcError as exc:  # one line saying which call and what the gateway answered
                raise _Refused(f"{method} on {args.target}: {exc.code().name}: {exc.details()}") from None

        context = struct_pb2.Struct()
        context.update({"store": "web-shop", "basket_value": 41.5})
        profile = struct_pb2.Struct()
        profile.update({"age": 34, "lifecycle_stage": "active", "frequency": 6, "monetary": 812.4})
        decision = call("Decide", pb.DecideRequest(customer_id=args.customer, channel=args.channel, context=context,
                                                   profile=profile, limit=3, explain=True))
        print(f"decision {decision.decision_id} from bundle {decision.bundle_name} v{decision.bundle_version}")
        for offer in decision.offers:
            print(f"  {offer.rank}. {offer.offer_id:<20} score={offer.score:10.4f} "
                  f"propensity={offer.propensity:.3f} value={offer.value:g}")
        for excluded in decision.excluded:
            print(f"  excluded {excluded.offer_id} by {excluded.kind} rule {excluded.rule_id}")
        if not decision.offers:
            raise _Refused(f"Decide on {args.target}: no offer for customer {args.customer} on channel "
                           f"{args.channel} (the catalog has no fallback offer for it)")
        top = decision.offers[0]

        call("RecordResponse", pb.RecordResponseRequest(decision_id=decision.decision_id, offer_id=top.offer_id,
                                                        outcome=pb.OUTCOME_ACCEPTED))
        award = call("AwardPoints", pb.AwardPointsRequest(customer_id=args.customer, points=100,
                                                          idempotency_key=f"award-{run}", reason="welcome bonus"))
        redeem = call("RedeemPoints", pb.RedeemPointsRequest(customer_id=args.customer, points=30,
                                                             idempotency_key=f"redeem-{run}", reason="coffee"))
        balance = call("GetBalance", pb.GetBalanceRequest(customer_id=args.customer))
        payment = call("RecordPayment", pb.RecordPaymentRequest(
            customer_id=args.customer, payment_token=f"tok_{run}", amount="19.99", currency="EUR",
            idempotency_key=f"pay-{run}", store_id="web-shop", decision_id=decision.decision_id,
            offer_id=top.offer_id))
        try:
            api.RedeemPoints(pb.RedeemPointsRequest(customer_id=args.customer, points=10**9,
                                                    idempotency_key=f"too-much-{run}", reason="too much"),
                             metadata=auth, timeout=10)
            refused = "OK"
        except grpc.RpcError as exc:  # beyond the balance: FAILED_PRECONDITION, as the proto says
            refused = exc.code().name
        channel.close()
        result: dict[str, Any] = {
            "decision_id": decision.decision_id,
            "bundle_version": decision.bundle_version,
            "offers": [o.offer_id for o in decision.offers],
            "recorded": top.offer_id,
            "award_balance": award.balance,
            "redeem_balance": redeem.balance,
            "balance": balance.balance,
            "payment_id": payment.payment.payment_id,
            "payment_amount": payment.payment.amount,
            "over_redeem": refused,
            "nbo_importable_as_project": _project_importable(),
        }
        print(f"balance {balance.balance}; payment {payment.payment.payment_id} {payment.payment.amount} "
              f"{payment.payment.currency}")
        print("RESULT " + json.dumps(result))
        return 0
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(stub_dir, ignore_errors=True)


def _token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """--token, else the first line of --token-file, else $NBO_TOKEN (what the nbo CLI does)."""
    if args.token:
        return str(args.token)
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text(encoding="utf-8").split()
        except OSError as exc:
            parser.error(f"--token-file {args.token_file}: {exc.strerror or exc}")
        if not lines:
            parser.error(f"--token-file {args.token_file}: the file is empty")
        return lines[0]
    token = os.environ.get("NBO_TOKEN", "").strip()
    if not token:
        parser.error("no token: pass --token-file FILE or set NBO_TOKEN (or --token TOKEN)")
    return token


def _project_importable() -> bool:
    """Whether the nbo-edge package itself could be imported here (it should not be needed)."""
    try:
        importlib.import_module("nbo.sdk")
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
