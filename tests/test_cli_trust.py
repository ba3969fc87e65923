"""A command line people trust: looking never writes, failing leaves nothing, help and exit status as documented.

Runs the real ``nbo`` entry point (``nbo.cli:main`` in a fresh interpreter) against real
files, real SQLite state and a real gateway on 127.0.0.1:0. The file-system test points every
command of docs/cli.md at a wrong path, an empty directory, a read-only directory and a path
under a regular file, and compares a snapshot of the whole tree (paths, types, sizes, modes,
contents) before and after: nothing may be created, changed or removed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundle_fixtures import make_bundle, make_keys
from gateway_helpers import DEVICE_TOKEN, NBO_CLI, Gateway, config_data, policy_catalog, running_gateway
from nbo.cli import build_parser
from nbo.sdk import Client

REPO = Path(__file__).resolve().parent.parent


def nbo(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "NBO_TOKEN"}
    environ.update(env or {})
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([*NBO_CLI, *argv], capture_output=True, text=True, timeout=120, cwd=cwd, env=environ)


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """Every path under ``root``: (type, size, mode, sha256 of a file's bytes)."""
    out: dict[str, tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = "dir" if path.is_dir() else "file"
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
            out[str(path.relative_to(root))] = (kind, st.st_size if kind == "file" else 0, st.st_mode, digest)
    return out


@dataclass(frozen=True)
class Kit:
    root: Path
    key: Path
    pub: Path
    other_pub: Path
    bundle: Path
    device: Path
    """A device state directory with the bundle installed and one decision recorded."""


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("cli-trust")
    key, pub = make_keys(root / "keys")
    _, other_pub = make_keys(root / "other-keys")
    bundle = make_bundle(root / "bundles", key=key, catalog=policy_catalog(max_shows=1))
    device = root / "pos-1"
    with Client.open(device, device_id="pos-1", trusted_keys=[pub]) as client:
        client.install_bundle(bundle)
    return Kit(root, key, pub, other_pub, bundle, device)


# -- nothing written by looking or by failing ------------------------------------------------


CLOSED_HUB = "127.0.0.1:9"  # the discard port: nothing listens there on a test machine


def _matrix(kit: Kit, sandbox: Path) -> Iterator[tuple[str, list[str]]]:
    """(label, argv) for every command of docs/cli.md, aimed at each bad target."""
    blocker = sandbox / "a-file"
    targets = {"wrong path": sandbox / "no" / "such" / "dir", "empty dir": sandbox / "empty",
               "read-only dir": sandbox / "read-only", "under a file": blocker / "x"}
    pub, other = str(kit.pub), str(kit.other_pub)
    for label, t in targets.items():
        yield f"train/{label}", ["train", "--data", str(t), "--out", str(sandbox / "model-out"), "--quiet"]
        yield f"report/{label}", ["report", str(t)]
        yield f"bundle build/{label}", ["bundle", "build", "--catalog", str(t / "catalog.yaml"), "--name", "r",
                                        "--version", "1", "--key", str(kit.key), "--out", str(sandbox / "out.zip")]
        yield f"bundle verify/{label}", ["bundle", "verify", str(t / "b.zip"), "--trusted-key", pub]
        yield f"bundle inspect/{label}", ["bundle", "inspect", str(t)]
        yield f"bundle install missing zip/{label}", ["bundle", "install", str(t / "b.zip"), "--state",
                                                      str(sandbox / "new-device"), "--device-id", "d",
                                                      "--trusted-key", pub]
        yield f"bundle install wrong key/{label}", ["bundle", "install", str(kit.bundle), "--state", str(t),
                                                    "--device-id", "d", "--trusted-key", other]
        yield f"bundle rollback/{label}", ["bundle", "rollback", "--state", str(t), "--trusted-key", pub]
        yield f"publish/{label}", ["publish", str(t / "b.zip"), "--hub", CLOSED_HUB, "--quiet", "--timeout", "2"]
        yield f"serve/{label}", ["serve", "--state", str(t), "--listen", "127.0.0.1:0", "--config",
                                 str(t / "gateway.toml")]
        yield f"decide/{label}", ["decide", "--state", str(t), "--customer", "C1", "--channel", "pos",
                                  "--device-id", "d"]
        yield f"decide --dry-run/{label}", ["decide", "--state", str(t), "--customer", "C1", "--channel", "pos",
                                            "--dry-run"]
        yield f"sync/{label}", ["sync", "--state", str(t), "--hub", CLOSED_HUB, "--device-id", "d", "--timeout", "2"]
        yield f"events/{label}", ["events", "--state", str(t), "--device-id", "d"]
        yield f"recover/{label}", ["recover", "--state", str(t), "--hub", CLOSED_HUB, "--device-id", "d",
                                   "--timeout", "2"]
        yield f"export/{label}", ["export", "--hub", f"sqlite:///{t / 'hub.sqlite'}", "--out",
                                  str(sandbox / "export-out"), "--quiet"]
        yield f"experiments/{label}", ["experiments", "--hub", f"sqlite:///{t / 'hub.sqlite'}"]
        yield f"console/{label}", ["console", "--hub", f"sqlite:///{t / 'hub.sqlite'}", "--listen", "127.0.0.1:0",
                                   "--config", str(t / "gateway.toml")]
        yield f"evaluate/{label}", ["evaluate", "--logs", str(t), "--bundle", str(kit.bundle), "--quiet"]
    # commands whose argument is where they write: a place that cannot be written
    yield "keys generate/under a file", ["keys", "generate", "--out", str(blocker / "keys")]
    yield "demo-data/under a file", ["demo-data", "--out", str(blocker / "data"), "--customers", "10"]
    yield "demo/under a file", ["demo", "--dir", str(blocker / "demo")]


def test_no_command_writes_when_pointed_at_the_wrong_place(kit: Kit, tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    (sandbox / "empty").mkdir(parents=True)
    (sandbox / "read-only").mkdir()
    (sandbox / "a-file").write_text("not a directory\n")
    (sandbox / "read-only").chmod(0o555)
    try:
        before = snapshot(sandbox)
        documented = {m.group(1) for m in re.finditer(r"^## `nbo ([a-z -]+)`", (REPO / "docs" / "cli.md")
                                                      .read_text(encoding="utf-8"), flags=re.M)}
        covered: set[str] = set()
        for label, argv in _matrix(kit, sandbox):
            result = nbo(*argv, cwd=sandbox, env={"NBO_TOKEN": DEVICE_TOKEN})
            assert result.returncode == 1, f"{label}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
            one_error_line(result)
            after = snapshot(sandbox)
            assert after == before, f"{label}: `nbo {' '.join(argv)}` changed {set(after) ^ set(before) or 'files'}"
            covered.add(label.split("/")[0].split(" missing")[0].split(" wrong")[0].split(" --")[0])
        assert documented <= covered, f"documented commands not exercised: {documented - covered}"
    finally:
        (sandbox / "read-only").chmod(0o755)


def test_looking_at_a_device_changes_nothing_in_it(kit: Kit) -> None:
    before = snapshot(kit.device)
    for argv in (["events", "--state", str(kit.device), "--status", "all"],
                 ["decide", "--state", str(kit.device), "--customer", "C9", "--channel", "pos", "--dry-run",
                  "--explain"]):
        result = nbo(*argv)
        assert result.returncode == 0, result.stderr
        assert snapshot(kit.device) == before, f"`nbo {' '.join(argv)}` wrote into the device state directory"


def test_a_gateway_directory_is_not_taken_for_a_device(kit: Kit, tmp_path: Path) -> None:
    gateway_dir = tmp_path / "gateway"
    gateway_dir.mkdir()
    (gateway_dir / "hub.sqlite").write_bytes(b"")
    before = snapshot(tmp_path)
    for argv in (["events", "--state", str(gateway_dir)], ["events", "--state", str(gateway_dir), "--device-id", "x"]):
        result = nbo(*argv)
        assert result.returncode == 1
        line = one_error_line(result, "gateway's state directory, not a device's")
        assert "--device-id" not in line  # the old advice that then wrote a device database into it
    assert snapshot(tmp_path) == before


# -- decide --dry-run --------------------------------------------------------------------------


def test_dry_run_records_nothing_and_spends_no_contact_budget(kit: Kit, tmp_path: Path) -> None:
    device = tmp_path / "pos-dry"
    with Client.open(device, device_id="pos-dry", trusted_keys=[kit.pub]) as client:
        client.install_bundle(kit.bundle)
        tries = [client.decide("C1", channel="pos", dry_run=True, limit=5) for _ in range(3)]
        assert client.pending_events() == 0
        assert all([o.offer_id for o in d.offers] == [o.offer_id for o in tries[0].offers] for d in tries)
        real = client.decide("C1", channel="pos", limit=5)  # the policy allows one show a week
        assert [o.offer_id for o in real.offers] == [o.offer_id for o in tries[0].offers]
        assert client.pending_events() == 1
        again = client.decide("C1", channel="pos", limit=5, explain=True, dry_run=True)
        assert {e.rule_id for e in again.excluded} >= {"max_shows_week"}  # the real show counted
    result = nbo("decide", "--state", str(device), "--customer", "C2", "--channel", "pos", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert '"customer_id": "C2"' in result.stdout
    with Client.open(device, device_id="pos-dry", trusted_keys=[kit.pub], read_only=True) as client:
        assert client.pending_events() == 1


# -- help, placeholders, examples --------------------------------------------------------------


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


LEAVES = list(_leaves(build_parser()))
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:[=.:][A-Za-z0-9_]+)*|[a-z]+(?:\|[a-z]+)+)$")


@pytest.mark.parametrize("path, parser", LEAVES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_help_has_examples_one_placeholder_style_and_only_real_references(path: tuple[str, ...],
                                                                          parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "examples:\n" in text, f"nbo {' '.join(path)} --help shows no example"
    examples = text.split("examples:\n", 1)[1].splitlines()
    assert any(line.strip().startswith(f"nbo {' '.join(path)}") or f" nbo {' '.join(path)}" in line
               for line in examples), examples
    for action in parser._actions:
        if action.option_strings and action.nargs == 0:
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        metavar = action.metavar or (action.dest if not action.option_strings else None)
        assert metavar is not None and PLACEHOLDER.match(str(metavar)), (
            f"nbo {' '.join(path)} {'/'.join(action.option_strings) or action.dest}: placeholder {metavar!r}")
    assert "DESIGN" not in text and "§" not in text
    for doc in re.findall(r"docs/[\w.-]+\.md", text):
        assert (REPO / doc).is_file(), f"nbo {' '.join(path)} --help refers to {doc}, which does not exist"


def test_bare_nbo_prints_help_and_version_prints_the_version() -> None:
    bare = nbo()
    assert bare.returncode == 0 and bare.stderr == ""
    assert "usage: nbo" in bare.stdout and "decide" in bare.stdout
    group = nbo("bundle")
    assert group.returncode == 0 and "install" in group.stdout
    from nbo.sdk import __version__

    version = nbo("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"nbo {__version__}"


@pytest.mark.parametrize("argv, fragment", [
    (["decide", "--state", "s", "--customer", "C1", "--channel", "pos", "--limit", "0"],
     "argument --limit: must be at least 1, got 0"),
    (["decide", "--state", "s", "--customer", "C1", "--channel", "pos", "--profile", "{age: 3}"],
     "argument --profile: not valid JSON"),
    (["decide", "--state", "s", "--customer", "C1", "--channel", "pos", "--profile", "[1]"],
     "argument --profile: must be a JSON object"),
    (["bundle", "build", "--catalog", "c.yaml", "--name", "r", "--version", "1", "--key", "k", "--out", "o.zip",
      "--expires-at", "tomorrow"], "argument --expires-at: not an ISO-8601 time"),
    (["demo-data", "--out", "d", "--customers", "5"], "argument --customers: must be at least 10, got 5"),
    (["sync", "--state", "s", "--hub", CLOSED_HUB], "no token: pass --token-file FILE or set NBO_TOKEN"),
])
def test_usage_errors_exit_2(argv: list[str], fragment: str, tmp_path: Path) -> None:
    result = nbo(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    one_error_line(result, fragment, "--help")
    assert list(tmp_path.iterdir()) == []


# -- tokens off the command line; sync's summary line ------------------------------------------


@pytest.fixture(scope="module")
def gateway(kit: Kit) -> Iterator[Gateway]:
    with running_gateway(kit.root / "gateway", config_data(trusted_key=kit.pub)) as gw:
        yield gw


def test_sync_takes_its_token_from_a_file_or_the_environment(kit: Kit, gateway: Gateway, tmp_path: Path) -> None:
    device = tmp_path / "pos-1"
    with Client.open(device, device_id="pos-1", trusted_keys=[kit.pub]) as client:
        client.install_bundle(kit.bundle)
        client.decide("C1", channel="pos")
    token_file = tmp_path / "device.token"
    token_file.write_text(DEVICE_TOKEN + "\n")
    hub = f"127.0.0.1:{gateway.port}"
    first = nbo("sync", "--state", str(device), "--hub", hub, "--token-file", str(token_file))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("pushed 1 event; hub acknowledged through seq 1;"), first.stdout
    again = nbo("sync", "--state", str(device), "--hub", hub, env={"NBO_TOKEN": DEVICE_TOKEN})
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to push, hub holds through seq 1;"), again.stdout
    wrong = nbo("sync", "--state", str(device), "--hub", hub, env={"NBO_TOKEN": "not-the-token"})
    assert wrong.returncode == 1
    one_error_line(wrong, "UNAUTHENTICATED")
    missing = nbo("sync", "--state", str(device), "--hub", hub, "--token-file", str(tmp_path / "nope.token"))
    assert missing.returncode == 1
    one_error_line(missing, "--token-file", "nope.token")


def test_an_unreachable_hub_advises_forever_only_when_not_running_forever(kit: Kit) -> None:
    result = nbo("sync", "--state", str(kit.device), "--hub", CLOSED_HUB, "--timeout", "1",
                 env={"NBO_TOKEN": DEVICE_TOKEN})
    assert result.returncode == 1
    one_error_line(result, "UNAVAILABLE", "`nbo sync --forever` keeps retrying")
    from nbo.sdk import core as _sync

    with Client.open(kit.device, device_id="pos-1", trusted_keys=[kit.pub]) as client:
        seen: list[str] = []
        loop = _sync.SyncLoop(client, CLOSED_HUB, DEVICE_TOKEN, options={"timeout": 1.0},
                              on_error=lambda exc, delay: seen.append(str(exc)), sleep=lambda s: None)
        loop.run_forever(max_attempts=1)
    assert seen and "--forever" not in seen[0]


def test_a_library_error_is_worded_for_the_command_line(kit: Kit, tmp_path: Path) -> None:
    device = tmp_path / "pos-7"
    pub = str(kit.pub)
    assert nbo("bundle", "install", str(kit.bundle), "--state", str(device), "--device-id", "pos-7",
               "--trusted-key", pub).returncode == 0
    same = nbo("bundle", "install", str(kit.bundle), "--state", str(device), "--trusted-key", pub)
    assert same.returncode == 0 and "already the active bundle" in same.stdout, same.stderr
    rebuilt = make_bundle(tmp_path / "rebuilt", key=kit.key, catalog=policy_catalog(max_shows=1),
                          created_at="2026-03-01T00:00:00Z")  # the same version, built again
    again = nbo("bundle", "install", str(rebuilt), "--state", str(device), "--trusted-key", pub)
    line = one_error_line(again, "--force")
    assert "force=True" not in line
    nokey = nbo("bundle", "verify", str(kit.bundle), "--trusted-key", str(tmp_path / "nope.pub"))
    line = one_error_line(nokey, "--trusted-key", "nope.pub")
    assert "trusted_keys" not in line
