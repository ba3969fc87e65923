"""What used to end in a traceback or an "unexpected …" line now says, in one line, where to look.

Each case is one a user met: a short row in ``customers.csv``, a bad amount in
``transactions.csv``, ``nbo train --out`` and ``nbo serve --state`` pointed where nothing can
be written, ``examples/mobile_backend_client.py`` against a gateway that has no bundle yet,
and the README's first POS snippet run a second time. The commands run as real processes
(the ``nbo`` entry point, the example script, the README's own snippet) on real files and a
real gateway on 127.0.0.1:0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gateway_helpers import APP_TOKEN, NBO_CLI, config_data, running_gateway, toml_text
from nbo.model_export import generate_demo_data

REPO = Path(__file__).resolve().parent.parent


def run(argv: list[str], cwd: Path | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of a failed run, holding every fragment; no traceback, no 'unexpected'."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and "unexpected" not in line and "Traceback" not in result.stderr, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_data(tmp_path_factory.mktemp("field-errors") / "data", customers=40, seed=3).directory


def edited_copy(data: Path, target: Path, file: str, line: int, change: Callable[[list[str]], list[str]]) -> Path:
    """A copy of ``data`` whose ``file`` has the fields of line ``line`` (1 = the header) changed."""
    shutil.copytree(data, target)
    lines = (target / file).read_text(encoding="utf-8").splitlines()
    fields = lines[line - 1].split(",")
    changed = change(list(fields))
    assert changed != fields
    lines[line - 1] = ",".join(changed)
    (target / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def test_a_short_row_in_customers_csv_names_file_row_and_field(data: Path, tmp_path: Path) -> None:
    bad = edited_copy(data, tmp_path / "data", "customers.csv", 4, lambda fields: fields[:-1])
    header = (bad / "customers.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    result = run([*NBO_CLI, "train", "--data", str(bad), "--out", str(tmp_path / "model"), "--quiet"])
    one_line(result, "customers.csv row 3 (line 4)", f"no value for {header[-1]!r}")
    assert not (tmp_path / "model").exists()  # a failed run leaves nothing it created


def test_a_long_row_in_customers_csv_says_how_many_fields(data: Path, tmp_path: Path) -> None:
    bad = edited_copy(data, tmp_path / "data", "customers.csv", 2, lambda fields: [*fields, "surplus"])
    result = run([*NBO_CLI, "train", "--data", str(bad), "--out", str(tmp_path / "model"), "--quiet"])
    one_line(result, "customers.csv row 1 (line 2)", "fields, the header has")


@pytest.mark.parametrize(("column", "value", "message"), [
    ("amount", "abc", "amount must be a number, got 'abc'"),
    ("timestamp", "yesterday", "timestamp is not an ISO date or datetime: 'yesterday'"),
    ("quantity", "two", "quantity must be an integer, got 'two'"),
])
def test_a_bad_transaction_names_file_row_and_field(data: Path, tmp_path: Path, column: str, value: str,
                                                   message: str) -> None:
    header = (data / "transactions.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    index = header.index(column)
    bad = edited_copy(data, tmp_path / "data", "transactions.csv", 6,
                      lambda fields: [value if i == index else f for i, f in enumerate(fields)])
    result = run([*NBO_CLI, "train", "--data", str(bad), "--out", str(tmp_path / "model"), "--quiet"])
    one_line(result, "transactions.csv row 5 (line 6)", message)


def test_train_refuses_an_unwritable_out_before_training(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    started = time.monotonic()
    # no --quiet: had training started, its progress lines would be on stderr too
    result = run([*NBO_CLI, "train", "--data", str(data), "--out", str(blocker / "model")])
    one_line(result, f"--out {blocker / 'model'}", "cannot write the model directory here", "Not a directory")
    assert time.monotonic() - started < 30
    assert blocker.read_text(encoding="utf-8") == "not a directory\n"


def test_serve_refuses_an_unwritable_state_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=tmp_path / "unused.pub")), encoding="utf-8")
    (tmp_path / "unused.pub").write_text("", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    for state in (blocker / "gw", blocker):
        result = run([*NBO_CLI, "serve", "--state", str(state), "--listen", "127.0.0.1:0", "--config", str(config)],
                     timeout=60)
        one_line(result, f"--state {state}", "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_mobile_client_against_a_gateway_without_a_bundle(tmp_path: Path) -> None:
    key = tmp_path / "signing.pub"
    subprocess.run([*NBO_CLI, "keys", "generate", "--out", str(tmp_path)], check=True, capture_output=True)
    with running_gateway(tmp_path / "gw", config_data(trusted_key=key)) as gateway:
        target = f"127.0.0.1:{gateway.port}"
        result = run([sys.executable, str(REPO / "examples" / "mobile_backend_client.py"), "--target", target,
                      "--token", APP_TOKEN], timeout=120)
        one_line(result, f"Decide on {target}", "FAILED_PRECONDITION", "no bundle", "nbo publish")
        # the token from the environment, as the docs show it (never on the command line)
        wrong = run([sys.executable, str(REPO / "examples" / "mobile_backend_client.py"), "--target", target],
                    timeout=120, env={"NBO_TOKEN": "not-a-token"})
        one_line(wrong, "UNAUTHENTICATED")


def readme_first_pos_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### POS or kiosk developer", 1)[1]
    return section.split("```python runnable\n", 1)[1].split("```", 1)[0]


def test_the_readme_first_pos_snippet_runs_twice(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from _prepare import prepare
    finally:
        sys.path.remove(str(REPO / "examples"))
    workdir = prepare(tmp_path / "quickstart", customers=60).directory
    snippet = tmp_path / "snippet.py"
    snippet.write_text(readme_first_pos_snippet(), encoding="utf-8")
    assert "install_bundle" in snippet.read_text(encoding="utf-8")
    first = run([sys.executable, str(snippet)], cwd=workdir)
    second = run([sys.executable, str(snippet)], cwd=workdir)
    for result in (first, second):
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert re.search(r"= \d+\.\d", result.stdout), result.stdout  # it printed ranked offers


def test_a_profile_value_of_the_wrong_type_for_a_model_input_is_an_error(tmp_path: Path) -> None:
    from bundle_fixtures import make_bundle, make_keys, make_model
    from nbo.sdk import Client, InputError

    key, pub = make_keys(tmp_path / "keys")
    model = make_model(tmp_path / "m.onnx", inputs=(("customer__age", "float"), ("context__basket", "float"),
                                                    ("offer__category", "string")))
    bundle = make_bundle(tmp_path / "bundles", key=key, models={"propensity": model})
    state = tmp_path / "pos-1"
    with Client.open(state, device_id="pos-1", trusted_keys=[pub]) as client:
        client.install_bundle(bundle)
        with pytest.raises(InputError) as info:
            client.decide("C1", channel="pos", profile={"age": "old"}, dry_run=True)
        assert info.value.field == "profile.age"
        with pytest.raises(InputError, match=r"context.basket must be a number \(or null\) for the model input "
                                             r"context__basket, not 'many'"):
            client.decide("C1", channel="pos", context={"basket": "many"}, dry_run=True)
        # null (unknown) and numbers are fine
        assert client.decide("C1", channel="pos", profile={"age": None}, context={"basket": 3}, dry_run=True).offers
    result = run([*NBO_CLI, "decide", "--state", str(state), "--customer", "C1", "--channel", "pos", "--dry-run",
                  "--profile", '{"age": "old"}'])
    one_line(result, "profile.age must be a number (or null) for the model input customer__age, not 'old'")


def test_a_gateway_without_trusted_keys_warns_at_start(tmp_path: Path) -> None:
    from gateway_helpers import free_port, serve_log, start_serve_process, wait_serving

    data = config_data(trusted_key=tmp_path / "unused.pub")
    del data["trust"]
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(data), encoding="utf-8")
    port = free_port()
    proc = start_serve_process(tmp_path / "gw", config, port=port)
    try:
        wait_serving(port, proc=proc)
        log = serve_log(tmp_path / "gw").read_text(encoding="utf-8")
        assert "WARNING" in log and "no [trust] keys: every bundle published to this gateway will be refused" in log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_publishing_a_file_that_is_not_a_zip_names_the_users_file(tmp_path: Path) -> None:
    from gateway_helpers import PUBLISHER_TOKEN

    subprocess.run([*NBO_CLI, "keys", "generate", "--out", str(tmp_path)], check=True, capture_output=True)
    mine = tmp_path / "my-bundle.zip"
    mine.write_bytes(b"this is not a zip file\n" * 10)
    with running_gateway(tmp_path / "gw", config_data(trusted_key=tmp_path / "signing.pub")) as gateway:
        result = subprocess.run([*NBO_CLI, "publish", str(mine), "--hub", f"127.0.0.1:{gateway.port}", "--quiet"],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "NBO_TOKEN": PUBLISHER_TOKEN})
    line = one_line(result, "my-bundle.zip is not a readable zip")
    assert ".upload-" not in line
