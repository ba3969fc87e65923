"""The whole loop on one machine, in about a minute: what ``nbo demo`` runs.

sample data → training + report → signed bundle → gateway with a SQLite hub → two offline POS
terminals deciding and recording → sync → a second bundle published and picked up → an
app-backend client deciding over gRPC → the learning loop: a week in the field, the hub's log
exported, a model trained on it, evaluated off-policy against the running bundle and published
only when it is better → an experiment in bundle v4 (champion, challenger, control group) and
the hub's verdict. Every step uses the public front doors (``nbo.sdk``,
``nbo.model_export``, ``nbo.gateway``, the gRPC stubs of ``nbo.v1``) the way a user would.

This is the one module of ``nbo.model_export`` that starts a gateway; it imports
``nbo.gateway`` only inside :func:`run_demo` (see docs/architecture.md).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from nbo.sdk import ConfigError, PaymentDataError
from nbo.sdk.core import derive_features

from ._table import format_table

__all__ = ["DemoResult", "run_demo"]

APP_TOKEN = "demo-app-token"
PUBLISHER_TOKEN = "demo-publisher-token"
TERMINALS = ("pos-1", "pos-2")
PUSHED_OFFER = "loyalty_tier_upgrade"  # the campaign bundle v2 pushes with a lever


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` leaves behind."""

    directory: Path  # deleted when the run did not keep it
    kept: bool
    report_path: Path  # the model's evaluation report (inside ``directory``)
    seconds: float
    card_number_refused: bool  # the typed-in card number was refused, as it must be


def _device_token(device_id: str) -> str:
    return f"demo-device-token-{device_id}"


class _Steps:
    """Numbered progress lines with timings."""

    def __init__(self, total: int, say: Callable[..., None]) -> None:
        self.total = total
        self.n = 0
        self.started = time.perf_counter()
        self._say = say

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.n += 1
        t0 = time.perf_counter()
        self._say(f"\n[{self.n}/{self.total}] {title} …")
        yield
        self._say(f"      done in {time.perf_counter() - t0:.1f}s")


def _read_customers(path: Path) -> dict[str, dict[str, Any]]:
    from ._train_data import _profile_value

    with path.open(newline="", encoding="utf-8") as fh:
        return {
            row["customer_id"]: {k: _profile_value(k, v) for k, v in row.items() if k != "customer_id"}
            for row in csv.DictReader(fh)
        }


def _profiles(data: Any) -> dict[str, dict[str, Any]]:
    """What a loyalty card lookup would give the terminal: profile fields plus measures."""
    customers = _read_customers(data.customers)
    with data.transactions.open(newline="", encoding="utf-8") as fh:
        transactions = [
            {"customer_id": r["customer_id"], "timestamp": r["timestamp"], "amount": float(r["amount"]),
             "quantity": int(r.get("quantity") or 1)}
            for r in csv.DictReader(fh)
        ]
    measures = derive_features(transactions, as_of=data.as_of)
    return {cid: {**fields, **measures.get(cid, {})} for cid, fields in customers.items()}


def _offer_line(decision: Any) -> str:
    return " / ".join(f"{o.category.upper()} {o.name} {o.score:,.0f}" for o in decision.offers)


def _field_visits(*, clients: dict[str, Any], hub: str, profiles: dict[str, dict[str, Any]],
                  catalog: Mapping[str, Any], rng: random.Random, visits: int, customer_ids: list[str]) -> None:
    """``visits`` decisions on the terminals, every shown offer answered by the demo world's
    ground truth, then a sync of both terminals."""
    from datetime import UTC, datetime

    from ._demo_data import true_propensity

    offers = {o["offer_id"]: {"category": o["category"], **(o.get("attributes") or {})}
              for o in catalog["offers"]}
    for n in range(visits):
        device_id = TERMINALS[n % 2]
        customer_id = customer_ids[rng.randrange(len(customer_ids))]
        decision = clients[device_id].decide(customer_id, channel="pos", profile=profiles[customer_id], limit=3)
        now = datetime.now(UTC)
        context = {"channel": "pos", "hour": now.hour, "weekday": now.weekday()}
        for offer in decision.offers:
            if offer.mandatory:
                continue
            p = true_propensity(profiles[customer_id], offers[offer.offer_id], context)
            clients[device_id].record_response(decision.decision_id, offer.offer_id,
                                               "accepted" if rng.random() < p else "ignored")
    for device_id, client in clients.items():
        client.sync(hub, token=_device_token(device_id))


