"""The nbo.v1 wire contract: generated code is fresh, importable, and the .proto is documented."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "nbo" / "v1"
sys.path.insert(0, str(ROOT / "scripts"))
import gen_proto  # noqa: E402

MODULES = [
    f"nbo.v1.{stem}{suffix}"
    for stem in ("common", "decision", "sync", "publish")
    for suffix in ("_pb2", "_pb2_grpc")
]

# docs/operations.md: exactly these RPCs, no more, no fewer.
CONTRACT = {
    "DecisionService": {
        "Decide",
        "RecordResponse",
        "AwardPoints",
        "RedeemPoints",
        "GetBalance",
        "RecordPayment",
    },
    "SyncService": {"PushEvents", "GetLatestBundle", "DownloadBundle", "RecoverDevice"},
    "PublishService": {"PublishBundle"},
}


def test_contract_files_exist() -> None:
    assert sorted(p.name for p in PROTO_DIR.glob("*.proto")) == [
        "common.proto",
        "decision.proto",
        "publish.proto",
        "sync.proto",
    ]


def test_generated_files_are_fresh() -> None:
    stale = gen_proto.stale_files()
    assert stale == [], "run `make proto`: " + "; ".join(stale)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = gen_proto.generate(tmp_path / "a")
    second = gen_proto.generate(tmp_path / "b")
    assert first == second and len(first) == 12
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_check_flags_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy of the package with one generated file altered and one extra: --check must name both.
    fake_root = tmp_path / "repo"
    fake_pkg = fake_root / "proto" / "nbo" / "v1"
    fake_pkg.mkdir(parents=True)
    for src in PROTO_DIR.iterdir():
        if src.is_file():
            (fake_pkg / src.name).write_bytes(src.read_bytes())
    (fake_pkg / "sync_pb2.py").write_bytes((fake_pkg / "sync_pb2.py").read_bytes() + b"\n# edited\n")
    (fake_pkg / "gone_pb2.py").write_text("# left over\n")
    monkeypatch.setattr(gen_proto, "ROOT", fake_root)
    monkeypatch.setattr(gen_proto, "PROTO_ROOT", fake_root / "proto")
    monkeypatch.setattr(gen_proto, "PACKAGE_DIR", fake_pkg)
    stale = gen_proto.stale_files()
    assert stale == [
        "proto/nbo/v1/gone_pb2.py (extra: no .proto generates it)",
        "proto/nbo/v1/sync_pb2.py (differs)",
    ]
    assert gen_proto.main(["--check"]) == 1
    gen_proto.main([])
    assert gen_proto.stale_files() == []
    assert not (fake_pkg / "gone_pb2.py").exists()


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__ == name


def test_services_have_exactly_the_contract_rpcs() -> None:
    found: dict[str, set[str]] = {}
    for stem in ("common", "decision", "sync", "publish"):
        descriptor = importlib.import_module(f"nbo.v1.{stem}_pb2").DESCRIPTOR
        assert descriptor.package == "nbo.v1"
        for service in descriptor.services_by_name.values():
            found[service.name] = {m.name for m in service.methods}
    assert found == CONTRACT


def test_streaming_shapes() -> None:
    from nbo.v1 import publish_pb2, sync_pb2

    download = sync_pb2.DESCRIPTOR.services_by_name["SyncService"].methods_by_name["DownloadBundle"]
    assert (download.client_streaming, download.server_streaming) == (False, True)
    assert download.output_type.name == "BundleChunk"
    publish = publish_pb2.DESCRIPTOR.services_by_name["PublishService"].methods_by_name["PublishBundle"]
    assert (publish.client_streaming, publish.server_streaming) == (True, False)
    assert publish.input_type.name == "PublishChunk"


def test_servicer_and_stub_exist() -> None:
    from nbo.v1 import decision_pb2_grpc, publish_pb2_grpc, sync_pb2_grpc

    for module, service in (
        (decision_pb2_grpc, "DecisionService"),
        (sync_pb2_grpc, "SyncService"),
        (publish_pb2_grpc, "PublishService"),
    ):
        assert callable(getattr(module, f"{service}Stub"))
        assert callable(getattr(module, f"add_{service}Servicer_to_server"))
        servicer = getattr(module, f"{service}Servicer")
        for rpc in CONTRACT[service]:
            assert callable(getattr(servicer, rpc))


def test_messages_round_trip() -> None:
    from google.protobuf import struct_pb2, timestamp_pb2
    from nbo.v1 import common_pb2, decision_pb2, sync_pb2

    context = struct_pb2.Struct()
    context.update({"store": "S1", "hour": 14, "basket_value": 41.5, "loyal": True})
    request = decision_pb2.DecideRequest(
        customer_id="c1", channel="app", context=context, limit=5, explain=True
    )
    parsed = decision_pb2.DecideRequest.FromString(request.SerializeToString())
    assert parsed.context["store"] == "S1" and parsed.context["hour"] == 14.0
    assert parsed.HasField("limit") and not parsed.HasField("profile")
    assert not decision_pb2.DecideRequest().HasField("limit")

    award = decision_pb2.AwardPointsRequest(
        customer_id="c1",
        points=2**40,
        idempotency_key="k",
        reason="r",
        expires_at=timestamp_pb2.Timestamp(seconds=1),
    )
    assert decision_pb2.AwardPointsRequest.FromString(award.SerializeToString()).points == 2**40
    assert decision_pb2.Outcome.Name(decision_pb2.OUTCOME_IGNORED) == "OUTCOME_IGNORED"

    push = sync_pb2.PushEventsResponse(
        acked_through=7,
        balances=[common_pb2.Balance(customer_id="c1", balance=-5)],
        latest_bundle=common_pb2.BundleRef(name="b", version=3, sha256="ab", size=10),
        rejected=[sync_pb2.Rejected(seq=4, event_id="e", reason="bad payload")],
    )
    back = sync_pb2.PushEventsResponse.FromString(push.SerializeToString())
    assert back.HasField("latest_bundle") and back.balances[0].balance == -5 and back.rejected[0].seq == 4
    assert not sync_pb2.PushEventsResponse().HasField("latest_bundle")


# Lines that declare something in a .proto: fields, map fields, enum values, messages, enums,
# services and rpcs. Each must be preceded directly by a `//` comment line.
_FIELD = re.compile(r"^(optional\s+|repeated\s+)?(map<[^>]+>|[A-Za-z_][\w.]*)\s+\w+\s*=\s*\d+\s*(\[.*\])?;$")
_ENUM_VALUE = re.compile(r"^[A-Z][A-Z0-9_]*\s*=\s*-?\d+\s*;$")
_DECL = re.compile(r"^(message|enum|service|rpc)\s+\w+")


def _undocumented(text: str) -> list[str]:
    missing: list[str] = []
    previous = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            previous = ""
            continue
        if _FIELD.match(line) or _ENUM_VALUE.match(line) or _DECL.match(line):
            if not previous.startswith("//"):
                missing.append(f"{number}: {line}")
        previous = line
    return missing


def test_comment_checker_catches_a_bare_field() -> None:
    text = "// A message.\nmessage M {\n  // documented\n  string a = 1;\n  int64 b = 2;\n}\n"
    assert _undocumented(text) == ["5: int64 b = 2;"]


@pytest.mark.parametrize("path", sorted(PROTO_DIR.glob("*.proto")), ids=lambda p: p.name)
def test_every_declaration_has_a_leading_comment(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "package nbo.v1;" in text and 'syntax = "proto3";' in text
    assert _undocumented(text) == []
    # Guard the checker itself: it must have seen the fields (not silently matched nothing).
    declared = sum(1 for line in text.splitlines() if _FIELD.match(line.strip()))
    assert declared >= 2
