"""The verdict of the bundle's experiments, read from the hub (docs/experiments.md, "Verdict").

Per experiment and arm: customers, decisions, shown slots, accepted slots, acceptance rate
(accepted per shown slot), value per decision (the logged value of the accepted offers), and
the lift of each arm against the control arm and against the champion on both metrics, with a
fixed-horizon 95 % interval and an always-valid (anytime) 95 % interval; and a sample-ratio
check of the customers per arm against the arms' weights.

Statistics (plain functions of plain numbers, no I/O):

- The unit is the customer (what is assigned): an arm's metric is a ratio of sums over its
  customers (ΣY / ΣN), its variance the delta method's, so a customer's many decisions are not
  counted as independent.
- The difference of two arms is the difference of their ratios; its variance the sum of theirs.
- The fixed-horizon interval is the normal one, valid when looked at once.
- The always-valid interval is the two-sided asymptotic confidence sequence of Waudby-Smith,
  Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences" (Annals of Statistics, 2024), eq. 9 — Howard et al.'s (2021) normal
  mixture boundary applied to the CLT; the same method GrowthBook's sequential testing uses —
  tuned to be tightest at ``tuning`` customers (default 5,000).
- The sample-ratio check is Pearson's chi-square of customers per live arm against the
  weights of the newest bundle of the experiment the hub holds; p < 0.001 flags it.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbo.sdk import InputError

from ._export import open_hub
from ._hub import HubStore
from ._rewards import attribute_rewards, bundle_bytes

__all__ = [
    "ArmResult",
    "ExperimentReport",
    "Lift",
    "SampleRatio",
    "always_valid_halfwidth",
    "chi_square_sf",
    "experiment_reports",
    "format_reports",
    "ratio_estimate",
]

SRM_P_VALUE = 0.001
"""A sample-ratio p-value below this flags the assignment as broken."""
_Z95 = 1.959963984540054
_PAGE = 5_000


# -- the statistics -----------------------------------------------------------------------------


def ratio_estimate(ys: Sequence[float], ns: Sequence[float]) -> tuple[float, float]:
    """(ΣY/ΣN, its delta-method variance) over units with values ``ys`` and denominators ``ns``."""
    n = len(ys)
    total_n = math.fsum(ns)
    if n == 0 or total_n <= 0:
        return math.nan, math.nan
    ratio = math.fsum(ys) / total_n
    if n < 2:
        return ratio, math.inf
    mean_n = total_n / n
    # Var(Y - R·N) per unit, over n units, scaled by the mean denominator squared
    residual = [y - ratio * m for y, m in zip(ys, ns, strict=True)]
    mean_r = math.fsum(residual) / n
    s2 = math.fsum((r - mean_r) ** 2 for r in residual) / (n - 1)
    return ratio, s2 / (n * mean_n * mean_n)


def always_valid_halfwidth(variance: float, n: int, *, alpha: float = 0.05, tuning: float = 5_000.0) -> float:
    """Half-width of the two-sided asymptotic confidence sequence (Waudby-Smith et al. 2024,
    eq. 9) for an estimate of ``variance`` from ``n`` units, tightest near ``tuning`` units."""
    if n < 1 or not math.isfinite(variance):
        return math.inf
    log_alpha = math.log(alpha)
    rho2 = (-2 * log_alpha + math.log(-2 * log_alpha + 1)) / tuning
    s2 = variance * n  # per-unit variance
    a = n * rho2 + 1
    return math.sqrt(s2) * math.sqrt(2 * a * math.log(math.sqrt(a) / alpha) / (n * n * rho2))


def chi_square_sf(x: float, dof: int) -> float:
    """P(χ²(dof) ≥ x), exact closed forms for integer ``dof`` ≥ 1."""
    if dof < 1:
        raise ValueError("dof must be >= 1")
    if x <= 0:
        return 1.0
    half = x / 2
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, dof // 2):
            term *= half / j
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    if dof > 1:
        term = math.sqrt(2 * x / math.pi) * math.exp(-half)
        acc = term
        for j in range(1, (dof - 1) // 2):
            term *= x / (2 * j + 1)
            acc += term
        total += acc
    return min(1.0, total)


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lift:
    """An arm minus a baseline arm on one metric, with a fixed and an always-valid 95 % interval."""

    baseline: str
    metric: str
    """``acceptance_rate`` or ``value_per_decision``."""
    difference: float
    low: float
    high: float
    always_valid_low: float
    always_valid_high: float
    relative: float | None
    """difference / the baseline's value (None when that is 0)."""

    @property
    def significant(self) -> bool:
        """The always-valid interval excludes 0 (safe to act on at any look)."""
        return self.always_valid_low > 0 or self.always_valid_high < 0


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm's figures."""

    arm: str
    kind: str
    weight: float | None
    """The arm's weight in the newest bundle of the experiment the hub holds (None: unknown)."""
    customers: int
    decisions: int
    shown: int
    accepted: int
    acceptance_rate: float
    value_per_decision: float
    vs_control: tuple[Lift, ...] = ()
    vs_champion: tuple[Lift, ...] = ()


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """The sample-ratio check: customers per live arm against the weights."""

    chi_square: float
    dof: int
    p_value: float
    mismatch: bool
    expected_shares: Mapping[str, float]
    observed_shares: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    """One experiment's verdict (``to_dict`` gives plain JSON-ready data)."""

    experiment_id: str
    bundle: str
    """The newest ``name vN`` whose decisions are in the report."""
    control: str | None
    champion: str | None
    arms: tuple[ArmResult, ...]
    sample_ratio: SampleRatio | None
    """None when the weights are unknown (the hub holds none of the bundles) or one arm only."""
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data: dicts, lists, numbers, strings (non-finite numbers as None)."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class _Customer:
    __slots__ = ("accepted", "decisions", "shown", "value")

    def __init__(self) -> None:
        self.decisions = 0
        self.shown = 0
        self.accepted = 0
        self.value = 0.0


