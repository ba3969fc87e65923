"""The error experience of every `nbo` command: one clear line, a non-zero exit, no traceback.

Each command is given what goes wrong in the field — a missing file, a bad flag, a bundle
signed by an untrusted key, an unreachable hub (a closed port, a short timeout), a state
directory whose ``state.sqlite`` is garbage — and must print exactly one line on stderr
saying what is wrong (and, where it is not obvious, what to do), exit non-zero, and show no
traceback. ``--debug`` shows the traceback. Commands run in-process through
``nbo.cli.main`` (what the console script calls), against real files, real SQLite and a
real gateway on 127.0.0.1:0; a few run as real processes.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundle_fixtures import make_bundle, make_keys, make_model
from gateway_helpers import (
    DEVICE_TOKEN,
    NBO_CLI,
    PUBLISHER_TOKEN,
    Gateway,
    bundle_kit,
    config_data,
    publish,
    running_gateway,
    toml_text,
)
from nbo.cli import build_parser, main
from nbo.sdk import Client


@dataclass(frozen=True)
class Env:
    """Files every scenario can point at."""

    root: Path
    key: Path
    pub: Path
    other_pub: Path
    bundle: Path
    """Signed by ``key``."""
    model: Path
    catalog: Path
    corrupt_state: Path
    """A directory whose state.sqlite is random bytes."""
    garbage_zip: Path
    config: Path
    """A valid gateway TOML trusting ``pub``."""
    missing: Path
    """A path under which nothing exists."""
    closed_hub: str
    """HOST:PORT nothing listens on."""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("cli-errors")
    key, pub = make_keys(root / "keys")
    _, other_pub = make_keys(root / "other-keys")
    bundle = make_bundle(root / "bundles", key=key)
    model = make_model(root / "model" / "propensity.onnx")
    corrupt = root / "corrupt-state"
    corrupt.mkdir()
    # deterministic garbage: long enough to have a "page", never a valid SQLite header
    (corrupt / "state.sqlite").write_bytes(bytes((i * 7919 + 13) % 251 for i in range(16384)))
    garbage_zip = root / "garbage.zip"
    garbage_zip.write_bytes(b"PK\x03\x04 this is not really a zip file " * 20)
    config = root / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=pub)), encoding="utf-8")
    return Env(root=root, key=key, pub=pub, other_pub=other_pub, bundle=bundle, model=model,
               catalog=Path(__file__).parent / "data" / "catalog_small.yaml", corrupt_state=corrupt,
               garbage_zip=garbage_zip, config=config, missing=root / "does-not-exist",
               closed_hub=f"127.0.0.1:{closed_port()}")


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_line(code: int, out: str, err: str, *expected: str) -> str:
    assert code != 0, f"exit status 0 on an error; stdout: {out!r}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(("error: ", "warning: ")), line
    for fragment in expected:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


# -- missing files, untrusted keys, corrupt state, closed ports: per command ---------------

Scenario = Callable[[Env], list[str]]

SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...]]] = {
    # nbo demo
    "demo/dir-is-a-file": (lambda e: ["demo", "--dir", str(e.bundle)], ("--dir", "cannot create")),
    "demo/too-few-customers": (lambda e: ["demo", "--customers", "1", "--dir", str(e.root / "demo")],
                               ("customers",)),
    # nbo keys generate
    "keys/out-is-a-file": (lambda e: ["keys", "generate", "--out", str(e.bundle)], ("cannot write keys",)),
    "keys/exists": (lambda e: ["keys", "generate", "--out", str(e.key.parent)], ("already exists", "--force")),
    # nbo bundle build
    "build/missing-catalog": (lambda e: ["bundle", "build", "--catalog", str(e.missing / "c.yaml"), "--model",
                                         f"propensity={e.model}", "--name", "x", "--version", "1", "--key",
                                         str(e.key), "--out", str(e.root / "o.zip")],
                              ("c.yaml", "cannot read catalog")),
    "build/missing-model": (lambda e: ["bundle", "build", "--catalog", str(e.catalog), "--model",
                                       f"propensity={e.missing / 'm.onnx'}", "--name", "x", "--version", "1",
                                       "--key", str(e.key), "--out", str(e.root / "o.zip")],
                            ("propensity", "not found")),
    "build/missing-key": (lambda e: ["bundle", "build", "--catalog", str(e.catalog), "--model",
                                     f"propensity={e.model}", "--name", "x", "--version", "1",
                                     "--key", str(e.missing / "signing.key"), "--out", str(e.root / "o.zip")],
                          ("signing.key",)),
    "build/public-key-as-private": (lambda e: ["bundle", "build", "--catalog", str(e.catalog), "--model",
                                               f"propensity={e.model}", "--name", "x", "--version", "1",
                                               "--key", str(e.pub), "--out", str(e.root / "o.zip")],
                                    ("key",)),
    # nbo bundle verify
    "verify/missing-bundle": (lambda e: ["bundle", "verify", str(e.missing / "b.zip"), "--trusted-key",
                                         str(e.pub)], ("not found", "b.zip")),
    "verify/missing-key": (lambda e: ["bundle", "verify", str(e.bundle), "--trusted-key",
                                      str(e.missing / "k.pub")], ("k.pub",)),
    "verify/untrusted": (lambda e: ["bundle", "verify", str(e.bundle), "--trusted-key", str(e.other_pub)],
                         ("untrusted key",)),
    "verify/not-a-zip": (lambda e: ["bundle", "verify", str(e.garbage_zip), "--trusted-key", str(e.pub)],
                         ("garbage.zip", "zip")),
    # nbo bundle inspect
    "inspect/missing-bundle": (lambda e: ["bundle", "inspect", str(e.missing / "b.zip")], ("not found",)),
    "inspect/not-a-zip": (lambda e: ["bundle", "inspect", str(e.garbage_zip)], ("garbage.zip", "zip")),
    # nbo demo-data / train / report
    "demo-data/out-under-a-file": (lambda e: ["demo-data", "--out", str(e.bundle / "data"), "--customers", "10"],
                                   ("cannot create",)),
    "train/missing-data": (lambda e: ["train", "--data", str(e.missing), "--out", str(e.root / "m"), "--quiet"],
                           ("customers.csv", "not found")),
    "report/missing-model-dir": (lambda e: ["report", str(e.missing)], ("metrics.json", "nbo train")),
    # nbo decide
    "decide/missing-state": (lambda e: ["decide", "--state", str(e.missing), "--customer", "C1", "--channel",
                                        "pos"], ("not a device state directory",)),
    "decide/corrupt-state": (lambda e: ["decide", "--state", str(e.corrupt_state), "--customer", "C1",
                                        "--channel", "pos"], ("state.sqlite", "damaged", "nbo recover")),
    "decide/corrupt-state-device-id": (lambda e: ["decide", "--state", str(e.corrupt_state), "--device-id",
                                                  "pos-1", "--customer", "C1", "--channel", "pos"],
                                       ("state.sqlite", "damaged")),
    "decide/missing-trusted-key": (lambda e: ["decide", "--state", str(e.root / "fresh-state"), "--device-id",
                                              "pos-1", "--customer", "C1", "--channel", "pos", "--trusted-key",
                                              str(e.missing / "k.pub")], ("k.pub",)),
    "decide/no-bundle": (lambda e: ["decide", "--state", str(e.root / "fresh-state"), "--device-id", "pos-1",
                                    "--customer", "C1", "--channel", "pos"], ("no bundle installed",)),
    "decide/bad-profile": (lambda e: ["decide", "--state", str(e.root / "fresh-state"), "--device-id", "pos-1",
                                      "--customer", "C1", "--channel", "pos", "--profile", "{age: 3"],
                           ("--profile", "json")),
    # nbo sync
    "sync/missing-state": (lambda e: ["sync", "--state", str(e.missing), "--hub", e.closed_hub, "--token", "t"],
                           ("not a device state directory",)),
    "sync/corrupt-state": (lambda e: ["sync", "--state", str(e.corrupt_state), "--hub", e.closed_hub,
                                      "--token", "t"], ("damaged",)),
    "sync/unreachable-hub": (lambda e: ["sync", "--state", str(e.root / "fresh-state"), "--device-id", "pos-1",
                                        "--hub", e.closed_hub, "--token", "t", "--timeout", "1"],
                             ("UNAVAILABLE", "127.0.0.1")),
    "sync/bad-address": (lambda e: ["sync", "--state", str(e.root / "fresh-state"), "--device-id", "pos-1",
                                    "--hub", "no-port-here", "--token", "t", "--timeout", "1"], ("HOST:PORT",)),
    "sync/cert-without-key": (lambda e: ["sync", "--state", str(e.root / "fresh-state"), "--device-id", "pos-1",
                                         "--hub", e.closed_hub, "--token", "t", "--client-cert", str(e.pub)],
                              ("--client-key",)),
    # nbo events
    "events/missing-state": (lambda e: ["events", "--state", str(e.missing)], ("not a device state directory",)),
    "events/corrupt-state": (lambda e: ["events", "--state", str(e.corrupt_state)], ("damaged",)),
    # nbo serve (only failures that happen before it would block)
    "serve/missing-config": (lambda e: ["serve", "--state", str(e.root / "gw"), "--listen", "127.0.0.1:0",
                                        "--config", str(e.missing / "gateway.toml")],
                             ("cannot read config file",)),
    "serve/bad-toml": (lambda e: ["serve", "--state", str(e.root / "gw"), "--listen", "127.0.0.1:0",
                                  "--config", str(e.garbage_zip)], ("not valid toml",)),
    "serve/corrupt-hub-db": (lambda e: ["serve", "--state", str(e.root / "gw"), "--listen", "127.0.0.1:0",
                                        "--config", str(e.config), "--hub-db",
                                        f"sqlite://{e.corrupt_state / 'state.sqlite'}"],
                             ("hub database", "damaged", "backup")),
    # nbo bundle install / rollback
    "install/missing-bundle": (lambda e: ["bundle", "install", str(e.missing / "b.zip"), "--state",
                                          str(e.root / "fresh-state"), "--trusted-key", str(e.pub)],
                               ("not found", "b.zip")),
    "install/untrusted": (lambda e: ["bundle", "install", str(e.bundle), "--state", str(e.root / "fresh-state"),
                                     "--trusted-key", str(e.other_pub)], ("untrusted key", "trusted keys")),
    "install/corrupt-state": (lambda e: ["bundle", "install", str(e.bundle), "--state", str(e.corrupt_state),
                                         "--device-id", "pos-1", "--trusted-key", str(e.pub)],
                              ("state.sqlite", "damaged", "nbo recover")),
    "rollback/nothing-before": (lambda e: ["bundle", "rollback", "--state", str(e.root / "fresh-state"),
                                           "--trusted-key", str(e.pub)], ("no previous bundle",)),
    "rollback/corrupt-state": (lambda e: ["bundle", "rollback", "--state", str(e.corrupt_state),
                                          "--trusted-key", str(e.pub)], ("damaged",)),
    # nbo publish
    "publish/missing-bundle": (lambda e: ["publish", str(e.missing / "b.zip"), "--hub", e.closed_hub,
                                          "--token", "t", "--quiet"], ("cannot read", "b.zip")),
    "publish/unreachable-hub": (lambda e: ["publish", str(e.bundle), "--hub", e.closed_hub, "--token", "t",
                                           "--timeout", "1", "--quiet"],
                                ("cannot publish", "UNAVAILABLE")),
}


@pytest.fixture(scope="module")
def fresh_state(env: Env) -> Path:
    """A real, empty device state directory (device pos-1, no bundle)."""
    with Client.open(env.root / "fresh-state", device_id="pos-1", trusted_keys=[env.pub]):
        pass
    return env.root / "fresh-state"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_failure_is_one_clear_line(name: str, env: Env, fresh_state: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    scenario, expected = SCENARIOS[name]
    code, out, err = run_cli(capsys, scenario(env))
    assert_one_clear_line(code, out, err, *expected)


def test_an_unreachable_hub_keeps_the_backlog(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    state = env.root / "backlog-state"
    with Client.open(state, device_id="pos-9", trusted_keys=[env.pub]) as client:
        client.record_purchase("C1", amount="12.50", idempotency_key="sale-1")
        assert client.pending_events() == 1
    code, out, err = run_cli(capsys, ["sync", "--state", str(state), "--hub", env.closed_hub, "--token", "t",
                                      "--timeout", "1"])
    assert_one_clear_line(code, out, err, "PushEvents", "UNAVAILABLE")
    code, out, err = run_cli(capsys, ["events", "--state", str(state), "--json"])
    assert code == 0 and err == ""
    assert '"pending": 1' in out.splitlines()[0]


@pytest.mark.parametrize("name", ["verify/untrusted", "decide/corrupt-state", "sync/unreachable-hub",
                                  "train/missing-data", "publish/unreachable-hub"])
def test_debug_shows_the_traceback(name: str, env: Env, fresh_state: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    scenario, _ = SCENARIOS[name]
    code, _, err = run_cli(capsys, ["--debug", *scenario(env)])
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


# -- bad flags: every command in the parser tree --------------------------------------------


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix
        return
    for action in subparsers:
        for name, child in action.choices.items():
            yield from command_paths(child, (*prefix, name))


ALL_COMMANDS = sorted(command_paths(build_parser()))


def test_the_command_tree_is_what_the_design_lists() -> None:
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {"demo", "demo-data", "keys generate", "train", "bundle build", "bundle verify", "bundle inspect",
            "decide", "serve", "sync", "publish", "events", "report"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p))
def test_an_unknown_flag_is_one_line_naming_the_command(path: tuple[str, ...],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, [*path, "--no-such-flag"])
    assert code == 2
    line = assert_one_clear_line(code, out, err, f"nbo {' '.join(path)}", "--help")
    # either the flag is named, or the required flags the command is missing are
    assert "--no-such-flag" in line or "required" in line


@pytest.mark.parametrize("argv, fragment", [
    (["decide", "--state", "s", "--customer", "C1", "--channel", "pos", "--no-such-flag"],
     "nbo decide: unrecognized arguments: --no-such-flag"),
    (["bundle", "inspect", "b.zip", "--no-such-flag"], "nbo bundle inspect: unrecognized arguments: --no-such-flag"),
    (["decide", "--state", "s", "--customer", "C1", "--channel", "pos", "--limit", "three"],
     "argument --limit: not an integer: 'three'"),
    (["demo-data", "--out", "d", "--customers", "-5"], "must be at least 10, got -5"),
    (["events", "--state", "s", "--status", "lost"], "argument --status: invalid choice"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
])
def test_bad_flag_values(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, argv)
    assert code == 2
    assert_one_clear_line(code, out, err, fragment)


# -- against a real gateway: an untrusted bundle offered by the hub or published to it -----


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    root = tmp_path_factory.mktemp("cli-errors-gw")
    kit = bundle_kit(root)
    with running_gateway(root / "gateway", config_data(trusted_key=kit.pub)) as gw:
        publish(gw, kit.bundle(1))
        yield gw, root


def test_sync_refuses_a_bundle_from_an_untrusted_key(env: Env, gateway: tuple[Gateway, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    gw, root = gateway
    state = root / "pos-1"
    # the terminal trusts another key than the one the hub's bundle is signed with
    with Client.open(state, device_id="pos-1", trusted_keys=[env.other_pub]):
        pass
    code, out, err = run_cli(capsys, ["sync", "--state", str(state), "--hub", f"127.0.0.1:{gw.port}", "--token",
                                      DEVICE_TOKEN, "--trusted-key", str(env.other_pub), "--timeout", "10"])
    assert_one_clear_line(code, out, err, "untrusted key")
    assert "bundle installed: none" in out


def test_publish_of_a_bundle_from_an_untrusted_key_is_refused(env: Env, gateway: tuple[Gateway, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    gw, root = gateway
    rogue_key, _ = make_keys(root / "rogue")
    rogue = make_bundle(root / "rogue-bundle", key=rogue_key, version=7)
    code, out, err = run_cli(capsys, ["publish", str(rogue), "--hub", f"127.0.0.1:{gw.port}", "--token",
                                      PUBLISHER_TOKEN, "--quiet", "--timeout", "30"])
    assert_one_clear_line(code, out, err, "refused", "untrusted key")


def test_publish_with_a_wrong_token(env: Env, gateway: tuple[Gateway, Path], capsys: pytest.CaptureFixture[str]) -> None:
    gw, _ = gateway
    code, out, err = run_cli(capsys, ["publish", str(env.bundle), "--hub", f"127.0.0.1:{gw.port}", "--token",
                                      "not-a-token", "--quiet"])
    assert_one_clear_line(code, out, err, "UNAUTHENTICATED")


# -- the real console experience: separate processes ---------------------------------------


def run_process(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NBO_CLI, *argv], capture_output=True, text=True, timeout=timeout)


def test_a_real_process_prints_one_line_and_exits_1(env: Env) -> None:
    result = run_process("bundle", "verify", str(env.bundle), "--trusted-key", str(env.other_pub))
    assert result.returncode == 1
    assert_one_clear_line(result.returncode, result.stdout, result.stderr, "untrusted key")
    debug = run_process("--debug", "bundle", "verify", str(env.bundle), "--trusted-key", str(env.other_pub))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_a_real_process_with_a_corrupt_state_directory(env: Env) -> None:
    result = run_process("events", "--state", str(env.corrupt_state))
    assert_one_clear_line(result.returncode, result.stdout, result.stderr, "damaged")


def test_serve_with_a_trusted_key_file_that_is_missing(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=tmp_path / "gone" / "signing.pub")), encoding="utf-8")
    result = run_process("serve", "--state", str(tmp_path / "gw"), "--listen", "127.0.0.1:0", "--config", str(config))
    assert_one_clear_line(result.returncode, result.stdout, result.stderr, "signing.pub")


def test_serve_on_a_port_in_use_is_one_line(env: Env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_process("serve", "--state", str(env.root / "gw-busy"), "--listen", f"127.0.0.1:{port}",
                             "--config", str(env.config))
    assert_one_clear_line(result.returncode, result.stdout, result.stderr, "cannot listen", str(port))


def test_sync_unreachable_says_what_to_do(env: Env, fresh_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario, _ = SCENARIOS["sync/unreachable-hub"]
    code, out, err = run_cli(capsys, scenario(env))
    line = assert_one_clear_line(code, out, err, "UNAVAILABLE")
    assert "queued" in line or "retry" in line or "--forever" in line
