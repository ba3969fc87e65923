"""Decision-time inputs in the log: every ``decision`` event records what the models saw (the
raw ``customer__*``/``context__*`` values) and every offer that was in play, with the
probability that the deciding policy shows it — on a device and on the gateway (docs/learning.md).
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from bundle_fixtures import make_bundle, make_keys, make_model, small_catalog
from gateway_helpers import APP, bundle_kit, config_data, publish, running_gateway
from google.protobuf import struct_pb2
from nbo.sdk import Client, PaymentDataError
from nbo.sdk._policy import rank, screen, settle
from nbo.sdk.core import inclusion_runs, propensities, slot_probability
from nbo.v1 import decision_pb2

INPUTS = (("customer__frequency", "float"), ("customer__lifecycle_stage", "string"),
          ("offer__category", "string"), ("context__channel", "string"), ("context__basket", "float"))


def _client(tmp_path: Path, catalog: dict[str, Any] | None = None) -> Client:
    key, pub = make_keys(tmp_path / "keys")
    model = make_model(tmp_path / "src" / "propensity.onnx", inputs=INPUTS)
    zip_path = make_bundle(tmp_path / "bundles", key=key, catalog=catalog or small_catalog(),
                           models={"propensity": model})
    client = Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub.read_bytes()])
    client.install_bundle(zip_path)
    return client


def _decision_payloads(client: Client) -> list[dict[str, Any]]:
    return [e["payload"] for e in client.outbox_events(status="all", limit=10_000) if e["type"] == "decision"]


def _expand(runs: list[list[float]]) -> list[float]:
    return [p for p, n in runs for _ in range(int(n))]


def test_device_decision_event_records_the_raw_inputs_and_the_eligible_set(tmp_path: Path) -> None:
    client = _client(tmp_path)
    try:
        decision = client.decide("C1", channel="pos", context={"basket": 41.5, "store": "S1"},
                                 profile={"frequency": 7, "lifecycle_stage": "active"}, limit=2)
        (payload,) = _decision_payloads(client)
    finally:
        client.close()
    # exactly the customer/context inputs of the bundle's models, raw (not encoded), by input name;
    # the context field no model reads ("store") is not logged
    assert payload["inputs"] == {"context__basket": 41.5, "context__channel": "pos", "customer__frequency": 7,
                                 "customer__lifecycle_stage": "active"}
    eligible = payload["eligible"]
    # on pos: the mandatory notice, the gold card and the travel insurance are in play (the fallback
    # is not: something else is eligible; POINTS_DOUBLE is app-only)
    assert eligible["offers"][0] == "PRIVACY_NOTICE" and eligible["mandatory"] == 1
    assert set(eligible["offers"]) == {"PRIVACY_NOTICE", "CARD_GOLD", "INSURANCE_TRAVEL"}
    assert eligible["epsilon"] == 0.1
    probabilities = _expand(eligible["p"])
    assert len(probabilities) == 3
    # limit 2: the notice always; of the other two (k = 2, m = 1), the first is shown unless the
    # second is promoted over it... and then the first is pushed to place 3, which is cut
    assert probabilities == [1.0, pytest.approx(0.9), pytest.approx(0.1)]
    shown = [o["offer_id"] for o in payload["offers"]]
    assert shown == [o.offer_id for o in decision.offers]
    # every shown offer is in the eligible set; its slot probability is the recorded one
    for offer in payload["offers"]:
        index = eligible["offers"].index(offer["offer_id"]) + 1
        assert offer["selection_probability"] == pytest.approx(slot_probability(
            index, offer["rank"], mandatory=eligible["mandatory"], eligible=len(eligible["offers"]),
            epsilon=eligible["epsilon"]))


def test_eligible_set_is_what_rules_and_contact_policies_left(tmp_path: Path) -> None:
    catalog = small_catalog()
    catalog["exploration"] = {"epsilon": 0.0}
    client = _client(tmp_path, catalog)
    try:
        client.decide("C2", channel="app", profile={"age": 16}, limit=1, context={"basket": 3})
        (payload,) = _decision_payloads(client)
    finally:
        client.close()
    eligible = payload["eligible"]
    # CARD_GOLD fails adults_only (age 16); POINTS_DOUBLE fails app_evenings unless it is evening
    assert "CARD_GOLD" not in eligible["offers"]
    # no exploration, limit 1: only the mandatory notice is shown, the rest have probability 0
    assert _expand(eligible["p"]) == [1.0] + [0.0] * (len(eligible["offers"]) - 1)
    assert [o["offer_id"] for o in payload["offers"]] == ["PRIVACY_NOTICE"]


def test_a_card_number_in_a_logged_input_is_refused_and_not_written(tmp_path: Path) -> None:
    client = _client(tmp_path)
    try:
        # a profile string the model reads would be written to the event log: refused, nothing written
        with pytest.raises(PaymentDataError) as info:
            client.decide("C3", channel="pos", profile={"lifecycle_stage": None, "frequency": 2},
                          context={"basket": "4111 1111 1111 1111"})
        assert info.value.field == "context.basket"
        assert "4111" not in str(info.value)
        assert _decision_payloads(client) == []
        # a field no model reads is refused too: every string of a request is scanned (issue 18)
        with pytest.raises(PaymentDataError) as info:
            client.decide("C3", channel="pos", context={"note": "4111 1111 1111 1111"})
        assert info.value.field == "context.note"
        client.decide("C3", channel="pos", context={"note": "no card here"})
        (payload,) = _decision_payloads(client)
        assert "4111" not in json.dumps(payload)
    finally:
        client.close()
    text = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert b"4111 1111 1111 1111" not in text


def test_inclusion_runs_are_the_marginals_of_the_slot_probabilities() -> None:
    for mandatory, k, epsilon, limit in itertools.product(range(3), range(0, 8), (0.0, 0.05, 0.3, 1.0),
                                                          range(1, 9)):
        total = mandatory + k
        runs = inclusion_runs(mandatory=mandatory, eligible=total, epsilon=epsilon, limit=limit)
        assert len(runs) <= 4
        marginal = _expand(runs)
        assert len(marginal) == total
        for index in range(1, total + 1):
            expected = sum(slot_probability(index, r, mandatory=mandatory, eligible=total, epsilon=epsilon)
                           for r in range(1, min(limit, total) + 1))
            assert marginal[index - 1] == pytest.approx(expected, abs=1e-12), (mandatory, k, epsilon, limit, index)
        # every place that is filled holds exactly one offer
        for r in range(1, min(limit, total) + 1):
            assert sum(slot_probability(i, r, mandatory=mandatory, eligible=total, epsilon=epsilon)
                       for i in range(1, total + 1)) == pytest.approx(1.0)


def test_recorded_probabilities_match_the_frequencies_of_the_real_policy(tmp_path: Path) -> None:
    """The pure core decides one moment 20,000 times (fresh seeds); each eligible offer is shown
    as often as the logged probability says."""
    catalog = small_catalog()
    catalog["exploration"] = {"epsilon": 0.3}
    client = _client(tmp_path, catalog)
    try:
        client.decide("C4", channel="pos", profile={"frequency": 3}, limit=2)
        (payload,) = _decision_payloads(client)
        plan = client._active.plan  # noqa: SLF001  - the test drives the pure core on the same plan
    finally:
        client.close()
    assert plan is not None
    customer = {**plan.default_profile, "frequency": 3}
    context = {"channel": "pos", "hour": 12, "weekday": 2, "basket": None}
    screened = screen(plan, customer=customer, context=context, channel="pos", now=1.8e9, explain=False)
    selection = settle(plan, screened, history=[], now=1.8e9, channel="pos", explain=False)
    prop = propensities(plan, selection.pool, customer, context)
    n = 20_000
    counts: Counter[str] = Counter()
    outcome = None
    rng = random.Random(7)
    for _ in range(n):
        outcome = rank(plan, selection, prop, limit=2, seed=str(uuid.UUID(int=rng.getrandbits(128))))
        counts.update(plan.offer_ids[s.offer] for s in outcome.shown)
    assert outcome is not None
    order = [plan.offer_ids[i] for i in outcome.eligible]
    probabilities = _expand(inclusion_runs(mandatory=outcome.mandatory, eligible=len(order), epsilon=0.3, limit=2))
    for offer_id, p in zip(order, probabilities, strict=True):
        se = max(np.sqrt(p * (1 - p) / n), 1e-9)
        assert abs(counts[offer_id] / n - p) < 4 * se + 1e-12, (offer_id, counts[offer_id] / n, p)
    assert set(order) == set(payload["eligible"]["offers"])


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    model = make_model(tmp_path_factory.mktemp("model") / "propensity.onnx", inputs=INPUTS)
    kit.v1 = make_bundle(kit.directory, key=kit.key, catalog=small_catalog(), models={"propensity": model})
    return kit


def test_gateway_decision_event_records_the_same(kit: Any, tmp_path: Path) -> None:
    data = config_data(trusted_key=kit.pub)
    with running_gateway(tmp_path / "gw", data) as gw:
        assert publish(gw, kit.v1).accepted
        profile = struct_pb2.Struct()
        profile.update({"frequency": 4, "lifecycle_stage": "starter"})
        context = struct_pb2.Struct()
        context.update({"basket": 12.5})
        response = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="C5", channel="web", limit=3,
                                                                  profile=profile, context=context), metadata=APP)
        (event,) = [e for e in gw.server.hub.events(device_id="app") if e["type"] == "decision"]
        payload = json.loads(event["payload"])
        card = struct_pb2.Struct()
        card.update({"basket": "4111-1111-1111-1111"})
        with pytest.raises(grpc.RpcError) as info:
            gw.decision.Decide(decision_pb2.DecideRequest(customer_id="C6", channel="web", context=card),
                               metadata=APP)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "context.basket" in (info.value.details() or "") and "4111" not in (info.value.details() or "")
        assert len([e for e in gw.server.hub.events(device_id="app") if e["type"] == "decision"]) == 1
    assert payload["decision_id"] == response.decision_id
    # protobuf Struct numbers are doubles
    assert payload["inputs"] == {"context__basket": 12.5, "context__channel": "web", "customer__frequency": 4.0,
                                 "customer__lifecycle_stage": "starter"}
    assert payload["eligible"]["offers"][0] == "PRIVACY_NOTICE"
    assert [o.offer_id for o in response.offers] == [o["offer_id"] for o in payload["offers"]]
    assert sum(n for _, n in payload["eligible"]["p"]) == len(payload["eligible"]["offers"])


def test_the_hub_discards_a_pushed_decision_whose_inputs_hold_card_data(tmp_path: Path) -> None:
    from nbo.gateway import HubStore
    from nbo.gateway._hub import IncomingEvent

    hub = HubStore.open(None, state_dir=tmp_path / "hub")
    try:
        base = {"decision_id": "d1", "customer_id": "C1", "channel": "pos", "bundle_name": "b",
                "bundle_version": 1, "strategy": "", "offers": [],
                "eligible": {"offers": [], "p": [], "mandatory": 0, "epsilon": 0.0}}
        good = {**base, "inputs": {"customer__segment": "mass", "context__hour": 9}}
        bad = {**base, "decision_id": "d2", "inputs": {"customer__segment": "4111 1111 1111 1111"}}
        result = hub.ingest("pos-1", [IncomingEvent(1, "e1", "decision", 1.0, json.dumps(good)),
                                      IncomingEvent(2, "e2", "decision", 1.0, json.dumps(bad))])
        assert result.acked_through == 2
        assert [r.seq for r in result.rejected] == [2]
        assert "payload.inputs.customer__segment" in result.rejected[0].reason
        events = hub.events(device_id="pos-1")
    finally:
        hub.close()
    assert json.loads(events[0]["payload"])["inputs"] == good["inputs"]
    assert "4111" not in events[1]["payload"]
    db_bytes = b"".join(p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file())
    assert b"4111 1111 1111 1111" not in db_bytes