@dataclass
class _Arm:
    kind: str
    customers: dict[str, _Customer]


def _lift(arm: _Arm, base_id: str, base: _Arm, alpha: float, tuning: float) -> tuple[Lift, ...]:
    out = []
    for metric in ("acceptance_rate", "value_per_decision"):
        a, va = _metric(arm, metric)
        b, vb = _metric(base, metric)
        diff, var = a - b, va + vb
        half = _Z95 * math.sqrt(var) if math.isfinite(var) else math.inf
        seq = always_valid_halfwidth(var, len(arm.customers) + len(base.customers), alpha=alpha, tuning=tuning)
        out.append(Lift(baseline=base_id, metric=metric, difference=diff, low=diff - half, high=diff + half,
                        always_valid_low=diff - seq, always_valid_high=diff + seq,
                        relative=diff / b if b and math.isfinite(b) else None))
    return tuple(out)


def _metric(arm: _Arm, metric: str) -> tuple[float, float]:
    cs = arm.customers.values()
    if metric == "acceptance_rate":
        return ratio_estimate([c.accepted for c in cs], [c.shown for c in cs])
    return ratio_estimate([c.value for c in cs], [c.decisions for c in cs])


def experiment_reports(hub: HubStore | str, *, alpha: float = 0.05, tuning: float = 5_000.0,
                       attribute: bool = True) -> list[ExperimentReport]:
    """The verdict of every experiment whose decisions the hub holds, by experiment id.

    ``hub`` is a :class:`HubStore` or a database URL. A reward pass runs first (unless not
    ``attribute``). ``alpha`` is 1 − the intervals' coverage; ``tuning`` the number of
    customers (both arms together) at which the always-valid interval is tightest.
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), not {alpha!r}", field="alpha")
    if not tuning > 0:
        raise InputError(f"tuning must be > 0, not {tuning!r}", field="tuning")
    store = open_hub(hub) if isinstance(hub, str) else hub
    try:
        if attribute:
            attribute_rewards(store)
        experiments, bundles = _read(store)
        weights = {exp: _weights(store, exp, bundles[exp]) for exp in experiments}
    finally:
        if isinstance(hub, str):
            store.close()
    return [_report(exp, arms, bundles[exp], weights[exp], alpha, tuning) for exp, arms in sorted(experiments.items())]


def _read(store: HubStore) -> tuple[dict[str, dict[str, _Arm]], dict[str, tuple[str, int]]]:
    experiments: dict[str, dict[str, _Arm]] = {}
    newest: dict[str, tuple[str, int]] = {}
    after = ""
    while True:
        with store.db.transaction() as tx:
            rows = tx.execute(
                "SELECT d.decision_id, d.customer_id, d.bundle_name, d.bundle_version, e.payload FROM hub_decisions d "
                "JOIN hub_events e ON e.device_id = d.device_id AND e.seq = d.seq "
                f"WHERE d.decision_id > ? AND e.payload LIKE '%\"experiment\"%' ORDER BY d.decision_id LIMIT {_PAGE}",
                (after,))
            if not rows:
                break
            ids = [r[0] for r in rows]
            marks = ", ".join(["?"] * len(ids))
            slots = {
                r[0]: (int(r[1]), int(r[2] or 0), float(r[3] or 0.0))
                for r in tx.execute(
                    "SELECT decision_id, COUNT(*), SUM(accepted), SUM(CASE WHEN accepted = 1 THEN COALESCE(value, 0) "
                    f"ELSE 0 END) FROM hub_rewards WHERE decision_id IN ({marks}) GROUP BY decision_id", ids)
            }
        after = rows[-1][0]
        for decision_id, customer_id, bundle_name, version, text in rows:
            try:
                tag = json.loads(text).get("experiment")
                exp_id, arm_id, kind = str(tag["id"]), str(tag["arm"]), str(tag.get("kind", "challenger"))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # not an experiment decision ("experiment" only appeared in a value)
            arm = experiments.setdefault(exp_id, {}).setdefault(arm_id, _Arm(kind, {}))
            c = arm.customers.get(customer_id)
            if c is None:
                c = arm.customers[customer_id] = _Customer()
            shown, accepted, value = slots.get(decision_id, (0, 0, 0.0))
            c.decisions += 1
            c.shown += shown
            c.accepted += accepted
            c.value += value
            here = (str(bundle_name), int(version))
            if exp_id not in newest or (here[1], here[0]) > (newest[exp_id][1], newest[exp_id][0]):
                newest[exp_id] = here
    return experiments, newest


def _weights(store: HubStore, experiment_id: str, bundle: tuple[str, int]) -> dict[str, tuple[str, float]] | None:
    """Arm → (kind, weight) of the live arms in the bundle's catalog, or None when not held."""
    with store.db.transaction() as tx:
        data = bundle_bytes(store, tx, bundle[0], bundle[1])
    if data is None:
        return None
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        with tempfile.TemporaryDirectory(prefix="nbo-experiments-") as tmp:
            path = Path(tmp) / "catalog.sqlite"
            path.write_bytes(zf.read(manifest["catalog"]["path"]))
            conn = sqlite3.connect(path)
            try:
                rows = conn.execute("SELECT value FROM meta WHERE key = 'experiments'").fetchall()
            finally:
                conn.close()
    for exp in json.loads(rows[0][0]) if rows else []:
        if exp.get("id") == experiment_id:
            return {str(a["id"]): (str(a.get("kind", "challenger")), float(a.get("weight", 0.0)))
                    for a in exp.get("arms", []) if not a.get("shadow")}
    return None


