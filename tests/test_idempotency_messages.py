"""A reused idempotency key says which key and which argument differs (payments, purchases).

Through the real client on a real SQLite state file; the ledger's cases are in test_ledger.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nbo.sdk import Client, InputError


@pytest.fixture
def client(tmp_path: Path) -> Client:
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[]) as c:
        yield c


def test_a_payment_key_reused_for_another_decision_names_key_and_argument(client: Client) -> None:
    client.record_payment("C1", payment_token="tok_1", amount="59.90", currency="EUR", idempotency_key="receipt-1:pay",
                          decision_id="d-first")
    with pytest.raises(InputError) as info:
        client.record_payment("C1", payment_token="tok_1", amount="59.90", currency="EUR",
                              idempotency_key="receipt-1:pay", decision_id="d-second")
    assert str(info.value) == ("idempotency key 'receipt-1:pay' was already used with different arguments "
                               "(decision_id 'd-first' then, 'd-second' now)")
    assert info.value.field == "idempotency_key"


def test_a_payment_key_names_every_argument_that_differs(client: Client) -> None:
    client.record_payment("C1", payment_token="tok_1", amount="10.00", currency="EUR", idempotency_key="p")
    with pytest.raises(InputError, match=r"\(amount '10.00' then, '12.50' now; currency 'EUR' then, 'USD' now\)"):
        client.record_payment("C1", payment_token="tok_1", amount="12.50", currency="USD", idempotency_key="p")


def test_a_purchase_key_reused_names_key_and_argument(client: Client) -> None:
    client.record_purchase("C1", amount="59.90", idempotency_key="receipt-1")
    client.record_purchase("C1", amount="59.9", idempotency_key="receipt-1")  # the same amount: the first result
    with pytest.raises(InputError) as info:
        client.record_purchase("C1", amount="60.00", quantity=2, idempotency_key="receipt-1")
    assert str(info.value) == ("idempotency key 'receipt-1' was already used with different arguments "
                               "(amount 59.9 then, 60.00 now; quantity 1 then, 2 now)")
