"""The golden decision cases (tests/golden/decide_cases.json) through the gateway over gRPC.

The same file drives the pure core and ``Client`` in tests/test_golden.py; here each case's
bundle is published through ``PublishService``, its stored profile and contact history are
seeded into the hub-backed state store, and ``Decide`` (context and profile as
``google.protobuf.Struct``) must give the same ranking, scores, strategy and exclusions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from engine_fixtures import signed_bundle, signing_keys
from gateway_helpers import APP, config_data, publish, running_gateway
from golden_helpers import CASES, case_history, case_now, check_case
from google.protobuf import struct_pb2
from nbo.sdk import ManualClock
from nbo.v1 import decision_pb2


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return signing_keys(tmp_path_factory.mktemp("keys"))


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case_through_the_gateway(case: dict[str, Any], tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    bundle = signed_bundle(tmp_path / "build", {"name": "golden", **case["catalog"]}, key=key)
    now = case_now(case)
    with running_gateway(tmp_path / "state", config_data(trusted_key=pub), clock=ManualClock(now)) as gw:
        assert publish(gw, bundle).accepted
        with gw.server.hub.db.transaction() as tx:  # white-box: seed the state the case describes
            if "stored_profile" in case:
                tx.execute("INSERT INTO profiles(customer_id, profile, updated_at) VALUES (?, ?, ?)",
                           ("G1", json.dumps(case["stored_profile"]), now))
            for offer_id, category, channel, event, ts in case_history(case):
                tx.execute("INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts)"
                           " VALUES (?, ?, ?, ?, ?, ?)", ("G1", offer_id, category, channel, event, ts))
        request = decision_pb2.DecideRequest(customer_id="G1", channel=case["channel"], limit=case.get("limit", 3),
                                             explain=True)
        if "context" in case:
            request.context.CopyFrom(_struct(case["context"]))
        if "profile" in case:
            request.profile.CopyFrom(_struct(case["profile"]))
        decision = gw.decision.Decide(request, metadata=APP, timeout=20)
    assert decision.bundle_name == "golden"
    check_case(
        case,
        [(o.offer_id, o.score) for o in decision.offers],
        decision.strategy,
        [(e.offer_id, e.rule_id, e.kind, e.description) for e in decision.excluded],
    )