def _report(exp_id: str, arms: dict[str, _Arm], bundle: tuple[str, int],
            weights: dict[str, tuple[str, float]] | None, alpha: float, tuning: float) -> ExperimentReport:
    kinds = {arm_id: arm.kind for arm_id, arm in arms.items()}
    if weights:
        kinds.update({arm_id: kind for arm_id, (kind, _) in weights.items()})
    champion = next((a for a, k in sorted(kinds.items()) if k == "champion"), None)
    control = next((a for a, k in sorted(kinds.items()) if k == "control-none"), None) or next(
        (a for a, k in sorted(kinds.items()) if k == "control-random"), None)
    empty = _Arm("", {})
    results = []
    order = list(weights) if weights else sorted(arms)
    order += [a for a in sorted(arms) if a not in order]
    for arm_id in order:
        arm = arms.get(arm_id, _Arm(kinds.get(arm_id, "challenger"), {}))
        cs = arm.customers.values()
        decisions = sum(c.decisions for c in cs)
        shown = sum(c.shown for c in cs)
        accepted = sum(c.accepted for c in cs)
        value = math.fsum(c.value for c in cs)
        results.append(ArmResult(
            arm=arm_id, kind=kinds.get(arm_id, arm.kind),
            weight=weights[arm_id][1] if weights and arm_id in weights else None,
            customers=len(arm.customers), decisions=decisions, shown=shown, accepted=accepted,
            acceptance_rate=accepted / shown if shown else math.nan,
            value_per_decision=value / decisions if decisions else math.nan,
            vs_control=_lift(arm, control, arms.get(control, empty), alpha, tuning)
            if control is not None and arm_id != control else (),
            vs_champion=_lift(arm, champion, arms.get(champion, empty), alpha, tuning)
            if champion is not None and arm_id != champion else (),
        ))
    ratio = _sample_ratio(results, weights)
    return ExperimentReport(experiment_id=exp_id, bundle=f"{bundle[0]} v{bundle[1]}", control=control,
                            champion=champion, arms=tuple(results), sample_ratio=ratio,
                            verdict=_verdict(results, ratio))


