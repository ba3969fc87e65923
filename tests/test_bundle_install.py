"""Device-side install through ``Client``: every tamper case is refused and the active bundle keeps serving."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import (
    flip_byte,
    flip_stored_byte,
    make_bundle,
    make_keys,
    make_model,
    read_member,
    resign,
    rewrite_zip,
)
from nbo.sdk import BundleError, Client, InputError, ManualClock, NotReadyError
from nbo.sdk.core import BundleStore, load_trusted_keys


@dataclass(frozen=True)
class Env:
    root: Path
    key: Path
    pub: Path
    other_key: Path
    model: Path
    v1: Path
    v2: Path
    v3: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("install")
    key, pub = make_keys(root / "keys")
    other_key, _ = make_keys(root / "other-keys")
    model = make_model(root / "src" / "propensity.onnx")
    bundles = {v: make_bundle(root / "bundles", key=key, version=v, models={"propensity": model}) for v in (1, 2, 3)}
    return Env(root, key, pub, other_key, model, bundles[1], bundles[2], bundles[3])


def open_client(state: Path, env: Env, clock: ManualClock | None = None) -> Client:
    return Client.open(state, device_id="pos-1", trusted_keys=[env.pub.read_bytes()], clock=clock or ManualClock())


def tree_digest(directory: Path) -> str:
    """One hash over every file path and content below ``directory``."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*")):
        h.update(path.relative_to(directory).as_posix().encode() + b"\0")
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def assert_serves(client: Client, *, version: int) -> None:
    """The client answers a real decision, made from the active bundle at ``version``."""
    decision = client.decide("C1", channel="pos", profile={"age": 40, "owned_products": []}, limit=5)
    assert (decision.bundle_name, decision.bundle_version) == ("small", version)
    assert decision.offers


# -- tamper cases (each builds a bad zip from the good v3) -------------------------------------


def _flip_member(member: str) -> Callable[[Env, Path], Path]:
    def make(env: Env, tmp: Path) -> Path:
        data = read_member(env.v3, member)
        return rewrite_zip(env.v3, tmp / "bad.zip", replace={member: flip_byte(data)})
    return make


def _bit_rot(member: str) -> Callable[[Env, Path], Path]:
    return lambda env, tmp: flip_stored_byte(env.v3, tmp / "bad.zip", member)


def _flip_signature(env: Env, tmp: Path) -> Path:
    sig = json.loads(read_member(env.v3, "manifest.sig"))
    raw = bytearray(base64.b64decode(sig["signature"]))
    raw[-1] ^= 0x80
    sig["signature"] = base64.b64encode(bytes(raw)).decode()
    return rewrite_zip(env.v3, tmp / "bad.zip", replace={"manifest.sig": json.dumps(sig).encode()})


def _untrusted(env: Env, tmp: Path) -> Path:
    return make_bundle(tmp / "untrusted", key=env.other_key, version=3, models={"propensity": env.model})


def _truncated(env: Env, tmp: Path) -> Path:
    data = env.v3.read_bytes()
    (tmp / "bad.zip").write_bytes(data[: len(data) - 300])
    return tmp / "bad.zip"


def _expired(env: Env, tmp: Path) -> Path:
    return make_bundle(tmp / "expired", key=env.key, version=3, models={"propensity": env.model},
                       created_at="2020-01-01T00:00:00Z", expires_at="2023-06-01T00:00:00Z")


def _resigned(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Env, Path], Path]:
    return lambda env, tmp: resign(env.v3, tmp / "bad.zip", key=env.key, mutate=mutate)


def _model_that_does_not_load(env: Env, tmp: Path) -> Path:
    """Correctly signed and hashed, but the model is garbage: refused at load, before the switch."""
    garbage = b"definitely not an onnx graph"

    def point_at_garbage(m: dict[str, Any]) -> None:
        m["models"][0]["sha256"] = hashlib.sha256(garbage).hexdigest()

    resigned = resign(env.v3, tmp / "resigned.zip", key=env.key, mutate=point_at_garbage)
    return rewrite_zip(resigned, tmp / "bad.zip", replace={"models/propensity.onnx": garbage})