def _experiment(say: Callable[..., None], *, root: Path, clients: dict[str, Any], hub: str, server: Any,
                profiles: dict[str, dict[str, Any]], catalog_v2: dict[str, Any], model: Path, keys: Any,
                rng: random.Random, visits: int, customer_ids: list[str]) -> None:
    """Bundle v4 runs the campaign as the champion beside a challenger without it and a
    control group; the terminals pick it up on sync, decide offline, sync back, and the hub
    gives the verdict (docs/experiments.md)."""
    from nbo.gateway import experiment_reports, format_reports

    from ._bundle_build import build_bundle
    from ._publish import publish_bundle

    catalog = {**catalog_v2, "experiments": [{
        "id": "gold-campaign", "seed": "demo", "share": 1.0, "arms": [
            {"id": "campaign", "kind": "champion", "weight": 45},
            {"id": "no-campaign", "weight": 45, "levers": {PUSHED_OFFER: 1.0}},
            {"id": "no-offers", "kind": "control-none", "weight": 10},
        ]}]}
    bundle = build_bundle(catalog=catalog, models={"propensity": model}, name="demo-retail", version=4,
                          key=keys.private_key, out=root / "bundle-v4.zip")
    publish_bundle(bundle.path, hub, token=PUBLISHER_TOKEN)
    for device_id, client in clients.items():
        client.sync(hub, token=_device_token(device_id))
    say(f"      bundle v4 published: experiment gold-campaign — champion 'campaign' (lever 1.5 on {PUSHED_OFFER}) "
        "45 %, challenger 'no-campaign' 45 %, control 'no-offers' 10 %; arms by a hash of the customer id, "
        "the same on both terminals")
    sample = customer_ids[0]
    arms = {d: c.decide(sample, channel="pos", profile=profiles[sample], dry_run=True).arm for d, c in clients.items()}
    say(f"      {sample}: " + ", ".join(f"{d} → arm {arm}" for d, arm in arms.items()))
    _field_visits(clients=clients, hub=hub, profiles=profiles, catalog=catalog, rng=rng, visits=visits,
                  customer_ids=customer_ids)
    say(f"      {visits} visits decided offline and synced; the hub's verdict (nbo experiments --hub …):")
    for line in format_reports(experiment_reports(server.hub)).splitlines():
        say(f"      {line}")


