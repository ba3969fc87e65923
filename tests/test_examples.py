"""Every example in examples/ runs on its own as a subprocess and prints what it promises.

cdnow_clv.py has its own test (test_cdnow_example.py) and mobile_backend_client.py is run by
test_proto_only_client.py against a real `nbo serve`; the others are run here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_fixtures import make_bundle, make_keys, small_catalog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES.parent)


def test_every_example_is_covered() -> None:
    """A new example must get a test (here or in its own file)."""
    covered = {"pos_offline.py", "kiosk_embed.py", "central_publish.py", "cdnow_clv.py", "mobile_backend_client.py"}
    tests = Path(__file__).parent
    assert (tests / "test_cdnow_example.py").exists() and (tests / "test_proto_only_client.py").exists()
    found = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert found == covered


def test_pos_offline_sells_with_the_hub_down_and_catches_up() -> None:
    out = run_example("pos_offline.py", "--customers", "8")
    assert out.returncode == 0, out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    text = out.stdout
    checkouts = re.findall(r"^checkout +\d+ +(C\d+) .* points balance (\d+)$", text, flags=re.M)
    assert len(checkouts) == 8 and all(int(points) > 0 for _, points in checkouts)
    # every sync attempt while the hub is down fails cleanly and the outbox only grows
    waiting = [int(n) for n in re.findall(r"sync failed \(HubUnavailableError: .*UNAVAILABLE.*\); (\d+) events wait", text)]
    assert len(waiting) == 2 and 0 < waiting[0] < waiting[1]
    offline = re.search(r"offline: 8 checkouts served, 2 sync attempts failed, (\d+) events waiting", text)
    assert offline is not None
    backlog = int(offline.group(1))
    # 8 checkouts x (decision, response, purchase, points, payment)
    assert backlog == 8 * 5
    synced = re.search(r"synced: pushed (\d+) events, hub acknowledged through seq (\d+), dead-lettered (\d+), "
                       r"balances updated (\d+); (\d+) events pending", text)
    assert synced is not None, text
    assert synced.groups() == (str(backlog), str(backlog), "0", "8", "0")
    assert "synced again: pushed 0 events" in text


def test_kiosk_embed_prepares_a_bundle_when_run_bare() -> None:
    out = run_example("kiosk_embed.py")
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout
    assert "preparing a sample bundle" in text
    assert re.search(r"^installed bundle retail v1 \(\d+ offers\)$", text, flags=re.M)
    ranked = re.findall(r"^  (\d)\. ([A-Z]+) .*: score ([\d.]+) = propensity ([\d.]+) x value", text, flags=re.M)
    assert [r[0] for r in ranked] == ["1", "2", "3"]
    assert {r[1] for r in ranked} <= {"XSELL", "UPSELL", "LOYALTY", "RETENTION", "WINBACK", "SERVICE"}


@pytest.fixture(scope="module")
def kiosk_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kiosk")
    key, pub = make_keys(root / "keys")
    catalog = small_catalog()
    catalog["channels"] = [*catalog["channels"], "kiosk"]
    return make_bundle(root / "bundles", key=key, catalog=catalog), pub


def test_kiosk_embed_with_a_bundle_keeps_it_across_restarts(tmp_path: Path, kiosk_bundle: tuple[Path, Path]) -> None:
    bundle, pub = kiosk_bundle
    state = tmp_path / "state"
    first = run_example("kiosk_embed.py", str(bundle), str(pub), str(state))
    assert first.returncode == 0, first.stderr + first.stdout
    assert "installed bundle small v1" in first.stdout and "  1. " in first.stdout
    again = run_example("kiosk_embed.py", str(bundle), str(pub), str(state))
    assert again.returncode == 0, again.stderr + again.stdout
    assert "keeping bundle small v1: " in again.stdout and "  1. " in again.stdout


def test_kiosk_embed_refuses_a_bundle_from_an_untrusted_key(tmp_path: Path,
                                                            kiosk_bundle: tuple[Path, Path]) -> None:
    bundle, _ = kiosk_bundle
    _, other_pub = make_keys(tmp_path / "other")
    out = run_example("kiosk_embed.py", str(bundle), str(other_pub), str(tmp_path / "state"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "untrusted" in out.stderr and len(out.stderr.splitlines()) == 1


def test_central_publish_trains_reports_signs_and_publishes() -> None:
    out = run_example("central_publish.py", "--customers", "200")
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout
    auc = re.search(r"^\[2\] model: propensity\.onnx \(logreg\), holdout AUC ([\d.]+), .* ONNX parity ([\d.e+-]+)$",
                    text, flags=re.M)
    assert auc is not None, text
    assert 0.5 < float(auc.group(1)) <= 1.0 and float(auc.group(2)) <= 1e-4
    assert re.search(r"^\[3\] report: .*report-v1\.html \(\d+ KiB\)$", text, flags=re.M)
    assert re.search(r"^\[4\] bundle: retail-v1\.zip, \d+ offers, signed by key [0-9a-f]+", text, flags=re.M)
    assert re.search(r"^\[5\] 127\.0\.0\.1:\d+: retail v1 published, \d+ offers$", text, flags=re.M)
    assert text.count("gateway now decides with bundle retail v1: ") == 2
    assert "publishing the same file again: no change" in text
    assert re.search(r"a bundle signed by an unknown key is refused: .*untrusted key", text)