TAMPER_CASES: dict[str, Callable[[Env, Path], Path]] = {
    "model byte flipped": _flip_member("models/propensity.onnx"),
    "model bit rot in the zip": _bit_rot("models/propensity.onnx"),
    "catalog byte flipped": _flip_member("catalog.sqlite"),
    "catalog bit rot in the zip": _bit_rot("catalog.sqlite"),
    "manifest byte flipped": _flip_member("manifest.json"),
    "signature byte flipped": _flip_signature,
    "file added": lambda env, tmp: rewrite_zip(env.v3, tmp / "bad.zip", add={"models/evil.onnx": b"x"}),
    "file removed": lambda env, tmp: rewrite_zip(env.v3, tmp / "bad.zip", remove=["catalog.sqlite"]),
    "signature removed": lambda env, tmp: rewrite_zip(env.v3, tmp / "bad.zip", remove=["manifest.sig"]),
    "untrusted key": _untrusted,
    "older version": lambda env, tmp: env.v1,
    # the same version built again (another created_at): a different bundle under a used version
    "same version again": lambda env, tmp: make_bundle(tmp / "rebuilt", key=env.key, version=2,
                                                        models={"propensity": env.model},
                                                        created_at="2026-02-01T00:00:00Z"),
    "truncated zip": _truncated,
    "../ path entry": lambda env, tmp: rewrite_zip(env.v3, tmp / "bad.zip", add={"../../escape.txt": b"x"}),
    "absolute path entry": lambda env, tmp: rewrite_zip(env.v3, tmp / "bad.zip", add={"/tmp/escape.txt": b"x"}),
    "expired bundle": _expired,
    "min_sdk too new": _resigned(lambda m: m.update(min_sdk="99.0")),
    "format 2": _resigned(lambda m: m.update(format=2)),
    "model that does not load": _model_that_does_not_load,
    "not a file": lambda env, tmp: tmp / "absent.zip",
}


def test_the_untampered_bundle_installs(env, tmp_path):
    """Positive control for the tamper cases: the same v3 they start from is accepted."""
    with open_client(tmp_path / "state", env) as client:
        client.install_bundle(env.v2)
        info = client.install_bundle(env.v3)
        assert (info.name, info.version, info.offer_count, info.models) == ("small", 3, 5, ("propensity",))
        assert_serves(client, version=3)


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_tampered_bundle_is_refused_and_the_active_bundle_keeps_serving(env, tmp_path, case):
    state = tmp_path / "state"
    with open_client(state, env) as client:
        client.install_bundle(env.v2)
        before = client.bundle
        bundles = state / "bundles"
        active_dir = next((bundles / "small").iterdir())
        digest_before = tree_digest(bundles)
        pointer_before = (bundles / "active.json").read_bytes()

        bad = TAMPER_CASES[case](env, tmp_path)
        with pytest.raises(BundleError) as info:
            client.install_bundle(bad)
        message = str(info.value)
        assert message and "\n" not in message

        assert client.bundle == before
        assert client._require_bundle().directory == active_dir
        assert (bundles / "active.json").read_bytes() == pointer_before
        assert tree_digest(bundles) == digest_before  # active files untouched, nothing left behind
        assert_serves(client, version=2)  # not just on disk: decisions still come from v2
    assert not (tmp_path / "escape.txt").exists() and not (state / "escape.txt").exists()
    with open_client(state, env) as reopened:
        assert reopened.bundle == before
        assert_serves(reopened, version=2)


def test_refusal_messages_say_why(env, tmp_path):
    with open_client(tmp_path / "state", env) as client:
        client.install_bundle(env.v2)
        cases = {
            "older version": "older than v2, the highest installed",
            "same version again": "already installed",
            "untrusted key": "untrusted key",
            "signature byte flipped": "does not verify",
            "model byte flipped": "sha256 of models/propensity.onnx does not match",
            "expired bundle": "expired at",
            "min_sdk too new": "needs SDK 99.0",
            "../ path entry": "'..' in path",
            "truncated zip": "not a readable zip",
            "model that does not load": "does not load",
        }
        for case, expected in cases.items():
            work = tmp_path / case.replace(" ", "_").replace("/", "")
            work.mkdir()
            with pytest.raises(BundleError, match=expected.replace("(", r"\(")):
                client.install_bundle(TAMPER_CASES[case](env, work))