def _learning_loop(say: Callable[..., None], *, root: Path, clients: dict[str, Any], hub: str, server: Any,
                   profiles: dict[str, dict[str, Any]], catalog_v2: dict[str, Any], keys: Any, rng: random.Random,
                   visits: int, customer_ids: list[str]) -> None:
    """Customers answer every shown offer by the demo world's ground truth; the hub's log trains
    and judges a new model, which is published only on a `better` verdict."""
    from nbo.gateway import export_log

    from ._bundle_build import build_bundle
    from ._evaluate import evaluate_bundle
    from ._log_data import train_from_logs
    from ._publish import publish_bundle

    _field_visits(clients=clients, hub=hub, profiles=profiles, catalog=catalog_v2, rng=rng, visits=visits,
                  customer_ids=customer_ids)
    exported = export_log(server.hub, root / "log")
    say(f"      {visits} more visits synced; exported {exported.rows:,} shown slots of {exported.decisions:,} "
        f"decisions → {exported.directory} ({len(exported.days)} day partitions, Parquet)")
    trained = train_from_logs(exported.directory, root / "model-v3", model="gbt", progress=False)
    say(f"      trained on the logged inputs: holdout AUC {trained.metrics['auc']:.3f}, "
        f"ONNX parity {trained.metrics['parity_max_abs_diff']:.1e}")
    bundle_v3 = build_bundle(catalog=catalog_v2, models={"propensity": trained.model_path}, name="demo-retail",
                             version=3, key=keys.private_key, out=root / "bundle-v3.zip")
    evaluation = evaluate_bundle(exported.directory, bundle_v3.path, n_bootstrap=200)
    rows = []
    for metric, title in (("acceptance", "acceptance rate per offer shown"), ("value", "value per visit")):
        for est in ("snips", "dr"):
            c, lg = getattr(evaluation.candidate, metric)[est], getattr(evaluation.logging, metric)[est]
            d = getattr(evaluation.difference, metric)[est]
            rows.append([title, est.upper(), f"{lg.value:.3g}", f"{c.value:.3g} [{c.low:.3g}, {c.high:.3g}]",
                         f"{d.value:+.3g} [{d.low:+.3g}, {d.high:+.3g}]"])
    say(format_table(["what", "estimator", "running v2", "new model v3 [95% interval]", "difference"], rows,
                     title="How v3 would have done on the same customers (off-policy, from the log)"))
    for warning in evaluation.warnings:
        say(f"      warning: {warning}")
    if evaluation.verdict == "better":
        publish_bundle(bundle_v3.path, hub, token=PUBLISHER_TOKEN)
        say("      verdict: better — bundle v3 published; terminals pick it up on their next sync")
    else:
        say(f"      verdict: {evaluation.verdict} — v3 is not published; v2 keeps serving")


def _toml(config: Mapping[str, Any]) -> str:
    """The demo gateway's configuration mapping as TOML (strings and lists of strings only)."""
    lines = []
    for token in config["tokens"]:
        lines.append("[[tokens]]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in token.items())
        lines.append("")
    for table in ("trust", "hub"):
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in config[table].items())
        lines.append("")
    return "\n".join(lines)


def _say_gateway(say: Callable[..., None], root: Path, serving: str | None) -> None:
    """How to reach the kept gateway: where it is, its tokens, the app-backend example against it."""
    target = serving or "127.0.0.1:50051"
    say("\nThe gateway is kept: state " f"{root / 'gateway'}, configuration {root / 'gateway.toml'}")
    if serving:
        say(f"  serving at {serving} until the console stops (Ctrl-C)")
    else:
        say(f"  start it:  nbo serve --state {root / 'gateway'} --listen {target} --config {root / 'gateway.toml'}")
    say(f"  tokens:    app {APP_TOKEN} · publisher {PUBLISHER_TOKEN} · "
        + " · ".join(f"device {d} {_device_token(d)}" for d in TERMINALS))
    say(f"  try it:    NBO_TOKEN={APP_TOKEN} python examples/mobile_backend_client.py --target {target}")


def _hub_acceptance(hub: Any, top: int = 8) -> list[list[Any]]:
    """Responses and acceptances per offer as the hub's event log holds them (most responses first)."""
    responses: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    for event in hub.events():
        if event["type"] != "response":
            continue
        payload = json.loads(event["payload"]) if isinstance(event["payload"], str) else event["payload"]
        responses[payload["offer_id"]] += 1
        accepted[payload["offer_id"]] += payload["outcome"] == "accepted"
    return [[offer_id, n, accepted[offer_id], accepted[offer_id] / n] for offer_id, n in responses.most_common(top)]


