"""Experiments inside the bundle: catalog validation, the pinned assignment hash, and the
arms through the real engine (docs/experiments.md)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import make_bundle, make_keys, make_model
from learning_sim import INPUTS, catalog
from nbo.model_export import validate_catalog
from nbo.sdk import CatalogError, Client
from nbo.sdk.core import HASH_VERSION, assign, assignment_unit, parse_experiments, slot_probability


def experiment(**overrides: Any) -> dict[str, Any]:
    exp: dict[str, Any] = {
        "id": "prop-v2", "seed": "2026-12", "share": 1.0,
        "arms": [
            {"id": "champion", "kind": "champion", "weight": 40},
            {"id": "v2", "weight": 40, "models": {"propensity": "propensity_v2"}},
            {"id": "random", "kind": "control-random", "weight": 10},
            {"id": "none", "kind": "control-none", "weight": 10},
        ],
    }
    exp.update(overrides)
    return exp


def with_experiments(*experiments: dict[str, Any], epsilon: float = 0.0) -> dict[str, Any]:
    cat = catalog(epsilon=epsilon)
    cat["offers"].append({"offer_id": "NOTICE", "name": "Notice", "category": "service", "channels": ["pos"],
                          "expected_volume": 0, "margin": 0, "duration": 0, "mandatory": True})
    cat["strategies"] = {"default": {"xsell": 1.0}}
    cat["strategy_assignment"] = [{"condition": "true", "strategy": "default"}]
    cat["experiments"] = list(experiments)
    return cat


def errors_of(cat: dict[str, Any]) -> str:
    with pytest.raises(CatalogError) as info:
        validate_catalog(cat, source="cat.yaml", model_ids={"propensity", "propensity_v2"})
    return str(info.value)


# -- the hash, pinned ---------------------------------------------------------------------------

VECTORS = [  # (purpose, seed, customer id) -> unit; changing any of these moves customers between arms
    (("traffic", "", "c1"), 0.9348781034945491),
    (("arm", "2026-12", "c1"), 0.6099581833073328),
    (("arm", "2026-12", "customer-42"), 0.547394571150011),
    (("arm", "7", "ü-1"), 0.07662028658108759),
    (("traffic", "", ""), 0.2344948896092458),
]


@pytest.mark.parametrize(("args", "expected"), VECTORS)
def test_the_assignment_hash_is_pinned(args: tuple[str, str, str], expected: float) -> None:
    assert HASH_VERSION == 1
    assert assignment_unit(*args) == expected
    # and it is the documented byte layout
    purpose, seed, customer = args
    digest = hashlib.sha256(b"nbo-experiments/1\x00" + purpose.encode() + b"\x00" + seed.encode() + b"\x00"
                            + customer.encode()).digest()
    assert expected == int.from_bytes(digest[:8], "big") / 2**64


def test_arms_split_by_weight_and_traffic_by_share() -> None:
    exp = experiment(share=0.5, offset=0.25)
    (compiled,) = parse_experiments(json.loads(json.dumps([exp])))
    counts: dict[str, int] = {}
    outside = 0
    n = 40_000
    for i in range(n):
        found = assign([compiled], f"cust-{i}")
        if found is None:
            outside += 1
        else:
            counts[found.arm_id] = counts.get(found.arm_id, 0) + 1
            assert 0.25 <= assignment_unit("traffic", "", f"cust-{i}") < 0.75
    assert abs(outside / n - 0.5) < 0.015
    inside = n - outside
    for arm, share in {"champion": 0.4, "v2": 0.4, "random": 0.1, "none": 0.1}.items():
        assert abs(counts[arm] / inside - share) < 0.015, (arm, counts)


# -- validation at build --------------------------------------------------------------------------


def test_a_valid_experiment_compiles_into_meta() -> None:
    valid = validate_catalog(with_experiments(experiment()), model_ids={"propensity", "propensity_v2"})
    (compiled,) = json.loads(valid.meta["experiments"])
    assert compiled["id"] == "prop-v2" and compiled["seed"] == "2026-12" and compiled["offset"] == 0.0
    assert [a["id"] for a in compiled["arms"]] == ["champion", "v2", "random", "none"]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda e: e["arms"].__setitem__(slice(None), [{"id": "a", "weight": 0}, {"id": "b", "weight": 0}]),
     "cat.yaml: experiments[0] (id=prop-v2): arms: the weights of the arms that are not shadows must sum to a "
     "positive number"),
    (lambda e: e["arms"][1].__setitem__("models", {"propensity": "prop_v3"}),
     "cat.yaml: experiments[0] (id=prop-v2): arms[1] (id=v2): models: model 'prop_v3' is not in the bundle"),
    (lambda e: e.__setitem__("share", 1.5),
     "cat.yaml: experiments[0] (id=prop-v2): share: must be a number in (0, 1], got 1.5"),
    (lambda e: e.__setitem__("share", -0.1),
     "cat.yaml: experiments[0] (id=prop-v2): share: must be a number in (0, 1], got -0.1"),
    (lambda e: e["arms"][0].__setitem__("weight", -1),
     "cat.yaml: experiments[0] (id=prop-v2): arms[0] (id=champion): weight: must be a number >= 0, got -1"),
    (lambda e: e["arms"][1].__setitem__("levers", {"ZZZ": 2.0}),
     "cat.yaml: experiments[0] (id=prop-v2): arms[1] (id=v2): levers: unknown offer 'ZZZ'"),
    (lambda e: e["arms"][2].__setitem__("levers", {"A": 2.0}),
     "cat.yaml: experiments[0] (id=prop-v2): arms[2] (id=random): levers: a control-random arm replaces nothing"),
    (lambda e: e.pop("seed"),
     "cat.yaml: experiments[0] (id=prop-v2): seed: required"),
])
def test_bad_experiments_are_refused_naming_item_and_field(change: Any, expected: str) -> None:
    exp = experiment()
    change(exp)
    assert expected in errors_of(with_experiments(exp))


def test_two_experiments_claiming_the_same_traffic_are_refused() -> None:
    first = experiment(share=0.3)
    second = experiment(id="levers", seed="x", share=0.2, offset=0.2)
    message = errors_of(with_experiments(first, second))
    assert ("cat.yaml: experiments[1] (id=levers): share: its traffic [0.2, 0.4) overlaps experiments[0] "
            "(id=prop-v2)'s [0, 0.3)") in message
    # side by side is fine
    validate_catalog(with_experiments(first, experiment(id="levers", seed="x", share=0.2, offset=0.3)),
                     model_ids={"propensity", "propensity_v2"})


# -- through the real engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("exp")
    key, pub = make_keys(root / "keys")
    models = {"propensity": make_model(root / "m" / "propensity.onnx", inputs=INPUTS, seed=0),
              "propensity_v2": make_model(root / "m" / "propensity_v2.onnx", inputs=INPUTS, seed=1)}
    exp = experiment()
    exp["arms"].append({"id": "shadow-lever", "shadow": True, "levers": {"B": 50.0}})
    bundle = make_bundle(root / "b", key=key, catalog=with_experiments(exp, epsilon=0.1), models=models,
                         name="exp")
    return bundle, pub


def _client(root: Path, device: str, built: tuple[Path, Path]) -> Client:
    bundle, pub = built
    client = Client.open(root / device, device_id=device, trusted_keys=[pub.read_bytes()])
    client.install_bundle(bundle)
    return client


def _events(client: Client) -> list[dict[str, Any]]:
    return [e["payload"] for e in client.outbox_events(status="all", limit=10_000) if e["type"] == "decision"]


def test_every_decision_carries_its_arm_and_the_same_customer_gets_it_on_two_devices(
        tmp_path: Path, built: tuple[Path, Path]) -> None:
    till, kiosk = _client(tmp_path, "till", built), _client(tmp_path, "kiosk", built)
    try:
        (compiled,) = parse_experiments(
            [experiment() | {"arms": experiment()["arms"] + [{"id": "shadow-lever", "shadow": True}]}])
        arms: dict[str, int] = {}
        for i in range(200):
            customer = f"c{i}"
            a = till.decide(customer, channel="pos", limit=2, profile={"frequency": i % 20})
            b = kiosk.decide(customer, channel="pos", limit=2, profile={"frequency": i % 20})
            expected = assign([compiled], customer)
            assert expected is not None
            assert (a.experiment_id, a.arm, a.hash_version) == ("prop-v2", expected.arm_id, 1)
            assert (b.experiment_id, b.arm, b.hash_version) == ("prop-v2", expected.arm_id, 1)
            arms[a.arm] = arms.get(a.arm, 0) + 1
            ids = [o.offer_id for o in a.offers]
            assert ids[0] == "NOTICE"  # mandatory first in every arm
            if a.arm == "none":
                assert ids == ["NOTICE", "FB"]  # nothing beyond the mandatory and the fallback
            else:
                assert "FB" not in ids
        assert set(arms) == {"champion", "v2", "random", "none"}
        events = _events(till)
        assert len(events) == 200
        for event in events:
            assert event["experiment"]["id"] == "prop-v2" and event["experiment"]["hash"] == 1
            kind = event["experiment"]["kind"]
            eligible = event["eligible"]
            shown = [o["selection_probability"] for o in event["offers"]]
            # every arm's shown probabilities are the ones its recorded policy gives (exploration included)
            for rank, offer in enumerate(event["offers"], start=1):
                index = eligible["offers"].index(offer["offer_id"]) + 1
                assert offer["selection_probability"] == pytest.approx(slot_probability(
                    index, rank, mandatory=eligible["mandatory"], eligible=len(eligible["offers"]),
                    epsilon=eligible["epsilon"]))
            if kind == "control-random":
                k = len(eligible["offers"]) - eligible["mandatory"]
                assert eligible["epsilon"] == pytest.approx((k - 1) / k)
                assert shown[1] == pytest.approx(1 / k)  # a uniformly random eligible offer
            else:
                assert eligible["epsilon"] == 0.1
            if kind in ("champion", "challenger"):
                (shadow,) = event["shadow"]
                assert shadow["arm"] == "shadow-lever"
                assert shadow["offers"][0] == "NOTICE"
                # B's lever of 50 puts it first after the notice unless exploration promoted another
                assert shadow["offers"][1] == "B" or shadow["eligible"]["offers"][1] == "B"
            else:
                assert "shadow" not in event
    finally:
        till.close()
        kiosk.close()


def test_the_challenger_scores_with_its_own_model(tmp_path: Path, built: tuple[Path, Path]) -> None:
    client = _client(tmp_path, "t", built)
    try:
        seen: dict[str, list[float]] = {"champion": [], "v2": []}
        for i in range(300):
            d = client.decide(f"c{i}", channel="pos", limit=2, profile={"frequency": 7})
            if d.arm in seen:
                seen[d.arm].append(next(o.propensity for o in d.offers if o.offer_id != "NOTICE"))
        assert seen["champion"] and seen["v2"]
        assert set(map(round6, seen["champion"])) != set(map(round6, seen["v2"]))
    finally:
        client.close()


def round6(x: float) -> float:
    return round(x, 6)


def test_an_unchanged_seed_keeps_arms_across_bundle_versions() -> None:
    a = parse_experiments([copy.deepcopy(experiment())])
    b = parse_experiments([experiment(description="v2 of the bundle")])
    reseeded = parse_experiments([experiment(seed="2027-01")])
    same = sum(assign(a, f"c{i}") == assign(b, f"c{i}") for i in range(2000))
    moved = sum(assign(a, f"c{i}").arm_id != assign(reseeded, f"c{i}").arm_id for i in range(2000))  # type: ignore[union-attr]
    assert same == 2000
    assert moved > 800


def test_the_gateway_assigns_the_same_arm_as_the_devices(tmp_path: Path, built: tuple[Path, Path]) -> None:
    from gateway_helpers import APP, config_data, publish, running_gateway
    from nbo.v1 import decision_pb2

    bundle, pub = built
    till = _client(tmp_path, "till", built)
    try:
        with running_gateway(tmp_path / "gw", config_data(trusted_key=pub)) as gw:
            publish(gw, bundle)
            for i in range(60):
                customer = f"app-{i}"
                response = gw.decision.Decide(decision_pb2.DecideRequest(customer_id=customer, channel="pos",
                                                                         limit=2), metadata=APP)
                local = till.decide(customer, channel="pos", limit=2)
                assert (response.experiment_id, response.arm, response.hash_version) == (
                    local.experiment_id, local.arm, local.hash_version)
                assert response.experiment_id == "prop-v2" and response.hash_version == 1
    finally:
        till.close()


# -- promote and roll back --------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from nbo.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_promote_and_roll_back_are_normal_signed_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    key, pub = make_keys(tmp_path / "keys")
    m = {"propensity": make_model(tmp_path / "m" / "propensity.onnx", inputs=INPUTS, seed=0),
         "propensity_v2": make_model(tmp_path / "m" / "propensity_v2.onnx", inputs=INPUTS, seed=1)}
    source = tmp_path / "catalog.yaml"
    source.write_text(yaml.safe_dump(with_experiments(experiment())), encoding="utf-8")
    models = [arg for mid, path in m.items() for arg in ("--model", f"{mid}={path}")]

    def build(version: int, *extra: str) -> tuple[int, str, str]:
        return _run(capsys, "bundle", "build", "--catalog", str(source), *models, "--name", "exp", "--version",
                    str(version), "--key", str(key), "--out", str(tmp_path / f"exp-v{version}.zip"), *extra)

    assert build(1)[0] == 0
    code, out, _ = _run(capsys, "bundle", "inspect", str(tmp_path / "exp-v1.zip"))
    assert code == 0 and "Experiments (1)" in out
    (arm_row,) = [line for line in out.splitlines() if " v2 " in line and "prop-v2" in line]
    assert "challenger" in arm_row and "model propensity→propensity_v2" in arm_row and "[0, 1)" in arm_row
    code, out, _ = build(2, "--promote", "prop-v2=v2", "--promoted-catalog", str(tmp_path / "promoted.yaml"))
    assert code == 0 and "promoted prop-v2=v2 to champion" in out
    promoted = yaml.safe_load((tmp_path / "promoted.yaml").read_text(encoding="utf-8"))
    assert "experiments" not in promoted
    assert {o["model_id"] for o in promoted["offers"] if o.get("model_id")} == {"propensity_v2"}

    client = Client.open(tmp_path / "dev", device_id="dev", trusted_keys=[pub.read_bytes()])
    try:
        client.install_bundle(tmp_path / "exp-v1.zip")
        customer = next(f"c{i}" for i in range(500)
                        if client.decide(f"c{i}", channel="pos", limit=2, dry_run=True).arm == "v2")
        before = client.decide(customer, channel="pos", limit=2, dry_run=True, profile={"frequency": 4})
        client.install_bundle(tmp_path / "exp-v2.zip")
        after = client.decide(customer, channel="pos", limit=2, dry_run=True, profile={"frequency": 4})
        # the winner serves everyone, with no experiment left
        assert (after.experiment_id, after.arm, after.hash_version) == ("", "", 0)
        assert [(o.offer_id, o.propensity) for o in after.offers] == [(o.offer_id, o.propensity) for o in before.offers]
        champion_customer = next(f"c{i}" for i in range(500) if assign(
            parse_experiments([experiment()]), f"c{i}").arm_id == "champion")  # type: ignore[union-attr]
        assert client.decide(champion_customer, channel="pos", limit=2, dry_run=True,
                             profile={"frequency": 4}).offers[1].propensity == after.offers[1].propensity
        # the rollback is v3 built from the old catalog: the same arms again (the seed did not change)
        assert build(3)[0] == 0
        client.install_bundle(tmp_path / "exp-v3.zip")
        again = client.decide(customer, channel="pos", limit=2, dry_run=True, profile={"frequency": 4})
        assert (again.experiment_id, again.arm) == ("prop-v2", "v2")
        # and the fleet's rollback protection holds: the older promoted version is refused
        from nbo.sdk import BundleError
        with pytest.raises(BundleError):
            client.install_bundle(tmp_path / "exp-v2.zip")
    finally:
        client.close()

    # keeping the old champion as a challenger
    code, _, _ = build(4, "--promote", "prop-v2=v2", "--keep-old-champion",
                       "--promoted-catalog", str(tmp_path / "kept.yaml"))
    assert code == 0
    kept = yaml.safe_load((tmp_path / "kept.yaml").read_text(encoding="utf-8"))
    (exp,) = kept["experiments"]
    assert exp["seed"] == "2026-12"
    arms = {a["id"]: a for a in exp["arms"]}
    assert arms["v2"]["kind"] == "champion" and "models" not in arms["v2"]
    assert arms["champion"]["kind"] == "challenger"
    assert arms["champion"]["models"] == {"propensity_v2": "propensity"}


def test_promotion_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    key, _ = make_keys(tmp_path / "keys")
    source = tmp_path / "catalog.yaml"
    source.write_text(yaml.safe_dump(with_experiments(experiment())), encoding="utf-8")
    base = ["bundle", "build", "--catalog", str(source), "--name", "x", "--version", "1", "--key", str(key),
            "--out", str(tmp_path / "x.zip")]
    for promote, fragment in (("nope=v2", "no experiment 'nope'"), ("prop-v2=zz", "no arm 'zz'"),
                              ("prop-v2=random", "only a challenger can"), ("prop-v2", "EXPERIMENT=ARM")):
        code, _, err = _run(capsys, *base, "--promote", promote)
        assert code != 0 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.zip").exists()
