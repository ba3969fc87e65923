"""Property tests of the loyalty ledger.

A hypothesis state machine drives a real device state database with random awards (with and
without expiry), redemptions, reversals, replays of earlier calls, bad inputs, clock moves
and "syncs" (a central balance replacing what the hub has seen), and checks it against a
small reference model written differently: the model expires lots *eagerly* the moment the
clock passes them, the device materialises expiry *lazily* when a customer is touched.

Invariants checked after every step:
* the balance equals the model's and the sum of the live entries (central + window), never < 0;
* a refused call (LedgerError / InputError) changes nothing — no entry, no event;
* a repeated idempotency key returns the first entry and writes nothing;
* every ledger entry has exactly one ``points`` event with the same seq; seq is gapless;
* the hub's pure fold of the emitted events gives the device's balance.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from nbo.sdk import Client, InputError, LedgerError, ManualClock, NboError, _ledger

DAY = 86_400.0
CUSTOMERS = ("C1", "C2")


@dataclass
class ModelLot:
    lot_id: str | None  # None: the customer's credit (central balance, given-back points)
    remaining: int
    expires_at: float | None
    order: int

    def key(self) -> tuple[bool, float, int]:
        return (self.expires_at is None, self.expires_at or 0.0, self.order)


@dataclass
class ModelCustomer:
    credit: ModelLot = field(default_factory=lambda: ModelLot(None, 0, None, -1))
    lots: list[ModelLot] = field(default_factory=list)

    def balance(self) -> int:
        return self.credit.remaining + sum(lot.remaining for lot in self.lots)

    def take(self, points: int, first: ModelLot | None = None) -> list[tuple[ModelLot, int]]:
        # Oldest-expiring lot first, never-expiring lots after, the credit last of all.
        order = [*([first] if first else []), *sorted((lot for lot in self.lots if lot is not first),
                                                      key=ModelLot.key), self.credit]
        taken = []
        for lot in order:
            if points == 0:
                break
            part = min(max(lot.remaining, 0), points)
            if part:
                lot.remaining -= part
                points -= part
                taken.append((lot, part))
        if points:
            self.credit.remaining -= points
            taken.append((self.credit, points))
        return taken


@dataclass
class ModelEntry:
    entry_id: str
    customer: str
    kind: str
    points: int
    expires_at: float | None
    lot: ModelLot | None = None
    taken: list[tuple[ModelLot, int]] = field(default_factory=list)
    reversed: bool = False


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="nbo-ledger-prop-"))
        self.clock = ManualClock(1_700_000_000.0)
        self.client = Client.open(self.dir / "state", device_id="pos-1", trusted_keys=[], clock=self.clock)
        self.customers = {c: ModelCustomer() for c in CUSTOMERS}
        self.entries: list[ModelEntry] = []
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = []
        self.n = 0
        self.synced = False

    def teardown(self) -> None:
        self.client.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's clock: expire eagerly ------------------------------------------------------

    def _expire_eagerly(self) -> None:
        now = self.clock.now()
        for customer in self.customers.values():
            for lot in list(customer.lots):
                if lot.expires_at is not None and lot.expires_at <= now:
                    customer.lots.remove(lot)  # whatever is left is gone

    def _key(self) -> str:
        self.n += 1
        return f"key-{self.n}"

    def _snapshot(self) -> tuple[int, int]:
        with self.client._store.transaction() as tx:
            (events,) = tx.execute("SELECT COUNT(*) FROM outbox")[0]
            (rows,) = tx.execute("SELECT COUNT(*) FROM ledger_entries")[0]
        return int(events), int(rows)

    # -- rules ---------------------------------------------------------------------------------

    @initialize(opening=st.lists(st.tuples(st.sampled_from(CUSTOMERS), st.integers(50, 300),
                                           st.one_of(st.none(), st.integers(1, 10))), min_size=2, max_size=6))
    def start(self, opening: list[tuple[str, int, int | None]]) -> None:
        # Every run starts with a few lots, most of them expiring, so redemptions and expiry
        # interleave from the first step instead of waiting for awards to be drawn.
        for customer, points, days in opening:
            self.award(customer=customer, points=points, expires_in=None if days is None else days * DAY)

    @rule(customer=st.sampled_from(CUSTOMERS), points=st.integers(1, 500),
          expires_in=st.one_of(st.none(), st.integers(-1, 12).map(lambda d: d * DAY),
                               st.integers(-3600, 20 * int(DAY))))
    def award(self, customer: str, points: int, expires_in: float | None) -> None:
        now = self.clock.now()
        expires_at = None if expires_in is None else now + expires_in
        when = None if expires_at is None else datetime.fromtimestamp(expires_at, tz=UTC)
        key = self._key()
        args = (customer, points)
        kwargs = {"idempotency_key": key, "reason": "award", "expires_at": when}
        if expires_at is not None and expires_at <= now:
            before = self._snapshot()
            try:
                self.client.award_points(*args, **kwargs)
            except InputError as exc:
                assert exc.field == "expires_at"
            else:
                raise AssertionError("an award expiring in the past was accepted")
            assert self._snapshot() == before
            return
        entry = self.client.award_points(*args, **kwargs)
        lot = ModelLot(entry.entry_id, points, entry.expires_at, len(self.entries))
        self.customers[customer].lots.append(lot)
        self.entries.append(ModelEntry(entry.entry_id, customer, "award", points, entry.expires_at, lot=lot))
        self.calls.append(("award_points", args, kwargs, entry))

    @rule(customer=st.sampled_from(CUSTOMERS), share=st.sampled_from([0.1, 0.3, 0.5, 0.75, 0.9, 1.0, 1.2]))
    def redeem(self, customer: str, share: float) -> None:
        self._expire_eagerly()
        model = self.customers[customer]
        # A share of what the model holds, so most redemptions go through and some overshoot.
        points = max(1, round(model.balance() * share))
        key = self._key()
        args = (customer, points)
        kwargs = {"idempotency_key": key, "reason": "redeem"}
        if points > model.balance():
            before = self._snapshot()
            try:
                self.client.redeem_points(*args, **kwargs)
            except LedgerError:
                pass
            else:
                raise AssertionError(f"redeem of {points} accepted with a model balance of {model.balance()}")
            assert self._snapshot() == before
            return
        entry = self.client.redeem_points(*args, **kwargs)
        taken = model.take(points)
        self.entries.append(ModelEntry(entry.entry_id, customer, "redeem", -points, None, taken=taken))
        self.calls.append(("redeem_points", args, kwargs, entry))

    @precondition(lambda self: self.entries)
    @rule(pick=st.integers(0, 10**6))
    def reverse(self, pick: int) -> None:
        self._expire_eagerly()
        target = self.entries[pick % len(self.entries)]
        model = self.customers[target.customer]
        now = self.clock.now()
        refused = (
            target.kind not in ("award", "redeem")
            or target.reversed
            or (target.kind == "award" and target.expires_at is not None and target.expires_at <= now)
            or (target.kind == "award" and model.balance() < target.points)
        )
        key = self._key()
        args = (target.entry_id,)
        kwargs = {"idempotency_key": key, "reason": "reverse"}
        if refused:
            before = self._snapshot()
            try:
                self.client.reverse_points(*args, **kwargs)
            except LedgerError:
                pass
            else:
                raise AssertionError(f"reversal of {target} accepted")
            assert self._snapshot() == before
            return
        entry = self.client.reverse_points(*args, **kwargs)
        assert entry.points == -target.points and entry.reverses == target.entry_id
        target.reversed = True
        if target.kind == "award":
            own = target.lot if any(lot is target.lot for lot in model.lots) else None
            model.take(target.points, first=own)
        else:
            for lot, part in target.taken:
                alive = lot is model.credit or any(other is lot for other in model.lots)
                (lot if alive else model.credit).remaining += part
        self.entries.append(ModelEntry(entry.entry_id, target.customer, "reverse", entry.points, None))
        self.calls.append(("reverse_points", args, kwargs, entry))

    @rule(seconds=st.one_of(st.integers(0, 3600), st.integers(1, 6).map(lambda d: d * int(DAY))))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.calls)
    @rule(pick=st.integers(0, 10**6))
    def replay(self, pick: int) -> None:
        method, args, kwargs, first = self.calls[pick % len(self.calls)]
        before = self._snapshot()
        assert getattr(self.client, method)(*args, **kwargs) == first
        assert self._snapshot() == before

    @rule(customer=st.one_of(st.sampled_from(CUSTOMERS), st.text(max_size=3), st.none(), st.integers()),
          points=st.one_of(st.integers(max_value=0), st.integers(min_value=10**9 + 1), st.floats(),
                           st.text(max_size=4), st.none(), st.booleans()),
          reason=st.one_of(st.text(max_size=250), st.none()),
          op=st.sampled_from(["award_points", "redeem_points"]))
    def bad_input(self, customer: Any, points: Any, reason: Any, op: str) -> None:
        before = self._snapshot()
        try:
            getattr(self.client, op)(customer, points, idempotency_key=self._key(), reason=reason)
        except NboError:
            pass
        else:
            raise AssertionError("an invalid call was accepted")
        assert self._snapshot() == before

    @rule(roll=st.integers(0, 3))
    def sync(self, roll: int) -> None:
        """What the sync client does on an ack: the hub's balance replaces everything it has seen."""
        if roll:
            return  # a sync folds every lot into the credit: keep it rarer than the other steps
        self._expire_eagerly()
        with self.client._store.transaction() as tx:
            (acked,) = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox")[0]
            _ledger.apply_central_balances(tx, {c: m.balance() for c, m in self.customers.items()},
                                           acked_through=int(acked))
            tx.execute("UPDATE outbox SET acked = 1 WHERE seq <= ?", (acked,))
        for model in self.customers.values():
            # The device no longer knows these lots: they are one opaque, non-expiring credit.
            model.credit = ModelLot(None, model.balance(), None, -1)
            model.lots = []
        self.synced = True

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def balances_match_the_model_and_the_live_entries(self) -> None:
        self._expire_eagerly()
        for customer, model in self.customers.items():
            balance = self.client.points_balance(customer)  # materialises due expiry
            assert balance == model.balance(), (customer, balance, model.balance())
            assert balance >= 0
            with self.client._store.transaction() as tx:
                central = tx.execute("SELECT balance, as_of_seq FROM central_balances WHERE customer_id = ?",
                                     (customer,))
                opening, as_of = (central[0][0], central[0][1]) if central else (0, 0)
                (live,) = tx.execute("SELECT COALESCE(SUM(points), 0) FROM ledger_entries "
                                     "WHERE customer_id = ? AND seq > ?", (customer, as_of))[0]
            assert balance == opening + live

    @invariant()
    def every_entry_has_exactly_its_event_and_seq_is_gapless(self) -> None:
        with self.client._store.transaction() as tx:
            events = tx.execute("SELECT seq, payload FROM outbox WHERE type = 'points' ORDER BY seq")
            rows = tx.execute("SELECT seq, entry_id FROM ledger_entries ORDER BY seq")
            (count, top) = tx.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM outbox")[0]
        assert count == top
        assert [(seq, json.loads(p)["entry_id"]) for seq, p in events] == [tuple(r) for r in rows]

    @invariant()
    def the_hub_folds_the_events_to_the_same_balance(self) -> None:
        if self.synced:
            return  # after a simulated sync the "hub" balance is the model's, checked above
        with self.client._store.transaction() as tx:
            payloads = [json.loads(p) for (p,) in tx.execute(
                "SELECT payload FROM outbox WHERE type = 'points' ORDER BY seq")]
        now = self.clock.now()
        for customer in CUSTOMERS:
            entries = [_ledger.entry_from_payload(p) for p in payloads if p["customer_id"] == customer]
            assert _ledger.ledger_balance(entries, now=now) == self.customers[customer].balance()


LedgerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerProperties = LedgerMachine.TestCase