def _sample_ratio(results: Sequence[ArmResult], weights: dict[str, tuple[str, float]] | None) -> SampleRatio | None:
    if not weights:
        return None
    live = [r for r in results if r.arm in weights and weights[r.arm][1] > 0]
    total_w = math.fsum(weights[r.arm][1] for r in live)
    total_n = sum(r.customers for r in live)
    if len(live) < 2 or total_n == 0:
        return None
    expected = {r.arm: weights[r.arm][1] / total_w for r in live}
    chi = math.fsum((r.customers - total_n * expected[r.arm]) ** 2 / (total_n * expected[r.arm]) for r in live)
    # customers in an arm of weight 0 (or unknown to the bundle) are a mismatch by themselves
    stray = sum(r.customers for r in results if r not in live)
    p = 0.0 if stray else chi_square_sf(chi, len(live) - 1)
    return SampleRatio(chi_square=chi, dof=len(live) - 1, p_value=p, mismatch=p < SRM_P_VALUE,
                       expected_shares=expected,
                       observed_shares={r.arm: r.customers / total_n for r in live})


def _verdict(results: Sequence[ArmResult], ratio: SampleRatio | None) -> str:
    if ratio is not None and ratio.mismatch:
        return "SAMPLE RATIO MISMATCH: the assignment is broken; do not trust these figures"
    winners = [r.arm for r in results for lift in r.vs_champion
               if lift.metric == "value_per_decision" and lift.always_valid_low > 0]
    losers = [r.arm for r in results for lift in r.vs_champion
              if lift.metric == "value_per_decision" and lift.always_valid_high < 0 and r.kind == "challenger"]
    if winners:
        return f"better than the champion (value per decision, always-valid 95 %): {', '.join(winners)}"
    if losers:
        return f"worse than the champion (value per decision, always-valid 95 %): {', '.join(losers)}"
    return "no clear difference from the champion yet"


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}"


def format_reports(reports: Sequence[ExperimentReport]) -> str:
    """The reports as terminal text (what ``nbo experiments`` prints)."""
    if not reports:
        return "no experiment decisions in this hub"
    lines: list[str] = []
    for rep in reports:
        ratio = rep.sample_ratio
        if ratio is not None and ratio.mismatch:
            lines.append("!" * 78)
            lines.append(f"!! SAMPLE RATIO MISMATCH in experiment {rep.experiment_id}: chi-square {ratio.chi_square:.1f} "
                         f"(dof {ratio.dof}), p = {ratio.p_value:.2g} < {SRM_P_VALUE}")
            lines.append("!! customers did not reach the arms in the shares the weights say: the figures below "
                         "are not trustworthy")
            lines.append("!" * 78)
        lines.append(f"experiment {rep.experiment_id}  ({rep.bundle}; champion {rep.champion or '-'}, "
                     f"control {rep.control or '-'})")
        head = f"  {'arm':<16} {'kind':<15} {'customers':>9} {'decisions':>9} {'shown':>8} {'accepted':>8} " \
               f"{'acc.rate':>8} {'value/dec':>9}"
        lines.append(head)
        for arm in rep.arms:
            lines.append(f"  {arm.arm:<16} {arm.kind:<15} {arm.customers:>9,} {arm.decisions:>9,} {arm.shown:>8,} "
                         f"{arm.accepted:>8,} {_num(arm.acceptance_rate):>8} {_num(arm.value_per_decision):>9}")
        for arm in rep.arms:
            for lift in (*arm.vs_champion, *arm.vs_control):
                lines.append(
                    f"  {arm.arm} vs {lift.baseline} {lift.metric}: {lift.difference:+.4f} "
                    f"95% [{_num(lift.low)}, {_num(lift.high)}] always-valid [{_num(lift.always_valid_low)}, "
                    f"{_num(lift.always_valid_high)}]" + (" *" if lift.significant else ""))
        if ratio is not None:
            lines.append(f"  sample ratio: chi-square {ratio.chi_square:.2f} (dof {ratio.dof}), "
                         f"p = {ratio.p_value:.3g}" + (" MISMATCH" if ratio.mismatch else " ok"))
        else:
            lines.append("  sample ratio: not checked (the hub holds no bundle with this experiment's weights)")
        lines.append(f"  verdict: {rep.verdict}")
        lines.append("")
    lines.append("* the always-valid interval excludes 0: safe to act on at any look (docs/experiments.md)")
    return "\n".join(lines)
