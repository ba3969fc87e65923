"""`nbo keys generate` and `nbo bundle build | verify | inspect` as a user runs them."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_fixtures import CATALOG_JSON, CATALOG_YAML, flip_byte, make_model, read_member, rewrite_zip
from nbo.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, _, _ = run(capsys, "keys", "generate", "--out", str(tmp_path / "keys"))
    assert code == 0
    return tmp_path / "keys"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "propensity.onnx")


def build(capsys: pytest.CaptureFixture[str], keys: Path, model: Path, out: Path, *extra: str,
          catalog: Path = CATALOG_YAML, version: str = "1") -> tuple[int, str, str]:
    return run(capsys, "bundle", "build", "--catalog", str(catalog), "--model", f"propensity={model}",
               "--name", "small", "--version", version, "--key", str(keys / "signing.key"), "--out", str(out),
               *extra)


def test_keys_generate_then_refuses_to_overwrite(tmp_path, capsys):
    code, out, _ = run(capsys, "keys", "generate", "--out", str(tmp_path / "k"))
    assert code == 0 and "key id:" in out
    private = tmp_path / "k" / "signing.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    first = private.read_bytes()
    code, _, err = run(capsys, "keys", "generate", "--out", str(tmp_path / "k"))
    assert code == 1
    assert_one_line_error(err, "already exists", "--force")
    assert private.read_bytes() == first
    code, _, _ = run(capsys, "keys", "generate", "--out", str(tmp_path / "k"), "--force")
    assert code == 0 and private.read_bytes() != first


def test_build_verify_inspect(tmp_path, capsys, keys, model):
    bundle = tmp_path / "out" / "small-v1.zip"
    code, out, err = build(capsys, keys, model, bundle, "--expires-at", "2099-01-01T00:00:00Z")
    assert code == 0, err
    assert "bundle small v1, 5 offers, models: propensity" in out

    code, out, err = run(capsys, "bundle", "verify", str(bundle), "--trusted-key", str(keys / "signing.pub"))
    assert code == 0, err
    assert "OK: bundle small v1 is valid" in out
    assert "models: propensity (4 inputs)" in out and "offers: 5" in out and "2099-01-01T00:00:00Z" in out

    code, out, err = run(capsys, "bundle", "inspect", str(bundle))
    assert code == 0, err
    for title in ("Manifest", "Models (1)", "Model inputs (4)", "Offers (5)", "Rules (4)", "Strategies (3)",
                  "Strategy assignment (3, first match wins)", "Contact policies (2)"):
        assert title in out
    for text in ("CARD_GOLD", "no_repeat_after_decline", "signature not checked", "upsell=1.5"):
        assert text in out
    # one row per model input, with the field it reads: no 600-character line
    assert re.search(r"^propensity +customer__frequency +float +customer\.frequency$", out, flags=re.M)
    assert max(len(line) for line in out.splitlines()) < 200


def test_json_catalog_builds_too(tmp_path, capsys, keys, model):
    code, _, err = build(capsys, keys, model, tmp_path / "b.zip", catalog=CATALOG_JSON)
    assert code == 0, err


def test_verify_accepts_any_of_several_trusted_keys(tmp_path, capsys, keys, model):
    bundle = tmp_path / "b.zip"
    assert build(capsys, keys, model, bundle)[0] == 0
    run(capsys, "keys", "generate", "--out", str(tmp_path / "other"))
    code, out, _ = run(capsys, "bundle", "verify", str(bundle), "--trusted-key", str(tmp_path / "other/signing.pub"),
                       "--trusted-key", str(keys / "signing.pub"))
    assert code == 0 and "OK" in out


def test_verify_failures_are_one_line_and_exit_1(tmp_path, capsys, keys, model):
    bundle = tmp_path / "b.zip"
    assert build(capsys, keys, model, bundle)[0] == 0
    pub = str(keys / "signing.pub")

    run(capsys, "keys", "generate", "--out", str(tmp_path / "other"))
    code, out, err = run(capsys, "bundle", "verify", str(bundle), "--trusted-key", str(tmp_path / "other/signing.pub"))
    assert code == 1 and out == ""
    assert_one_line_error(err, "untrusted key")

    tampered = rewrite_zip(bundle, tmp_path / "t.zip",
                           replace={"catalog.sqlite": flip_byte(read_member(bundle, "catalog.sqlite"))})
    code, _, err = run(capsys, "bundle", "verify", str(tampered), "--trusted-key", pub)
    assert code == 1
    assert_one_line_error(err, "sha256 of catalog.sqlite")

    truncated = tmp_path / "trunc.zip"
    truncated.write_bytes(bundle.read_bytes()[:500])
    code, _, err = run(capsys, "bundle", "verify", str(truncated), "--trusted-key", pub)
    assert code == 1
    assert_one_line_error(err, "not a readable zip")

    code, _, err = run(capsys, "bundle", "verify", str(bundle), "--trusted-key", str(tmp_path / "nope.pub"))
    assert code == 1
    assert_one_line_error(err, "nope.pub")

    code, _, err = run(capsys, "bundle", "inspect", str(truncated))
    assert code == 1
    assert_one_line_error(err, "not a readable zip")


def test_build_reports_catalog_errors_with_file_item_and_field(tmp_path, capsys, keys, model):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CATALOG_YAML.read_text().replace("margin: 120.0", "margin: -120.0")
                   .replace("category: xsell", "category: crosssell"))
    code, out, err = build(capsys, keys, model, tmp_path / "b.zip", catalog=bad)
    assert code == 1 and out == ""
    assert err.startswith("error: bad.yaml: 2 catalog errors:")
    assert "bad.yaml: offers[0] (offer_id=CARD_GOLD): margin: must be a number >= 0" in err
    assert "bad.yaml: offers[1] (offer_id=INSURANCE_TRAVEL): category: unknown category 'crosssell'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize(("model_arg", "fragment"), [
    ("propensity", "--model must look like ID=PATH.onnx"),
    ("=x.onnx", "--model must look like ID=PATH.onnx"),
    ("propensity=missing.onnx", "file not found"),
])
def test_build_rejects_bad_model_arguments(tmp_path, capsys, keys, model_arg, fragment):
    code, _, err = run(capsys, "bundle", "build", "--catalog", str(CATALOG_YAML), "--model", model_arg,
                       "--name", "small", "--version", "1", "--key", str(keys / "signing.key"),
                       "--out", str(tmp_path / "b.zip"))
    assert code == 1
    assert_one_line_error(err, fragment)


def test_build_refuses_a_model_with_badly_named_inputs(tmp_path, capsys, keys):
    bad_model = make_model(tmp_path / "bad.onnx", inputs=[("frequency", "float"), ("offer__category", "string")])
    code, _, err = build(capsys, keys, bad_model, tmp_path / "b.zip")
    assert code == 1
    assert_one_line_error(err, "input 'frequency' must be named customer__X")


def test_build_rejects_version_zero_and_bad_expiry_as_usage_errors(tmp_path, capsys, keys, model):
    for extra, fragment in ((("--version", "0"), "argument --version: must be at least 1, got 0"),
                            (("--expires-at", "tomorrow"), "argument --expires-at: not an ISO-8601 time")):
        with pytest.raises(SystemExit) as info:
            build(capsys, keys, model, tmp_path / "b.zip", *extra)
        assert info.value.code == 2
        assert_one_line_error(capsys.readouterr().err, fragment)
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize("argv", [
    ["keys", "--help"], ["keys", "generate", "--help"], ["bundle", "--help"], ["bundle", "build", "--help"],
    ["bundle", "verify", "--help"], ["bundle", "inspect", "--help"],
])
def test_every_command_has_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: nbo" in out and len(out.splitlines()) > 3


def test_the_console_script_exits_non_zero_on_a_bad_bundle(tmp_path, keys, model, capsys):
    bundle = tmp_path / "b.zip"
    assert build(capsys, keys, model, bundle)[0] == 0
    nbo = shutil.which("nbo", path=str(Path(sys.executable).parent))
    assert nbo is not None
    ok = subprocess.run([nbo, "bundle", "verify", str(bundle), "--trusted-key", str(keys / "signing.pub")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK: bundle small v1" in ok.stdout
    bad = rewrite_zip(bundle, tmp_path / "bad.zip", add={"../x": b"x"})
    refused = subprocess.run([nbo, "bundle", "verify", str(bad), "--trusted-key", str(keys / "signing.pub")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stdout == ""
    assert_one_line_error(refused.stderr, "'..' in path")


def test_bundle_install_and_rollback_on_a_device(tmp_path, capsys, keys, model):
    v1, v2 = tmp_path / "v1.zip", tmp_path / "v2.zip"
    assert build(capsys, keys, model, v1)[0] == 0
    assert build(capsys, keys, model, v2, version="2")[0] == 0
    pub = str(keys / "signing.pub")
    state = str(tmp_path / "pos-9")

    code, _, err = run(capsys, "bundle", "install", str(v1), "--state", state, "--trusted-key", pub)
    assert code == 2
    assert_one_line_error(err, "--device-id")

    code, out, _ = run(capsys, "bundle", "install", str(v1), "--state", state, "--device-id", "pos-9",
                       "--trusted-key", pub)
    assert code == 0 and "installed small v1" in out
    code, out, _ = run(capsys, "bundle", "install", str(v2), "--state", state, "--trusted-key", pub)
    assert code == 0 and "installed small v2" in out
    code, _, err = run(capsys, "bundle", "install", str(v1), "--state", state, "--trusted-key", pub)
    assert code == 1
    assert_one_line_error(err, "rollback protection", "use --force")
    assert "force=True" not in err
    code, out, _ = run(capsys, "bundle", "rollback", "--state", state, "--trusted-key", pub)
    assert code == 0 and "rolled back to small v1" in out

    from nbo.sdk import Client

    with Client.open(state, device_id="pos-9", trusted_keys=[keys / "signing.pub"]) as client:
        assert client.bundle is not None and client.bundle.version == 1
