"""8 threads deciding while bundles are installed and rolled back: zero errors, one bundle per decision."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from engine_fixtures import signed_bundle, signing_keys, train_model
from nbo.sdk import Client, Decision

THREADS = 8


def _catalog(prefix: str) -> dict[str, Any]:
    offers = [
        {"offer_id": f"{prefix}{i:02d}", "name": f"{prefix} offer {i}", "category": cat,
         "expected_volume": 1.0 + i, "margin": 1.0, "duration": 1.0, "model_id": "m" if i % 2 else None,
         "attributes": {"price": float(i)}, "fallback": i == 0}
        for i, cat in enumerate(["service", "xsell", "upsell", "loyalty", "xsell", "retention"])
    ]
    return {
        "name": "switch",
        "profile_fields": {"owned_products": "list<string>"},
        "offers": offers,
        "rules": [{"rule_id": "own", "kind": "business", "applies_to": "xsell",
                   "expression": "!(offer.offer_id in customer.owned_products)"}],
        "contact_policies": [{"policy_id": "p", "applies_to": "*", "scope": "offer", "event": "declined",
                              "max_count": 1, "window_days": 30}],
    }


def test_decide_during_bundle_switches(tmp_path: Path) -> None:
    key, pub = signing_keys(tmp_path / "keys")
    model = train_model(10)[0]
    prefixes = "ABCDE"
    bundles = [signed_bundle(tmp_path / f"b{v}", _catalog(p), key=key, models={"m": model}, version=v)
               for v, p in enumerate(prefixes, start=1)]
    expected_prefix = {v: p for v, p in enumerate(prefixes, start=1)}

    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub]) as client:
        client.install_bundle(bundles[0])
        stop = threading.Event()
        errors: list[BaseException] = []
        decisions: list[Decision] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            mine: list[Decision] = []
            i = 0
            while not stop.is_set() or i < 5:
                try:
                    mine.append(client.decide(f"C{n}-{i % 7}", channel="pos", limit=4, explain=True,
                                              profile={"owned_products": [f"B0{n % 5}"], "frequency": i}))
                except BaseException as exc:  # any failure at all is the bug we are looking for
                    errors.append(exc)
                    return
                i += 1
            with lock:
                decisions.extend(mine)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for bundle in bundles[1:]:
            client.install_bundle(bundle)
        client.rollback()  # back to v4 while deciding
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert client.bundle is not None and client.bundle.version == 4

        seen_versions = set()
        for d in decisions:
            prefix = expected_prefix[d.bundle_version]
            seen_versions.add(d.bundle_version)
            assert d.offers, d
            assert all(o.offer_id.startswith(prefix) for o in d.offers), d  # one bundle per decision
            assert all(e.offer_id.startswith(prefix) for e in d.excluded), d
        assert len(seen_versions) >= 2  # the switch really happened under load

        # every decision is recorded once, with the bundle it was made from
        with client._store.transaction() as tx:
            rows = dict(tx.execute("SELECT decision_id, bundle_version FROM decisions"))
            payloads = [json.loads(p) for (p,) in tx.execute("SELECT payload FROM outbox WHERE type = 'decision'")]
        assert len(rows) == len(decisions) == len(payloads)
        for d in decisions:
            assert rows[d.decision_id] == d.bundle_version
        assert {p["decision_id"]: p["bundle_version"] for p in payloads} == rows
