"""docs/training.md and bench/RESULTS.md contract of the embedded path, checked on a real installed bundle.

- ONNX sessions run with ``intra_op_num_threads=1`` (and inter-op 1) and thread spinning off:
  a terminal shares its cores with the POS application, and a spinning pool burns them.
- Opening a client, installing a signed bundle and deciding loads no scikit-learn, pandas,
  grpc/protobuf or sqlite-utils (sqlite-utils imports pandas whenever it is installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine_fixtures import signed_bundle, signing_keys, synthetic_profile, synthetic_spec, train_model
from nbo.sdk import Client, ManualClock

NOW = 1_767_000_000.0
HEAVY = ("sklearn", "pandas", "grpc", "google", "sqlite_utils", "skl2onnx", "onnx", "matplotlib", "yaml")


def _bundle(tmp_path: Path) -> tuple[Path, Path]:
    key, pub = signing_keys(tmp_path / "keys")
    models = {"gbt0": train_model(10)[0], "gbt1": train_model(10, seed=1)[0]}
    bundle = signed_bundle(tmp_path / "build", synthetic_spec(30, n_models=2, name="shop"), key=key, models=models)
    return bundle, pub


def test_installed_sessions_are_single_threaded_without_spinning(tmp_path: Path) -> None:
    bundle, pub = _bundle(tmp_path)
    with Client.open(tmp_path / "state", device_id="d1", trusted_keys=[pub], clock=ManualClock(NOW)) as client:
        client.install_bundle(bundle)
        sessions = client._require_bundle().sessions
        assert sorted(sessions) == ["gbt0", "gbt1"]
        for model_id, session in sessions.items():
            opts = session.get_session_options()
            assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1), model_id
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0", model_id
            assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0", model_id
            assert session.get_providers() == ["CPUExecutionProvider"], model_id
    # the same holds for a bundle loaded at open (the restart path), not only after install
    with Client.open(tmp_path / "state", device_id="d1", trusted_keys=[pub], clock=ManualClock(NOW)) as client:
        for session in client._require_bundle().sessions.values():
            opts = session.get_session_options()
            assert opts.intra_op_num_threads == 1
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


_CHILD = """
import json, sys
from pathlib import Path
from nbo.sdk import Client
with Client.open(Path(sys.argv[1]), device_id="d1", trusted_keys=[Path(sys.argv[2])]) as client:
    client.install_bundle(Path(sys.argv[3]))
    decision = client.decide("C1", channel="pos", profile=json.loads(sys.argv[4]), limit=5, explain=True)
    client.record_response(decision.decision_id, decision.offers[0].offer_id, "accepted")
    client.record_purchase("C1", amount="12.50", idempotency_key="k1")
    again = client.decide("C1", channel="app")
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[5])))
print(json.dumps({"loaded": loaded, "offers": len(decision.offers), "version": again.bundle_version}))
"""


def test_the_embedded_path_loads_no_training_gateway_or_sync_modules(tmp_path: Path) -> None:
    bundle, pub = _bundle(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "state"), str(pub), str(bundle),
         json.dumps(synthetic_profile(4)), json.dumps(HEAVY)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["offers"] >= 1 and result["version"] == 1  # it really decided
    assert result["loaded"] == []


def test_the_heavy_module_check_can_fail() -> None:
    """Positive control: the same probe sees a module the child did import."""
    code = "import sys, sqlite_utils; print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlite_utils'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['sqlite_utils']"
