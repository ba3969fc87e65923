"""The SDK's front door is small and pinned."""

import nbo.sdk
from nbo.sdk import InputError, NboError, PaymentDataError


def test_exported_names_are_pinned():
    assert sorted(nbo.sdk.__all__) == sorted([
        "BundleError", "BundleInfo", "CatalogError", "Client", "ClientConfig", "Clock", "ConfigError",
        "DamagedStateError", "Decision", "Exclusion", "InputError", "LedgerEntry", "LedgerError", "ManualClock", "ModelError",
        "NboError", "NotFoundError", "NotReadyError", "PaymentDataError", "PaymentRecord", "RankedOffer",
        "RecoveryReport", "RuleError", "StateError", "SyncError", "SyncReport", "SystemClock", "__version__",
        "recover_state",
    ])
    for name in nbo.sdk.__all__:
        assert hasattr(nbo.sdk, name), name


def test_every_error_derives_from_nbo_error_and_has_a_docstring():
    errors = [getattr(nbo.sdk, n) for n in nbo.sdk.__all__ if n.endswith("Error")]
    assert len(errors) == 14
    for err in errors:
        assert issubclass(err, NboError)
        assert err.__doc__ and "\n" not in err.__doc__.strip()
    assert issubclass(PaymentDataError, InputError)
    assert InputError("bad", field="x").field == "x"
