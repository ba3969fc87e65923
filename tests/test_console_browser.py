"""The console as a person uses it: a real ``nbo console`` process over a seeded SQLite hub,
driven by Debian's headless Chromium through Playwright (``executable_path``; no browser
download). Logs in with an analyst token, opens every page, checks the numbers shown
against counts computed straight from the hub's log, checks refusals, and writes a
screenshot of each page: to a temporary directory, or to docs/img/ for docs/console.md with
``NBO_REGENERATE_DOCS=1`` (so that a test run leaves the checkout as it found it).

Without Chromium the tests skip — unless ``NBO_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from console_helpers import (
    BUNDLE,
    DAY,
    START,
    catalog_bundle_bytes,
    device_ids,
    expected_offer_counts,
    field_log,
)
from nbo.console import Period
from nbo.gateway import HubStore
from nbo.gateway._hub import IncomingEvent
from nbo.sdk import ManualClock
from nbo.sdk.core import update_measures

REPO = Path(__file__).resolve().parent.parent
IMG = REPO / "docs" / "img"
SHOTS = IMG if os.environ.get("NBO_REGENERATE_DOCS") == "1" else Path(tempfile.gettempdir()) / f"nbo-console-{os.getpid()}"
CHROMIUM = os.environ.get("NBO_CHROMIUM", "/usr/bin/chromium")
TOKEN = "analyst-browser-token-7f3a"
DEVICE_TOKEN = "device-token-for-pos-001"
NOW = START + 31 * DAY


def browser_or_skip() -> str:
    required = os.environ.get("NBO_REQUIRE_BROWSER") == "1"
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed"
    if problem is not None:
        if required:
            pytest.fail(f"NBO_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return CHROMIUM


@dataclass
class Served:
    url: str
    events: list[dict[str, Any]]
    heads: dict[str, int]
    acked: dict[str, int]


def _start_console(hub_path: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())", "console", "--hub", f"sqlite:{hub_path}", "--listen", "127.0.0.1:0",
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("console listening on "):
            return proc, line.split()[-1]
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"nbo console did not start: {err}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("hub")
    hub = HubStore.open(None, state_dir=state, clock=ManualClock(NOW))
    heads: dict[str, int] = {}
    try:
        for n, device in enumerate([*device_ids(8), "app"]):
            rows = field_log(device, events=400, customers=150, days=30, seed=11,
                             bundle_version=BUNDLE[1] - (1 if device == "pos-005" else 0))
            heads[device] = len(rows) + (0 if n % 3 else 4 + n)
            for start in range(0, len(rows), 400):
                hub.ingest(device, [IncomingEvent(seq=s, event_id=e, type=t, created_at=c, payload=p)
                                    for s, e, t, c, p in rows[start:start + 400]],
                           outbox_head=heads[device],
                           active_bundle=(BUNDLE[0], BUNDLE[1] - (1 if device in ("pos-005", "pos-006") else 0)))
        heads["pos-003"] = 403  # one more event pushed (the hub rejects it), two more held back
        hub.ingest("pos-003", [IncomingEvent(seq=401, event_id="x1", type="decision", created_at=START,
                                             payload='{"offers": "not a list"}')], outbox_head=heads["pos-003"])
        hub.register_bundle(catalog_bundle_bytes(), name=BUNDLE[0], version=BUNDLE[1])
        events = hub.events()
        acked = {d: hub.acked_through(d) for d in heads}
    finally:
        hub.close()
    config = state / "gateway.toml"
    config.write_text(
        "[[tokens]]\n"
        f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\nrole = "analyst"\n\n'
        "[[tokens]]\n"
        f'token = "{DEVICE_TOKEN}"\nrole = "device"\ndevice_id = "pos-001"\n', encoding="utf-8")
    proc, url = _start_console(state / "hub.sqlite", config)
    try:
        yield Served(url, events, heads, acked)
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)  # reads and closes the pipes
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.goto(served.url + "/field")
    assert pg.url.endswith("/login")  # no session: the login page
    pg.fill("#token", TOKEN)
    pg.click("#login")
    pg.wait_for_url("**/field")
    yield pg
    context.close()


def table(page: Any, table_id: str) -> list[dict[str, str]]:
    headers = page.eval_on_selector_all(f"#{table_id} thead th", "els => els.map(e => e.textContent.trim())")
    rows = page.eval_on_selector_all(
        f"#{table_id} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    return [dict(zip(headers, r, strict=True)) for r in rows if len(r) == len(headers)]


def number(text: str) -> float:
    return float(text.replace(",", ""))


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_a_wrong_token_and_a_device_token_are_refused(browser: Any, served: Served) -> None:
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    for token in ("not-the-token", DEVICE_TOKEN):
        pg.goto(served.url + "/login")
        pg.fill("#token", token)
        with pg.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as answer:
            pg.click("#login")
        assert answer.value.status == 401
        assert "not accepted" in pg.text_content("#login-error")
    assert context.cookies() == []
    for path in ("/field", "/offers", "/customers", "/models"):
        pg.goto(served.url + path)
        assert pg.url.endswith("/login"), path
    for path in ("/field.csv", "/offers.csv?table=rules", "/customers.csv", "/models.csv"):
        assert context.request.get(served.url + path).status == 401, path
    context.close()


def test_the_session_cookie_is_http_only_and_same_site(page: Any) -> None:
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "nbo_console" and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it


def test_field_page_shows_each_terminal_as_the_hub_holds_it(page: Any, served: Served) -> None:
    page.goto(served.url + "/field")
    rows = {r["device"]: r for r in table(page, "terminals")}
    assert set(rows) == set(served.heads)
    rejected = Counter(e["device_id"] for e in served.events if e["status"] == "rejected")
    for device, head in served.heads.items():
        assert number(rows[device]["acked_through"]) == served.acked[device]
        assert number(rows[device]["events_pending"]) == head - served.acked[device], device
        assert number(rows[device]["dead_lettered"]) == rejected.get(device, 0), device
    assert rows["pos-005"]["versions_behind"] == "1" and rows["pos-001"]["versions_behind"] == "0"
    assert page.text_content("#kpi-behind") == "2"
    first_two = [r["device"] for r in table(page, "terminals")[:2]]
    assert sorted(first_two) == ["pos-005", "pos-006"]  # behind first
    shot(page, "field")
    page.goto(served.url + "/field?behind=1")
    assert sorted(r["device"] for r in table(page, "terminals")) == ["pos-005", "pos-006"]


def test_offers_page_answers_which_offer_is_accepted_most_on_the_app(page: Any, served: Served) -> None:
    page.goto(served.url + "/offers?from=2026-09-08&to=2026-09-14&channel=app")
    week = Period(date(2026, 9, 8), date(2026, 9, 14))
    first, last = week.first_day, week.last_day
    expected = expected_offer_counts(served.events, first_day=first, last_day=last, channel="app")
    rows = table(page, "totals")
    assert {r["offer"]: (number(r["shown"]), number(r["accepted"])) for r in rows} == expected
    top = max(a for _, a in expected.values())
    assert number(rows[0]["accepted"]) == top  # the first row is the answer
    # the funnel and the rule removals over the whole month, all channels
    page.goto(served.url + "/offers?from=2026-09-01&to=2026-09-30")
    removed: Counter[str] = Counter()
    candidates = 0
    for e in served.events:
        if e["type"] == "decision" and e["status"] == "ok":
            funnel = json.loads(e["payload"])["funnel"]
            removed.update(funnel["removed"])
            candidates += funnel["candidates"]
    rules = table(page, "rules")
    assert {r["rule_or_policy"]: number(r["offers_removed"]) for r in rules} == dict(removed)
    assert rules[0]["rule_or_policy"] == removed.most_common(1)[0][0]  # the rule that removes the most
    funnel_rows = {r["stage"]: number(r["offers"]) for r in table(page, "funnel")}
    assert funnel_rows["candidates"] == candidates
    shot(page, "offers")
    csv = page.context.request.get(served.url + "/offers.csv?table=rules&from=2026-09-01&to=2026-09-30")
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text().strip().splitlines()
    assert lines[0] == "rule_or_policy,offers_removed,share_of_removals"
    assert {line.split(",")[0]: int(line.split(",")[1]) for line in lines[1:]} == dict(removed)


def test_customers_page_counts_active_customers_that_became_declining(page: Any, served: Served) -> None:
    page.goto(served.url + "/customers?from=2026-09-16&to=2026-09-30")
    start = START + 15 * DAY
    end = START + 30 * DAY
    bought: dict[str, list[dict[str, Any]]] = {}
    for e in served.events:
        if e["type"] == "purchase" and e["status"] == "ok":
            p = json.loads(e["payload"])
            bought.setdefault(p["customer_id"], []).append({"timestamp": p["timestamp"], "amount": p["amount"]})
    flows: Counter[tuple[str, str]] = Counter()
    for purchases in bought.values():
        purchases.sort(key=lambda p: p["timestamp"])
        s0 = update_measures(None, [p for p in purchases if p["timestamp"] < start], as_of=start)["lifecycle_stage"]
        s1 = update_measures(None, [p for p in purchases if p["timestamp"] < end], as_of=end)["lifecycle_stage"]
        flows[(s0, s1)] += 1
    matrix = {r["from \\ to"]: r for r in table(page, "matrix")}
    for (s0, s1), n in flows.items():
        assert number(matrix[s0][s1]) == n, (s0, s1)
    assert sum(number(r["total"]) for r in matrix.values()) == len(bought)
    pyramid = table(page, "pyramid")
    assert [r["tier"] for r in pyramid] == ["top 20 %", "middle 50 %", "bottom 30 %"]
    assert number(pyramid[0]["customers"]) == round(len(bought) * 0.2)
    assert page.locator("svg.chart").count() >= 4
    shot(page, "customers")


def test_models_page_and_the_honest_experiments_state(page: Any, served: Served) -> None:
    page.goto(served.url + "/models")
    rows = table(page, "models")
    shown = sum(len(json.loads(e["payload"])["offers"]) for e in served.events
                if e["type"] == "decision" and e["status"] == "ok")
    assert sum(number(r["shown"]) for r in rows) == shown
    assert {r["model"] for r in rows} == {"m_cross", "m_keep", "(bundle not on this hub)"}  # v2 was never published
    assert "No experiments in this hub" in page.text_content("#experiments")
    shot(page, "models")


def test_bad_parameters_are_a_400_naming_the_parameter(page: Any, served: Served) -> None:
    for query, words in (("from=2026-13-01", "from must be a date"), ("bucket=month", "bucket must be one of"),
                         ("from=2026-09-10&to=2026-09-01", "from must not be after to"),
                         ("colour=red", "unknown parameter 'colour'"),
                         ("channel=%3Cscript%3E", "channel must be 1-64 letters")):
        answer = page.goto(served.url + "/offers?" + query)
        assert answer.status == 400, query
        assert words in page.text_content("#error"), query
    assert page.context.request.get(served.url + "/field.csv?table=nope").status == 400


def test_logging_out_ends_the_session(browser: Any, served: Served) -> None:
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(served.url + "/login")
    pg.fill("#token", TOKEN)
    pg.click("#login")
    pg.wait_for_url("**/field")
    cookie = context.cookies()[0]["value"]
    pg.click("text=Log out")
    pg.wait_for_url("**/login")
    # the old cookie, replayed, opens nothing
    replay = browser.new_context()
    replay.add_cookies([{"name": "nbo_console", "value": cookie, "url": served.url}])
    assert replay.request.get(served.url + "/field.csv").status == 401
    replay.close()
    context.close()