def run_demo(directory: str | os.PathLike[str] | None = None, *, keep: bool = False, customers: int = 1200,
             visits: int = 40, seed: int = 7, out: TextIO | None = None,
             then: Callable[[Path], None] | None = None) -> DemoResult:
    """Run the whole loop and narrate it on ``out`` (stdout by default).

    ``then`` is called with the demo directory after the loop, before it is removed (``nbo
    demo`` serves the console over the demo's hub there until Ctrl-C).

    Works in ``directory`` (created; kept) or, when it is None, in a fresh temporary directory
    that is deleted at the end unless ``keep``. Raises ``ConfigError`` when the gateway or
    training extras are not installed or the directory cannot be created.
    """
    stream = sys.stdout if out is None else out

    def say(*parts: Any) -> None:
        print(*parts, file=stream, flush=True)

    try:
        import grpc
        from nbo.gateway import create_server, parse_config
        from nbo.sdk import Client
        from nbo.v1 import decision_pb2, decision_pb2_grpc

        from ._bundle_build import build_bundle, generate_keys
        from ._catalog import load_catalog_file
        from ._demo_data import generate_demo_data
        from ._publish import publish_bundle
        from ._train_data import train_from_directory
    except ImportError as exc:
        raise ConfigError(f"the demo needs the gateway and training extras (pip install 'nbo-edge[dev]'): {exc}") \
            from None

    kept = keep or directory is not None
    root = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="nbo-demo-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{root}: cannot create the demo directory: {exc.strerror or exc}") from None
    steps = _Steps(11, say)
    rng = random.Random(seed)
    server = None
    clients: dict[str, Any] = {}
    say(f"nbo demo — working in {root}")
    try:
        with steps.step(f"Generating sample retail data ({customers} customers)"):
            data = generate_demo_data(root / "data", customers=customers, seed=seed)
            say(f"      {data.n_customers} customers, {data.n_transactions} transactions, "
                f"{data.n_history} logged offer shows → {data.directory}")

        with steps.step("Training the propensity model (scikit-learn → ONNX, parity-checked)"):
            trained = train_from_directory(data.directory, root / "model", model="gbt", seed=seed,
                                           progress=False)
            m = trained.metrics
            say(f"      holdout AUC {m['auc']:.3f}, log loss {m['log_loss']:.4f}, "
                f"ONNX vs scikit-learn max diff {m['parity_max_abs_diff']:.1e}")
            say(f"      evaluation report: {trained.report_path}")

        with steps.step("Signing bundle v1 (catalog + model)"):
            keys = generate_keys(root / "keys")
            bundle_v1 = build_bundle(catalog=data.catalog, models={"propensity": trained.model_path},
                                     name="demo-retail", version=1, key=keys.private_key,
                                     out=root / "bundle-v1.zip")
            say(f"      {bundle_v1.path.name}: key id {keys.key_id}, {bundle_v1.offer_count} offers")

        with steps.step("Starting the gateway on a free loopback port (SQLite hub)"):
            gateway_config = {
                "tokens": [
                    {"token": APP_TOKEN, "role": "app"},
                    {"token": PUBLISHER_TOKEN, "role": "publisher"},
                    *({"token": _device_token(d), "role": "device", "device_id": d} for d in TERMINALS),
                ],
                "trust": {"keys": [str(keys.public_key)]},
                "hub": {"db": f"sqlite:///{root / 'gateway' / 'hub.sqlite'}"},
            }
            config = parse_config(gateway_config)
            # the same configuration as a file: `nbo serve` starts this gateway again from the kept directory
            (root / "gateway.toml").write_text(_toml(gateway_config), encoding="utf-8")
            server, port = create_server(config, state_dir=root / "gateway", listen="127.0.0.1:0",
                                         bundle_poll_seconds=0)
            server.start()
            hub = f"127.0.0.1:{port}"
            published = publish_bundle(bundle_v1.path, hub, token=PUBLISHER_TOKEN)
            say(f"      gateway at {hub}; published {published.name} v{published.version}")

        with steps.step("Two POS terminals install v1 and decide while offline"):
            profiles = _profiles(data)
            customer_ids = sorted(profiles)[: visits]
            for device_id in TERMINALS:
                clients[device_id] = Client.open(root / device_id, device_id=device_id,
                                                 trusted_keys=[keys.public_key])
                clients[device_id].install_bundle(bundle_v1.path)
            card_refused = 0
            for i, customer_id in enumerate(customer_ids):
                client = clients[TERMINALS[i % 2]]
                decision = client.decide(customer_id, channel="pos", profile=profiles[customer_id], limit=3)
                if i < 5:
                    say(f"      {customer_id} ({decision.strategy or 'no strategy'}): {_offer_line(decision)}")
                # the regulatory notice is shown first when due; the response is about the sales offer
                top = next((o for o in decision.offers if not o.mandatory), decision.offers[0])
                outcome = "accepted" if rng.random() < top.propensity else "declined"
                client.record_response(decision.decision_id, top.offer_id, outcome)
                amount = Decimal(rng.randrange(500, 20000)) / 100
                # tokens of 12 hex digits: 16 could hold a 13-digit Luhn-valid run (a "card number")
                client.record_purchase(customer_id, amount=amount, idempotency_key=f"{decision.decision_id}:buy")
                client.award_points(customer_id, int(amount), idempotency_key=f"{decision.decision_id}:pts",
                                    reason="purchase")
                client.record_payment(customer_id, payment_token=f"tok_{rng.getrandbits(48):012x}", amount=amount,
                                      currency="EUR", idempotency_key=f"{decision.decision_id}:pay",
                                      store_id="store-7", decision_id=decision.decision_id,
                                      offer_id=top.offer_id)
                if i == 0:
                    try:  # a cashier types the card number into the token field: refused, never stored
                        client.record_payment(customer_id, payment_token="4111 1111 1111 1111", amount="1.00",
                                              currency="EUR", idempotency_key="oops")
                    except PaymentDataError as exc:
                        card_refused += 1
                        say(f"      card number refused as it should be: {exc}")
            epsilon = float((load_catalog_file(data.catalog).get("exploration") or {}).get("epsilon", 0.0))
            if epsilon:
                say(f"      (exploration is on, ε={epsilon:g}: now and then a lower-scored offer is promoted so the "
                    "logs can evaluate other policies — such a line is not in score order)")
            pending = {d: c.pending_events() for d, c in clients.items()}
            say(f"      {len(customer_ids)} visits; events waiting offline: "
                + ", ".join(f"{d}={n}" for d, n in pending.items()))

        with steps.step("Terminals come online and sync to the hub"):
            rows = []
            for device_id, client in clients.items():
                report = client.sync(hub, token=_device_token(device_id))
                rows.append([device_id, report.pushed, report.acked_through, report.dead_lettered,
                             report.balances_updated, client.pending_events()])
            say(format_table(["terminal", "pushed", "acked through", "dead-lettered", "balances", "pending"],
                               rows))

        with steps.step("What the hub holds now: balances (gRPC GetBalance), responses (its event log)"):
            channel = grpc.insecure_channel(hub)
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            auth = (("authorization", f"Bearer {APP_TOKEN}"),)
            rows = []
            for customer_id in customer_ids[:5]:
                hub_balance = stub.GetBalance(decision_pb2.GetBalanceRequest(customer_id=customer_id),
                                              metadata=auth).balance
                terminal = clients[TERMINALS[customer_ids.index(customer_id) % 2]]
                rows.append([customer_id, hub_balance, terminal.points_balance(customer_id)])
            say(format_table(["customer", "hub balance", "terminal balance"], rows))
            say(format_table(["offer", "responses", "accepted", "acceptance rate"], _hub_acceptance(server.hub),
                             title="Acceptance by offer, from the response events the hub holds (top 8)"))

        with steps.step("Publishing bundle v2 (a campaign lever) and watching the terminals pick it up"):
            # v2: the business pushes the gold-tier campaign (lever 1.5) — terminals pick it up on sync
            catalog_v2 = load_catalog_file(data.catalog)
            for offer in catalog_v2["offers"]:
                if offer["offer_id"] == PUSHED_OFFER:
                    offer["lever"] = 1.5
            bundle_v2 = build_bundle(catalog=catalog_v2, models={"propensity": trained.model_path},
                                     name="demo-retail", version=2, key=keys.private_key,
                                     out=root / "bundle-v2.zip")
            publish_bundle(bundle_v2.path, hub, token=PUBLISHER_TOKEN)
            rows = []
            for device_id, client in clients.items():
                report = client.sync(hub, token=_device_token(device_id))
                installed = report.bundle_installed
                rows.append([device_id, f"v{installed.version}" if installed else "-",
                             f"{client.bundle.name} v{client.bundle.version}" if client.bundle else "-"])
            say(format_table(["terminal", "installed by sync", "active bundle"], rows))
            for customer_id in customer_ids[:3]:
                terminal = clients[TERMINALS[customer_ids.index(customer_id) % 2]]
                decision = terminal.decide(customer_id, channel="pos", profile=profiles[customer_id], limit=3)
                pushed = [o for o in decision.offers if o.offer_id == PUSHED_OFFER]
                note = f" (lever {pushed[0].lever:g})" if pushed else ""
                say(f"      {customer_id} on v{decision.bundle_version}: {_offer_line(decision)}{note}")

        with steps.step("An app backend asks the gateway for offers (gRPC Decide)"):
            customer_id = customer_ids[0]
            profile_struct = {k: v for k, v in profiles[customer_id].items()
                              if isinstance(v, str | int | float | bool) or v is None}
            request = decision_pb2.DecideRequest(customer_id=customer_id, channel="app", limit=3, explain=True)
            request.profile.update(profile_struct)
            response = stub.Decide(request, metadata=auth, timeout=10)
            say(format_table(
                ["rank", "offer", "category", "propensity", "value", "weight", "lever", "score"],
                [[o.rank, o.name, o.category, o.propensity, o.value, o.weight, o.lever, o.score]
                 for o in response.offers],
                title=f"{customer_id} on the app — bundle {response.bundle_name} v{response.bundle_version}, "
                      f"strategy {response.strategy}",
            ))
            say(f"      {len(response.excluded)} offers excluded by rules or contact policies, e.g.: "
                + "; ".join(f"{e.offer_id} ({e.kind}: {e.description})" for e in response.excluded[:2]))
            channel.close()
        with steps.step("The learning loop: a week in the field → export → train → evaluate → publish if better"):
            _learning_loop(say, root=root, clients=clients, hub=hub, server=server, profiles=profiles,
                           catalog_v2=catalog_v2, keys=keys, rng=rng, visits=max(300, 10 * visits),
                           customer_ids=sorted(profiles))
        with steps.step("An experiment in bundle v4: the campaign as champion, a challenger, a control group"):
            _experiment(say, root=root, clients=clients, hub=hub, server=server, profiles=profiles,
                        catalog_v2=catalog_v2, model=trained.model_path, keys=keys, rng=rng,
                        visits=max(300, 10 * visits), customer_ids=sorted(profiles))
        say(f"\nThe whole loop ran in {time.perf_counter() - steps.started:.0f}s. "
            f"Evaluation report: {trained.report_path}"
            + ("" if kept else " (deleted with the demo directory; rerun with --keep)"))
        result = DemoResult(directory=root, kept=kept, report_path=trained.report_path,
                            seconds=time.perf_counter() - steps.started, card_number_refused=card_refused == 1)
        if kept:
            _say_gateway(say, root, hub if then is not None else None)
        if then is not None:
            for client in clients.values():
                client.close()
            clients.clear()
            if server is not None and not kept:
                server.stop(grace=2).wait()
                server = None
            then(root)  # a kept demo's gateway keeps serving meanwhile, for the app-backend example
        return result
    finally:
        for client in clients.values():
            client.close()
        if server is not None:
            server.stop(grace=2).wait()
        if not kept:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept {root}")
