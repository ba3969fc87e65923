"""A field with a known truth, for the learning-loop tests (docs/learning.md, "Proof").

Customers with a known response model — P(accept | frequency, offer) = logistic(α_offer +
β_offer · (frequency − 10) / 10) — are decided for by the real engine (``Client.decide`` with a
real ONNX model and ε-greedy exploration), answer by that model, sync to a real gateway's hub,
and the hub's log is exported. Everything random is seeded, including the decision ids that
seed exploration, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import make_bundle, make_keys, make_model
from gateway_helpers import running_gateway
from nbo.sdk import Client

OFFERS = ("A", "B", "C", "D")
ALPHA = {"A": -1.0, "B": -1.5, "C": -0.6, "D": -2.0}
BETA = {"A": 0.8, "B": -0.6, "C": 0.0, "D": 1.6}
INPUTS = (("customer__frequency", "float"), ("customer__lifecycle_stage", "string"),
          ("offer__category", "string"), ("context__channel", "string"), ("context__basket", "float"))
CATEGORY = {"A": "xsell", "B": "upsell", "C": "loyalty", "D": "service"}


def true_p(frequency: float, offer: str) -> float:
    """The simulator's response model: the truth every estimate is judged against."""
    z = ALPHA[offer] + BETA[offer] * (frequency - 10.0) / 10.0
    return 1.0 / (1.0 + math.exp(-z))


def catalog(*, epsilon: float, margins: dict[str, float] | None = None) -> dict[str, Any]:
    margins = margins or {"A": 10.0, "B": 14.0, "C": 6.0, "D": 20.0}
    offers: list[dict[str, Any]] = [
        {"offer_id": o, "name": f"Offer {o}", "category": CATEGORY[o], "channels": ["pos"], "expected_volume": 1,
         "margin": margins[o], "duration": 1, "model_id": "propensity"} for o in OFFERS]
    offers.append({"offer_id": "FB", "name": "Newsletter", "category": "winback", "channels": ["pos"],
                   "expected_volume": 0, "margin": 0, "duration": 0, "fallback": True})
    return {"channels": ["pos"], "exploration": {"epsilon": epsilon}, "offers": offers}


@dataclass
class Field:
    """What one simulated terminal logged: its device id and, per decision, the customer's frequency."""

    device_id: str
    frequency: dict[str, float]


class _Ids:
    """Deterministic UUIDv7-shaped decision ids (they seed exploration)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self) -> str:
        value = self.rng.getrandbits(128)
        value = (value & ~(0xF << 76)) | (7 << 76)
        value = (value & ~(0x3 << 62)) | (0b10 << 62)
        return str(uuid.UUID(int=value))


@contextmanager
def field_hub(root: Path, devices: Sequence[str]) -> Iterator[Any]:
    """A real gateway (SQLite hub) that the simulated terminals sync to."""
    data = {"tokens": [{"token": f"tok-{d}", "role": "device", "device_id": d} for d in devices],
            "trust": {"keys": []}}
    with running_gateway(root / "gw", data) as gw:
        yield gw


def signed(root: Path, name: str, cat: dict[str, Any], *, version: int = 1) -> tuple[Path, Path]:
    """(bundle zip, public key) of a catalog with the simulator's model."""
    key, pub = make_keys(root / f"keys-{name}")
    model = make_model(root / "model" / "propensity.onnx", inputs=INPUTS)
    return make_bundle(root / f"b-{name}", key=key, catalog=cat, models={"propensity": model}, name=name,
                       version=version), pub


def run_terminal(root: Path, gw: Any, *, device_id: str, bundle: Path, pub: Path, decisions: int,
                 seed: int) -> Field:
    """One terminal: ``decisions`` customers decided for, answering by the truth; then a sync."""
    rng = random.Random(seed)
    frequency: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("nbo.sdk._engine.new_decision_id", _Ids(seed))
        client = Client.open(root / device_id, device_id=device_id, trusted_keys=[pub.read_bytes()])
        try:
            client.install_bundle(bundle)
            for n in range(decisions):
                f = rng.randrange(20)
                d = client.decide(f"{device_id}-c{n}", channel="pos", limit=1,
                                  profile={"frequency": f, "lifecycle_stage": "active"},
                                  context={"basket": round(rng.uniform(0, 100), 2)})
                (shown,) = d.offers
                accepted = rng.random() < true_p(f, shown.offer_id)
                client.record_response(d.decision_id, shown.offer_id, "accepted" if accepted else "declined")
                frequency[d.decision_id] = float(f)
            report = client.sync(f"127.0.0.1:{gw.port}", token=f"tok-{device_id}", download=False)
            assert not report.errors and client.pending_events() == 0
        finally:
            client.close()
    return Field(device_id=device_id, frequency=frequency)