# -- lifecycle ----------------------------------------------------------------------------------


def test_install_survives_reopening_the_state_dir(env, tmp_path):
    clock = ManualClock(1_700_000_000)
    with open_client(tmp_path / "state", env, clock) as client:
        assert client.bundle is None
        info = client.install_bundle(env.v1)
        assert info.installed_at == 1_700_000_000
    clock.advance(3600)
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[str(env.pub)], clock=clock) as again:
        assert again.bundle == info


def test_installing_the_active_bundle_again_changes_nothing(env, tmp_path):
    # A provisioning script (or the README's first snippet) run twice: the second install of
    # the very bundle that is active is not an error and touches nothing.
    clock = ManualClock(1_700_000_000)
    state = tmp_path / "state"
    with open_client(state, env, clock) as client:
        first = client.install_bundle(env.v2)
        directory = client._require_bundle().directory
    pointer = (state / "bundles" / "active.json").read_bytes()
    clock.advance(60)
    copy = tmp_path / "copy-of-v2.zip"
    shutil.copy(env.v2, copy)  # where it comes from does not matter, what it holds does
    with open_client(state, env, clock) as client:
        assert client.install_bundle(copy) == first
        assert client._require_bundle().directory == directory
        with pytest.raises(NotReadyError):  # v2 did not become its own "previous"
            client.rollback()
    assert (state / "bundles" / "active.json").read_bytes() == pointer  # installed_at and previous unchanged


def test_rollback_goes_back_one_step(env, tmp_path):
    clock = ManualClock()
    state = tmp_path / "state"
    with open_client(state, env, clock) as client:
        with pytest.raises(NotReadyError):
            client.rollback()
        client.install_bundle(env.v1)
        clock.advance(10)
        client.install_bundle(env.v2)
        clock.advance(10)
        back = client.rollback()
        assert (back.version, back.installed_at) == (1, clock.now())
        assert client.bundle == back
        with pytest.raises(NotReadyError):
            client.rollback()  # one step only
    with open_client(state, env, clock) as client:
        assert client.bundle is not None and client.bundle.version == 1
        # v2 stays the highest ever installed: going forward again to it is explicit
        with pytest.raises(BundleError, match="already installed"):
            client.install_bundle(env.v2)
        assert client.install_bundle(env.v2, force=True).version == 2
        assert client.install_bundle(env.v3).version == 3


def test_force_installs_an_older_version_without_lowering_the_protection(env, tmp_path):
    with open_client(tmp_path / "state", env) as client:
        client.install_bundle(env.v3)
        assert client.install_bundle(env.v1, force=True).version == 1
        with pytest.raises(BundleError, match="older than v3"):
            client.install_bundle(env.v2)
    pointer = json.loads((tmp_path / "state" / "bundles" / "active.json").read_text())
    assert pointer["highest"] == {"small": 3}


def test_rollback_protection_survives_a_restart(env, tmp_path):
    with open_client(tmp_path / "state", env) as client:
        client.install_bundle(env.v3)
    with open_client(tmp_path / "state", env) as client:
        with pytest.raises(BundleError, match="older than v3"):
            client.install_bundle(env.v1)


def test_only_the_active_and_previous_bundles_stay_on_disk(env, tmp_path):
    state = tmp_path / "state"
    leftover = state / "bundles" / ".staging-crashed"
    with open_client(state, env) as client:
        client.install_bundle(env.v1)
        leftover.mkdir()  # as if a previous process died while extracting
        (leftover / "catalog.sqlite").write_bytes(b"half")
        client.install_bundle(env.v2)
        client.install_bundle(env.v3)
    kept = sorted(p.name.split("-")[0] for p in (state / "bundles" / "small").iterdir())
    assert kept == ["2", "3"]
    assert not leftover.exists()


