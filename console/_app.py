"""The console: rollups kept current, and a Starlette application serving the pages.

Routes (every one but ``/login`` needs a session cookie; without it a page redirects to
``/login`` and a CSV answers 401):

=====================  ============================================================
``/field``             terminals: last sync, events pending, dead-lettered, bundle, behind
``/offers``            offers by offer/category/channel over time, funnel, concentration
``/customers``         lifecycle flows, retention/churn, CLV and value pyramid, loyalty
``/models``            calibration and AUC per bundle version and model; experiments
``/<page>.csv``        the page's tables: ``?table=NAME`` (and the page's own filters)
=====================  ============================================================

Every query parameter is checked; an unknown one or a bad value is a 400 page naming it.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from nbo.sdk import ConfigError
from nbo.sdk.core import ParamError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from . import _charts
from ._hubread import HubReader, open_hub_reader
from ._queries import (
    FLOW_STAGES,
    CustomerReport,
    FieldReport,
    ModelReport,
    OfferReport,
    Period,
    Table,
    bundle_models,
    customer_report,
    field_report,
    model_report,
    offer_report,
)
from ._rollup import RollupStore
from ._session import COOKIE, Sessions

__all__ = ["Console", "ParamError"]

log = logging.getLogger("nbo.console")

_TEMPLATES = Path(__file__).parent / "templates"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MAX_DAYS = 3660
_REFRESH_LIMIT = 200_000  # events folded in per page request at most: a page stays fast after a burst


class Params:
    """The request's query parameters, each read once and checked; leftovers are errors."""

    def __init__(self, query: str, allowed: set[str]) -> None:
        try:
            parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
        except ValueError as exc:
            raise ParamError(f"the query string cannot be read: {exc}") from None
        for key, values in parsed.items():
            if key not in allowed:
                raise ParamError(f"unknown parameter {key[:40]!r} (this page takes: {', '.join(sorted(allowed))})")
            if len(values) > 1:
                raise ParamError(f"parameter {key!r} is given more than once")
        self._values = {k: v[0] for k, v in parsed.items()}

    def get(self, key: str) -> str | None:
        value = self._values.get(key)
        return value if value not in (None, "") else None

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if value not in options:
            raise ParamError(f"{key} must be one of {', '.join(options)}, not {value[:40]!r}")
        return value

    def day(self, key: str) -> date | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return date.fromisoformat(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else _bad_date(key, value)
        except ValueError:
            return _bad_date(key, value)

    def name(self, key: str) -> str | None:
        value = self.get(key)
        if value is not None and not _NAME.match(value):
            raise ParamError(f"{key} must be 1-64 letters, digits, '.', '_', ':' or '-'")
        return value


def _bad_date(key: str, value: str) -> date:
    raise ParamError(f"{key} must be a date YYYY-MM-DD, not {value[:40]!r}")


class Console:
    """The central team's console over one hub: rollups, figures, and the web application.

    ``hub_url`` is read through a read-only connection; ``analyst_digests`` are the SHA-256
    digests of the analyst tokens (from the gateway configuration). ``cache`` is the rollup
    file (a temporary one, removed on :meth:`close`, when ``None``). Call :meth:`refresh`
    once before serving (it folds in the whole log; progress through ``progress``), then
    :meth:`start_refreshing`: a background thread folds in what arrives every
    ``refresh_seconds``, so a page only ever reads the rollups.
    """

    def __init__(self, hub_url: str, *, analyst_digests: Any, cache: str | Path | None = None,
                 refresh_seconds: float = 2.0, clock: Callable[[], float] = time.time,
                 schema: str | None = None) -> None:
        self.hub: HubReader = open_hub_reader(hub_url, schema=schema)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nbo-console-")
            cache = Path(self._tmp.name) / "rollups.sqlite"
        try:
            self.rollups = RollupStore(cache)
        except BaseException:
            self.hub.close()
            raise
        try:
            self.rollups.bind(hub_url if schema is None else f"{hub_url}#{schema}")
            self.rollups.check_marks(self.hub)
        except BaseException:
            self.close()
            raise
        self.clock = clock
        self.sessions = Sessions(analyst_digests, clock=clock)
        self._refresh_seconds = refresh_seconds
        self._refresh_lock = threading.Lock()
        self._refreshed_at = 0.0
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._version = -1
        self._models: dict[tuple[str, int], dict[str, str]] = {}
        self._models_seen: set[tuple[str, int]] = set()
        self._env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))
        self._env.filters["num"] = _num
        self.app = self._build_app()

    # -- data --------------------------------------------------------------------------------

    def refresh(self, *, limit: int | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Fold the hub's new events into the rollups; returns how many were read."""
        with self._refresh_lock:
            done = self.rollups.refresh(self.hub, limit=limit, progress=progress)
            self._refreshed_at = self.clock()
        return done

    def start_refreshing(self) -> None:
        """Fold new hub events in every ``refresh_seconds`` on a background thread until :meth:`close`."""
        if self._refresher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self._refresh_seconds):
                try:
                    self.refresh(limit=_REFRESH_LIMIT)
                except Exception as exc:  # the hub is down or locked: keep serving what is there
                    log.warning("event=console_refresh_failed error=%s", str(exc).splitlines()[0][:200])

        self._refresher = threading.Thread(target=loop, name="nbo-console-refresh", daemon=True)
        self._refresher.start()

    def _fresh(self) -> None:
        if self._refresher is not None:
            return  # the background thread keeps the rollups current
        if self.clock() - self._refreshed_at < self._refresh_seconds or self._refresh_lock.locked():
            return
        self.refresh(limit=_REFRESH_LIMIT)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """A report for ``key``, computed again only when the rollups have changed since."""
        version = self.rollups.version
        if version != self._version:
            self._cache.clear()
            self._version = version
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = build()
        return self._cache[key]

    def field(self, *, behind_only: bool = False) -> FieldReport:
        return field_report(self.hub, self.rollups, now=self.clock(), behind_only=behind_only)

    def offers(self, period: Period, *, channel: str | None = None, by: str = "offer", bucket: str = "day"
               ) -> OfferReport:
        return self._cached(("offers", period, channel, by, bucket),
                            lambda: offer_report(self.rollups, period, channel=channel, by=by, bucket=bucket))

    def customers(self, period: Period) -> CustomerReport:
        return self._cached(("customers", period), lambda: customer_report(self.rollups, period))

    def models(self) -> ModelReport:
        published = {(str(n), int(v)) for n, v in self.hub.query("SELECT name, version FROM hub_bundles")}
        if published - self._models_seen:
            self._models = bundle_models(self.hub)
            self._models_seen = published
        return model_report(self.hub, self.rollups, catalog_models=self._models)

    def last_day(self) -> date:
        """The last UTC day with decisions or purchases (today when there are none)."""
        rows = self.rollups.query("SELECT MAX(d) FROM (SELECT MAX(day) AS d FROM funnel_days "
                                  "UNION ALL SELECT MAX(day) FROM customer_days)")
        today = datetime.fromtimestamp(self.clock(), tz=UTC).date()
        if rows and rows[0][0] is not None:
            return min(today, date(1970, 1, 1) + timedelta(days=int(rows[0][0])))
        return today

    def close(self) -> None:
        refresher = getattr(self, "_refresher", None)  # None too when __init__ failed early
        if refresher is not None:
            self._stop.set()
            refresher.join(timeout=30)
        self.rollups.close()
        self.hub.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- web ---------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        pages: list[tuple[str, Callable[[Params], tuple[dict[str, Any], Mapping[str, Table]]], set[str]]] = [
            ("field", self._field_page, {"behind"}),
            ("offers", self._offers_page, {"from", "to", "channel", "by", "bucket"}),
            ("customers", self._customers_page, {"from", "to"}),
            ("models", self._models_page, set()),
        ]
        routes = [
            Route("/", self._root),
            Route("/login", self._login, methods=["GET", "POST"]),
            Route("/logout", self._logout, methods=["POST"]),
        ]
        for name, build, allowed in pages:
            routes.append(Route(f"/{name}", self._page(name, build, allowed)))
            routes.append(Route(f"/{name}.csv", self._csv(name, build, allowed)))
        return Starlette(routes=routes)

    def _authorised(self, request: Request) -> bool:
        return self.sessions.valid(request.cookies.get(COOKIE))

    def _root(self, request: Request) -> Response:
        return RedirectResponse("/field" if self._authorised(request) else "/login", status_code=303)

    async def _login(self, request: Request) -> Response:
        if request.method == "GET":
            if request.query_params:
                return self._error(400, "the login page takes no parameters")
            return self._render("login.html", {"error": None}, status=200)
        body = (await request.body())[:4096].decode("utf-8", "replace")
        try:
            form = parse_qs(body, keep_blank_values=True, max_num_fields=4)
        except ValueError:
            form = {}
        token = (form.get("token") or [""])[0]
        if set(form) - {"token"} or not token.strip():
            return self._render("login.html", {"error": "Enter your analyst token."}, status=400)
        if not self.sessions.check_token(token):
            return self._render("login.html", {"error": "This token is not accepted here: an analyst token "
                                                         "from the gateway configuration is needed."}, status=401)
        response = RedirectResponse("/field", status_code=303)
        response.set_cookie(COOKIE, self.sessions.issue(), max_age=int(self.sessions.lifetime), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    def _logout(self, request: Request) -> Response:
        self.sessions.revoke(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def _page(self, name: str, build: Callable[[Params], tuple[dict[str, Any], Mapping[str, Table]]],
              allowed: set[str]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            if not self._authorised(request):
                return RedirectResponse("/login", status_code=303)
            try:
                params = Params(request.url.query, allowed)
                self._fresh()
                context, _ = build(params)
            except ParamError as exc:
                return self._error(400, str(exc))
            started = context.pop("_started", None)
            context.update(page=name, query=request.url.query, as_of=_stamp(self._refreshed_at))
            response = self._render(f"{name}.html", context, status=200)
            if started is not None:
                response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            return response
        return endpoint

    def _csv(self, name: str, build: Callable[[Params], tuple[dict[str, Any], Mapping[str, Table]]],
             allowed: set[str]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            if not self._authorised(request):
                return PlainTextResponse("log in first: an analyst session is needed\n", status_code=401)
            try:
                params = Params(request.url.query, allowed | {"table"})
                self._fresh()
                _, tables = build(params)
                table_name = params.choice("table", tuple(tables), next(iter(tables)))
            except ParamError as exc:
                return PlainTextResponse(f"error: {exc}\n", status_code=400)
            table = tables[table_name]
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(table.columns)
            writer.writerows(("" if v is None else v for v in row) for row in table.rows)
            return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
                "Content-Disposition": f'attachment; filename="{name}-{table_name}.csv"'})
        return endpoint

    def _render(self, template: str, context: Mapping[str, Any], *, status: int) -> HTMLResponse:
        html = self._env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                       "form-action 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        })

    def _error(self, status: int, message: str) -> HTMLResponse:
        return self._render("error.html", {"status": status, "message": message, "page": None}, status=status)

    # -- pages -------------------------------------------------------------------------------

    def _period(self, params: Params, default_days: int) -> Period:
        last = params.day("to") or self.last_day()
        first = params.day("from") or last - timedelta(days=default_days - 1)
        if first > last:
            raise ParamError("from must not be after to")
        if (last - first).days + 1 > _MAX_DAYS:
            raise ParamError(f"the period may span at most {_MAX_DAYS} days")
        return Period(first, last)

    def _field_page(self, params: Params) -> tuple[dict[str, Any], Mapping[str, Table]]:
        started = time.perf_counter()
        behind = params.choice("behind", ("0", "1"), "0") == "1"
        report = self.field(behind_only=behind)
        chart = _charts.bars([(r[0], r[1]) for r in report.rollout.rows], title="devices per bundle version")
        stale = [r for r in report.terminals.rows if (r[2] or 0) >= 48]
        behind_count = sum(1 for r in report.terminals.rows if r[8])
        return ({"_started": started, "report": report, "rollout_chart": chart, "behind": behind,
                 "stale": len(stale), "behind_count": behind_count},
                {"terminals": report.terminals, "rollout": report.rollout})

    def _offers_page(self, params: Params) -> tuple[dict[str, Any], Mapping[str, Table]]:
        started = time.perf_counter()
        period = self._period(params, 7)
        channel = params.name("channel")
        by = params.choice("by", ("offer", "category", "channel"), "offer")
        bucket = params.choice("bucket", ("day", "week"), "day")
        report = self.offers(period, channel=channel, by=by, bucket=bucket)
        top = [r[0] for r in report.totals.rows[:6]]
        series: dict[str, list[tuple[str, float]]] = {g: [] for g in top}
        for b, g, _s, a, _r in report.series.rows:
            if g in series:
                series[g].append((b, a))
        charts = {
            "accepted": _charts.lines(series, title=f"accepted per {bucket}, top {len(top)} by acceptances"),
            "funnel": _charts.funnel(report.funnel.rows, title="decision funnel"),
            "rules": _charts.bars([(r[0], r[1]) for r in report.rules.rows[:12]], title="offers removed by rule",
                                  color=_charts.PALETTE[3]),
            "concentration": _charts.bars([(r[1], r[2]) for r in report.concentration.rows[:15]],
                                          title="decisions won per offer", color=_charts.PALETTE[2]),
        }
        return ({"_started": started, "report": report, "period": period, "channel": channel or "", "by": by,
                 "bucket": bucket, "charts": charts},
                {"totals": report.totals, "series": report.series, "funnel": report.funnel, "rules": report.rules,
                 "concentration": report.concentration})

    def _customers_page(self, params: Params) -> tuple[dict[str, Any], Mapping[str, Table]]:
        started = time.perf_counter()
        period = self._period(params, 30)
        report = self.customers(period)
        last = period.first - timedelta(days=1)
        last_month = Period(last.replace(day=1), last)
        charts = {
            "flow": _charts.flow(report.flows.rows, FLOW_STAGES, title="customer flows between lifecycle stages"),
            "clv": _charts.bars([(f"{r[0]:g}–{r[1]:g}", r[2]) for r in report.clv.rows], title="customers by CLV"),
            "pyramid": _charts.pyramid([(r[0], r[5] or 0.0, r[1]) for r in report.pyramid.rows], title="value pyramid"),
            "loyalty": _charts.bars([(r[0], r[2]) for r in report.loyalty.rows], title="loyalty ladder at the end",
                                    color=_charts.PALETTE[4]),
        }
        return ({"_started": started, "report": report, "period": period, "charts": charts,
                 "last_month": last_month},
                {"flows": report.flows, "matrix": report.matrix, "retention": report.retention, "clv": report.clv,
                 "pyramid": report.pyramid, "loyalty": report.loyalty, "loyalty_moves": report.loyalty_moves})

    def _models_page(self, params: Params) -> tuple[dict[str, Any], Mapping[str, Table]]:
        started = time.perf_counter()
        report = self.models()
        charts = {label: _charts.calibration([(r[2], r[3], r[1]) for r in table.rows], title=f"calibration {label}")
                  for label, table in report.curves.items()}
        tables = {"models": report.models}
        if report.experiments is not None:
            tables["experiments"] = report.experiments
        return ({"_started": started, "report": report, "charts": charts}, tables)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "never"


def check_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)