def test_a_bundle_built_elsewhere_installs_after_copying(env, tmp_path):
    build_dir = tmp_path / "build-machine"
    built = make_bundle(build_dir, key=env.key, version=7, models={"propensity": make_model(build_dir / "m.onnx")})
    device_copy = tmp_path / "device" / "download.zip"
    device_copy.parent.mkdir()
    shutil.copy(built, device_copy)
    shutil.rmtree(build_dir)
    with open_client(tmp_path / "state", env) as client:
        assert client.install_bundle(device_copy).version == 7


@pytest.mark.parametrize("member", ["models/propensity.onnx", "catalog.sqlite", "manifest.json"])
def test_an_active_bundle_modified_on_disk_is_not_served_but_the_device_still_records(env, tmp_path, member):
    state = tmp_path / "state"
    with open_client(state, env) as client:
        client.install_bundle(env.v1)
        directory = client._require_bundle().directory
    target = directory / member
    target.write_bytes(flip_byte(target.read_bytes()))
    with open_client(state, env) as client:
        assert client.bundle is None
        with pytest.raises(NotReadyError, match="modified on disk"):
            client.decide("C1", channel="pos")
        # money and points do not depend on a bundle: a damaged one must not stop the till
        client.award_points("C1", 10, idempotency_key="k1", reason="purchase")
        assert client.points_balance("C1") == 10
        # an install heals it (the same version needs force: rollback protection still holds)
        with pytest.raises(BundleError, match="already installed"):
            client.install_bundle(env.v1)
        assert client.install_bundle(env.v1, force=True).version == 1
        assert client.decide("C1", channel="pos").bundle_version == 1
    with open_client(state, env) as client:
        assert client.bundle is not None and client.bundle.version == 1


def test_a_missing_active_file_is_reported_and_rollback_heals(env, tmp_path):
    state = tmp_path / "state"
    with open_client(state, env) as client:
        client.install_bundle(env.v1)
        client.install_bundle(env.v2)
        directory = client._require_bundle().directory
    (directory / "models" / "propensity.onnx").unlink()
    with open_client(state, env) as client:
        with pytest.raises(NotReadyError, match="modified on disk"):
            client.decide("C1", channel="pos")
        assert client.rollback().version == 1
        assert client.decide("C1", channel="pos").bundle_version == 1


def test_a_corrupt_pointer_file_is_reported_by_decide(env, tmp_path):
    state = tmp_path / "state"
    with open_client(state, env) as client:
        client.install_bundle(env.v1)
    (state / "bundles" / "active.json").write_text("{not json")
    with open_client(state, env) as client:
        assert client.bundle is None
        with pytest.raises(NotReadyError, match="corrupt"):
            client.decide("C1", channel="pos")


def test_a_device_trusting_no_key_installs_nothing(env, tmp_path):
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[], clock=ManualClock()) as client:
        with pytest.raises(BundleError, match="untrusted key"):
            client.install_bundle(env.v1)
        assert client.bundle is None


def test_opening_with_a_bad_trusted_key_is_an_input_error(env, tmp_path):
    with pytest.raises(InputError) as info:
        Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[b"garbage"], clock=ManualClock())
    assert info.value.field == "trusted_keys"
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[env.pub], clock=ManualClock()) as client:
        assert client.bundle is None  # the state dir is still usable


def test_discard_never_removes_the_active_or_previous_bundle(env, tmp_path):
    store = BundleStore(tmp_path / "bundles", trusted_keys=load_trusted_keys([env.pub]), clock=ManualClock())
    first = store.stage(env.v1, force=False)
    store.commit(first)
    second = store.stage(env.v2, force=False)
    store.commit(second)
    store.discard(first)
    store.discard(second)
    assert first.directory.is_dir() and second.directory.is_dir()
    active, previous = store.active(), store.previous()
    assert active is not None and previous is not None
    assert (active.info.version, previous.info.version) == (2, 1)
    third = store.stage(env.v3, force=False)
    store.discard(third)  # staged but never committed: removed, nothing else changes
    assert not third.directory.exists()
    active_again = store.active()
    assert active_again is not None and active_again.directory == second.directory
