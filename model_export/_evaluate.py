"""Off-policy evaluation: how a candidate would have done on what really happened (docs/learning.md).

Two levels:

* :func:`evaluate_policy` — plain arrays, for anyone's policy on anyone's log (contract):
  inverse propensity scoring (IPS), self-normalised IPS (SNIPS) and, with a reward model's
  predictions, doubly robust (DR), each with a bootstrap 95 % interval and the effective sample
  size of the importance weights.
* :func:`evaluate_bundle` — ``nbo evaluate``: re-runs a candidate bundle's models and ranking on
  every logged moment of an exported log (its eligible set and logged inputs) and estimates, for
  the candidate and for the logging policy, the acceptance rate per shown slot and the value per
  decision, with a support check and a verdict that never rests on the direct method alone.

Slates are evaluated per position, independently (obp's independent IPS): the value of a
slate is the sum of its positions' values, and each position's reward is taken to depend only
on the offer shown there.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nbo.sdk import BundleError, BundleInfo, InputError
from nbo.sdk.core import LoadedBundle, input_column, inspect_bundle, load_bundle

__all__ = ["Estimate", "Evaluation", "PolicyEstimates", "evaluate_bundle", "evaluate_policy", "format_evaluation",
           "load_bundle_file", "read_log"]

LOG_MARKER = "_nbo_log.json"
_Z_LEVEL = (2.5, 97.5)


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's answer: the estimate, its bootstrap 95 % interval, the weights' ESS."""

    value: float
    low: float
    high: float
    ess: float
    """Effective sample size of the importance weights, (Σw)² / Σw² (n when all weights are 1)."""
    max_weight: float = 1.0


# -- the array API ---------------------------------------------------------------------------------


def _array(value: Any, name: str, *, ndim: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an array of numbers", field=name) from None
    if arr.ndim not in ndim:
        raise InputError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, not {arr.ndim}", field=name)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise InputError(f"{name} contains NaN", field=name)
    return arr


def evaluate_policy(
    action: Any,
    reward: Any,
    pscore: Any,
    action_dist: Any,
    *,
    position: Any = None,
    estimated_rewards: Any = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    groups: Any = None,
) -> dict[str, Estimate]:
    """Estimate the value of the policy ``action_dist`` on a log collected by another one.

    ``action`` (n,) the logged action index of each round; ``reward`` (n,); ``pscore`` (n,) the
    logging policy's probability of that action (at that position), in (0, 1];
    ``action_dist`` (n, n_actions) or (n, n_actions, n_positions) the evaluated policy's
    probabilities (each round's, and position's, sum to 1); ``position`` (n,) 0-based, needed
    with a 3-dimensional ``action_dist``; ``estimated_rewards`` (n, n_actions[, n_positions]) a
    reward model's predictions, for DR; ``groups`` (n,) optional cluster ids (e.g. decision ids)
    resampled together by the bootstrap. Returns ``{"ips", "snips"[, "dr"]}`` →
    :class:`Estimate`. Bad input → ``InputError`` naming the argument.
    """
    a = _array(action, "action", ndim=(1,), dtype=np.float64)
    n = len(a)
    if n == 0:
        raise InputError("action is empty: there is nothing to evaluate", field="action")
    if not np.all(a == np.floor(a)) or a.min() < 0:
        raise InputError("action must hold non-negative integer action indices", field="action")
    r = _array(reward, "reward", ndim=(1,))
    p = _array(pscore, "pscore", ndim=(1,))
    dist = _array(action_dist, "action_dist", ndim=(2, 3))
    for name, arr in (("reward", r), ("pscore", p)):
        if len(arr) != n:
            raise InputError(f"{name} has {len(arr)} rounds, action has {n}", field=name)
    if dist.shape[0] != n:
        raise InputError(f"action_dist has {dist.shape[0]} rounds, action has {n}", field="action_dist")
    if not np.isfinite(r).all():
        raise InputError("reward must be finite", field="reward")
    if (p <= 0).any() or (p > 1).any():
        raise InputError("pscore must be probabilities in (0, 1]", field="pscore")
    if (dist < 0).any() or (dist > 1).any():
        raise InputError("action_dist must be probabilities in [0, 1]", field="action_dist")
    if not np.allclose(dist.sum(axis=1), 1.0, atol=1e-6):
        raise InputError("action_dist must sum to 1 over the actions of each round (and position)",
                         field="action_dist")
    n_actions = dist.shape[1]
    ai = a.astype(np.intp)
    if ai.max() >= n_actions:
        raise InputError(f"action holds index {int(ai.max())}, but action_dist has {n_actions} actions",
                         field="action")
    if dist.ndim == 3:
        if position is None:
            raise InputError("position is required with a 3-dimensional action_dist", field="position")
        pos = _array(position, "position", ndim=(1,))
        if len(pos) != n:
            raise InputError(f"position has {len(pos)} rounds, action has {n}", field="position")
        if not np.all(pos == np.floor(pos)) or pos.min() < 0 or pos.max() >= dist.shape[2]:
            raise InputError(f"position must hold 0-based positions below {dist.shape[2]}", field="position")
        k = pos.astype(np.intp)
        pi = dist[np.arange(n), :, k]  # (n, n_actions) at each round's position
    else:
        if position is not None:
            pos = _array(position, "position", ndim=(1,))
            if len(pos) != n:
                raise InputError(f"position has {len(pos)} rounds, action has {n}", field="position")
        k = None
        pi = dist
    dm = q_logged = None
    if estimated_rewards is not None:
        q = _array(estimated_rewards, "estimated_rewards", ndim=(dist.ndim,))
        if q.shape != dist.shape:
            raise InputError(f"estimated_rewards has shape {q.shape}, action_dist {dist.shape}",
                             field="estimated_rewards")
        if not np.isfinite(q).all():
            raise InputError("estimated_rewards must be finite", field="estimated_rewards")
        qk = q[np.arange(n), :, k] if k is not None else q
        dm = (pi * qk).sum(axis=1)
        q_logged = qk[np.arange(n), ai]
    w = pi[np.arange(n), ai] / p
    cluster = _groups(groups, n)
    return _estimates(w, r, dm, q_logged, n_bootstrap=n_bootstrap, seed=seed, groups=cluster)


def _groups(groups: Any, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    values = np.asarray(groups)
    if values.ndim != 1 or len(values) != n:
        raise InputError(f"groups must have one entry per round ({n})", field="groups")
    _, index = np.unique(values, return_inverse=True)
    return index.astype(np.intp)


def _check_bootstrap(n_bootstrap: Any) -> int:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 10:
        raise InputError("n_bootstrap must be an integer of at least 10", field="n_bootstrap")
    return n_bootstrap


def _totals(terms: np.ndarray, groups: np.ndarray | None, seed: int, n_bootstrap: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Column sums of ``terms`` (n rows × k per-row terms): over the log, and over each of
    ``n_bootstrap`` resamples of rows (or of whole groups) — one matrix product per resample."""
    if groups is not None:
        units = int(groups.max()) + 1
        terms = np.column_stack([np.bincount(groups, weights=terms[:, j], minlength=units)
                                 for j in range(terms.shape[1])])
    units = terms.shape[0]
    rng = np.random.default_rng(seed)
    resampled = np.empty((n_bootstrap, terms.shape[1]))
    for b in range(n_bootstrap):
        resampled[b] = np.bincount(rng.integers(0, units, units), minlength=units) @ terms
    return terms.sum(axis=0), resampled


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _interval(samples: list[float]) -> tuple[float, float]:
    finite = np.array([s for s in samples if math.isfinite(s)])
    if len(finite) < max(10, len(samples) // 2):
        return -math.inf, math.inf  # mostly undefined resamples: no interval worth the name
    low, high = np.percentile(finite, _Z_LEVEL)
    return float(low), float(high)


def _estimates(w: np.ndarray, r: np.ndarray, dm: np.ndarray | None, q: np.ndarray | None, *, n_bootstrap: int,
               seed: int, groups: np.ndarray | None = None) -> dict[str, Estimate]:
    n_bootstrap = _check_bootstrap(n_bootstrap)
    ess = float(w.sum() ** 2 / (w @ w)) if (w @ w) > 0 else 0.0
    top = float(w.max()) if len(w) else 0.0
    columns = [w * r, w, np.ones_like(w)]
    if dm is not None and q is not None:
        columns.append(dm + w * (r - q))
    point, resampled = _totals(np.column_stack(columns), groups, seed, n_bootstrap)

    def values(tot: np.ndarray) -> dict[str, float]:
        out = {"ips": _ratio(tot[0], tot[2]), "snips": _ratio(tot[0], tot[1])}
        if len(tot) > 3:
            out["dr"] = _ratio(tot[3], tot[2])
        return out

    samples: dict[str, list[float]] = {k: [] for k in values(point)}
    for tot in resampled:
        for k, v in values(tot).items():
            samples[k].append(v)
    result = {}
    for k, v in values(point).items():
        low, high = _interval(samples[k])
        result[k] = Estimate(value=v, low=low, high=high, ess=ess, max_weight=top)
    return result


# -- the bundle API ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyEstimates:
    """Estimates for one policy (or for a difference of two): metric → estimator → Estimate."""

    acceptance: Mapping[str, Estimate]
    """Acceptance rate per shown slot."""
    value: Mapping[str, Estimate]
    """Value per decision: the accepted offers' values, summed over the slots of a decision."""
    direct: Mapping[str, float] = field(default_factory=dict)
    """The direct method's point estimates (the candidate's own model as the reward model):
    biased, shown for reference only, never a verdict."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What :func:`evaluate_bundle` found."""

    rows: int
    decisions: int
    candidate: PolicyEstimates
    logging: PolicyEstimates
    difference: PolicyEstimates
    """candidate − logging, with paired bootstrap intervals."""
    support: float
    """Share of the candidate's choices (probability mass) the logging policy could have made."""
    support_by_position: Mapping[int, float]
    ess: float
    max_weight: float
    verdict: str
    """``better``, ``worse``, ``no clear difference`` or ``no verdict: …`` (insufficient support)."""
    warnings: tuple[str, ...]
    candidate_name: str
    assumption: str = ("slates are evaluated per position, independently: a slate's value is the sum of its "
                       "positions' values, and each position's reward depends only on the offer shown there")


def read_log(logs: str | Path) -> tuple[dict[str, Any], Path]:
    """The marker of an exported log and its directory; ``InputError`` (field ``logs``) otherwise."""
    directory = Path(logs)
    marker = directory / LOG_MARKER
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory", field="logs")
    if not marker.is_file():
        raise InputError(f"{directory} is not an nbo log (no {LOG_MARKER}; write one with `nbo export`)",
                         field="logs")
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{marker} is unreadable: {exc}", field="logs") from None
    if not isinstance(info, dict) or info.get("format") != 1:
        raise InputError(f"{marker} is not an nbo log marker of format 1", field="logs")
    if not info.get("rows"):
        raise InputError(f"the log {directory} is empty (0 shown slots)", field="logs")
    return info, directory


def load_bundle_file(path: str | Path) -> LoadedBundle:
    """A bundle zip loaded for offline use (evaluation, training): structure and hashes are checked,
    the signature is not (it is the central team's own candidate); ``InputError`` naming ``bundle``."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no bundle file at {source}", field="bundle")
    with tempfile.TemporaryDirectory(prefix="nbo-eval-") as tmp:
        try:
            verified = inspect_bundle(source, Path(tmp) / "b")
            manifest = verified.manifest
            info = BundleInfo(name=str(manifest.get("name")), version=int(manifest.get("version", 0)),
                              installed_at=0.0, offer_count=0,
                              models=tuple(m["id"] for m in manifest.get("models", [])))
            loaded = load_bundle(verified.directory, manifest, info)
        except BundleError as exc:
            raise InputError(f"bundle {source}: {exc}", field="bundle") from None
    if loaded.plan is None:
        raise InputError(f"bundle {source} has no decision plan", field="bundle")
    return loaded


_LOG_COLUMNS = ("decision_id", "position", "offer_id", "accepted", "selection_probability", "strategy",
                "eligible_offers", "eligible_pscore", "value")


def _scanner(directory: Path, columns: Sequence[str]) -> Any:
    import pyarrow.dataset as ds

    return ds.dataset(directory, format="parquet", partitioning="hive").scanner(columns=list(columns),
                                                                                batch_size=20_000)


class _Candidate:
    """The candidate bundle as a ranking policy over a logged moment's eligible set."""

    def __init__(self, bundle: LoadedBundle, logged_inputs: Mapping[str, str]) -> None:
        plan = bundle.plan
        assert plan is not None
        self.plan = plan
        self.name = f"{bundle.info.name} v{bundle.info.version}"
        self.position = plan.offer_position
        self.values = plan.value
        self.inputs: list[str] = []
        for model in plan.models:
            for inp in model.inputs:
                if inp.source == "offer":
                    continue
                if inp.name not in logged_inputs:
                    raise InputError(
                        f"the candidate's model {model.model_id!r} needs the input {inp.name}, which the log does "
                        f"not have (logged: {', '.join(logged_inputs) or 'none'})", field="bundle")
                self.inputs.append(inp.name)

    def score(self, moments: Sequence[tuple[list[int], Mapping[str, Any], str]]
              ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """For each (eligible offer indices, logged inputs, strategy): (propensity, order, mandatory count)."""
        plan = self.plan
        props = [np.ones(len(rows)) for rows, _, _ in moments]
        for k, model in enumerate(plan.models):
            parts = []
            for m, (rows, inputs, _) in enumerate(moments):
                idx = np.array(rows, dtype=np.intp)
                mine = np.flatnonzero(plan.model_index[idx] == k) if len(idx) else idx
                if len(mine):
                    parts.append((m, mine, idx[mine], inputs))
            if not parts:
                continue
            picked = np.concatenate([p[2] for p in parts])
            feeds: dict[str, np.ndarray] = {}
            for inp in model.inputs:
                if inp.source == "offer":
                    feeds[inp.name] = model.offer_columns[inp.name][picked]
                else:
                    # one value per decision, repeated over its offers (as the decision core broadcasts it)
                    column = input_column([_logged(inputs.get(inp.name), inp.dtype) for _, _, _, inputs in parts],
                                          inp.dtype)
                    feeds[inp.name] = np.repeat(column, [len(mine) for _, mine, _, _ in parts], axis=0)
            col = np.asarray(model.session.run([model.output_name], feeds)[0])[:, -1].astype(np.float64)
            col = np.nan_to_num(col, nan=0.0).clip(0.0, 1.0)
            at = 0
            for m, mine, _, _ in parts:
                props[m][mine] = col[at:at + len(mine)]
                at += len(mine)
        out: list[tuple[np.ndarray, np.ndarray, int]] = []
        for (rows, _, strategy), prop in zip(moments, props, strict=True):
            idx = np.array(rows, dtype=np.intp)
            weights = plan.strategy_weights.get(strategy)
            weight = np.ones(len(idx)) if weights is None else weights[plan.category_index[idx]]
            score = prop * plan.value[idx] * weight * plan.lever[idx]
            order = np.lexsort((idx, -score, ~plan.mandatory[idx]))
            out.append((prop, order, int(plan.mandatory[idx].sum())))
        return out


@dataclass(frozen=True, slots=True)
class _Moment:
    """A logged decision as the candidate sees it."""

    rank_of: np.ndarray
    """Per candidate-known eligible offer (in the log's order): its 1-based rank in the candidate's order."""
    mandatory: int
    known: np.ndarray
    """Per logged eligible offer: whether the candidate's catalog has it."""
    prop: np.ndarray
    value: np.ndarray
    where: Mapping[str, int]


def _slot_vector(rank_of: np.ndarray, position: int, mandatory: int, epsilon: float) -> np.ndarray:
    """:func:`slot_probability` of every offer (by its rank) at ``position``, vectorised."""
    k = len(rank_of)
    if position <= mandatory:
        return (rank_of == position).astype(np.float64)
    i = rank_of - mandatory
    r, kk = position - mandatory, k - mandatory
    if kk <= 1 or epsilon <= 0.0:
        return (i == r).astype(np.float64)
    m = kk - 1
    if r == 1:
        return np.where(i == 1, 1.0 - epsilon, np.where(i >= 2, epsilon / m, 0.0))
    return ((i == r) * ((1.0 - epsilon) + epsilon * (r - 2) / m)
            + (i == r - 1) * (epsilon * (kk - r + 1) / m)).astype(np.float64)


def _logged(value: Any, dtype: str) -> Any:
    """An exported input value back to what the model was fed (float null → NaN)."""
    if value is None and dtype != "string":
        return None
    return value


def evaluate_bundle(
    logs: str | Path,
    bundle: str | Path,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """``nbo evaluate``: the candidate bundle against the logging policy, on the exported log ``logs``.

    The candidate's models score every logged moment's eligible set from the logged inputs
    (offer inputs from the candidate's own catalog), with the logged strategy's weights in the
    candidate; its ranking and exploration give its probability of each offer at each position.
    Estimates: acceptance rate per shown slot and value per decision, by IPS, SNIPS and DR (the
    candidate's model is DR's reward model), each with a bootstrap 95 % interval resampling whole
    decisions; the candidate − logging difference with paired intervals; support, effective
    sample size and largest weight. The verdict needs SNIPS and DR to agree and full support.
    """
    n_bootstrap = _check_bootstrap(n_bootstrap)
    info, directory = read_log(logs)
    logged_inputs: Mapping[str, str] = info.get("inputs") or {}
    candidate = _Candidate(load_bundle_file(bundle), logged_inputs)
    plan = candidate.plan
    epsilon = plan.epsilon
    columns = [*_LOG_COLUMNS, *candidate.inputs]
    # per row: candidate's probability of the logged action at its position, logging pscore,
    # DM terms, the reward model at the logged action, unsupported mass; decision index
    pe, ps, acc, val, dm_acc, dm_val, q_acc, q_val, dm_log_acc, dm_log_val, unsupported, positions = \
        ([] for _ in range(12))
    decision_of: list[int] = []
    decision_ids: dict[str, int] = {}
    skipped = done = 0
    cache: dict[str, _Moment] = {}  # the decision of the previous batch's last rows
    for batch in _scanner(directory, columns).to_batches():
        t = batch.to_pydict()
        fresh: dict[str, tuple[list[int], np.ndarray, Mapping[str, Any], str]] = {}
        for i in range(batch.num_rows):
            did = t["decision_id"][i]
            offers = t["eligible_offers"][i]
            if offers is None or did in cache or did in fresh:
                continue
            known = np.array([o in candidate.position for o in offers], dtype=bool)
            rows = [candidate.position[o] for o, ok in zip(offers, known, strict=True) if ok]
            fresh[did] = (rows, known, {name: t[name][i] for name in candidate.inputs}, t["strategy"][i] or "")
        scored = candidate.score([(rows, inputs, strategy) for rows, _, inputs, strategy in fresh.values()])
        for (did, (rows, known, _, _)), (prop, order, mandatory) in zip(fresh.items(), scored, strict=True):
            k = len(rows)
            rank_of = np.empty(k, dtype=np.intp)
            rank_of[order] = np.arange(1, k + 1)
            idx = np.array(rows, dtype=np.intp)
            cache[did] = _Moment(rank_of=rank_of, mandatory=int(mandatory), known=known, prop=prop,
                                 value=candidate.values[idx] if k else np.zeros(0),
                                 where={plan.offer_ids[r]: j for j, r in enumerate(rows)})
        for i in range(batch.num_rows):
            did = t["decision_id"][i]
            moment = cache.get(did)
            if moment is None:
                skipped += 1
                continue
            position = int(t["position"][i])
            pi = _slot_vector(moment.rank_of, position, moment.mandatory, epsilon)
            j = moment.where.get(t["offer_id"][i])
            reward = float(t["accepted"][i])
            q, value_of = moment.prop, moment.value
            shown_value = float(value_of[j]) if j is not None else float(t["value"][i] or 0.0)
            pscore = t["selection_probability"][i]
            if pscore is None or not pscore > 0:
                raise InputError(f"the log holds a shown offer with selection probability {pscore} "
                                 f"(decision {did}): such a log cannot be used for evaluation", field="logs")
            lp = np.asarray(t["eligible_pscore"][i], dtype=np.float64)[moment.known]
            pe.append(float(pi[j]) if j is not None else 0.0)
            ps.append(float(pscore))
            acc.append(reward)
            val.append(reward * shown_value)
            qv = q * value_of
            dm_acc.append(float(pi @ q))
            dm_val.append(float(pi @ qv))
            q_acc.append(float(q[j]) if j is not None else 0.0)
            q_val.append(float(qv[j]) if j is not None else 0.0)
            dm_log_acc.append(float(lp @ q))
            dm_log_val.append(float(lp @ qv))
            unsupported.append(float(pi[lp <= 0].sum()))
            positions.append(position)
            decision_of.append(decision_ids.setdefault(did, len(decision_ids)))
        last = t["decision_id"][-1] if batch.num_rows else None
        cache = {last: cache[last]} if last in cache else {}
        done += batch.num_rows
        if progress is not None:
            progress(done)
    if not ps:
        raise InputError(f"the log {directory} has no rows with an eligible set (logged by an older SDK)",
                         field="logs")
    arrays = {k: np.array(v) for k, v in dict(pe=pe, ps=ps, acc=acc, val=val, dm_acc=dm_acc, dm_val=dm_val,
                                                  q_acc=q_acc, q_val=q_val, dm_log_acc=dm_log_acc,
                                                  dm_log_val=dm_log_val, unsupported=unsupported).items()}
    groups = np.array(decision_of, dtype=np.intp)
    n_rows, n_decisions = len(groups), len(decision_ids)
    per_decision = n_rows / n_decisions
    return _compare(arrays, groups, np.array(positions), per_decision=per_decision, n_bootstrap=n_bootstrap,
                    seed=seed, rows=n_rows, decisions=n_decisions, candidate_name=candidate.name,
                    skipped=skipped, top_value=float(plan.value.max(initial=0.0)))


def _compare(a: Mapping[str, np.ndarray], groups: np.ndarray, positions: np.ndarray, *, per_decision: float,
             n_bootstrap: int, seed: int, rows: int, decisions: int, candidate_name: str,
             skipped: int, top_value: float) -> Evaluation:
    w = a["pe"] / a["ps"]
    ones = np.ones_like(w)
    specs = {
        # (weights, reward, DM term, reward model at the logged action, scale)
        ("candidate", "acceptance"): (w, a["acc"], a["dm_acc"], a["q_acc"], 1.0),
        ("candidate", "value"): (w, a["val"], a["dm_val"], a["q_val"], per_decision),
        ("logging", "acceptance"): (ones, a["acc"], a["dm_log_acc"], a["q_acc"], 1.0),
        ("logging", "value"): (ones, a["val"], a["dm_log_val"], a["q_val"], per_decision),
    }

    columns: list[np.ndarray] = []
    for ww, r, dm, q, _ in specs.values():
        columns += [ww * r, ww, dm + ww * (r - q)]
    columns.append(ones)
    point_totals, resampled = _totals(np.column_stack(columns), groups, seed, n_bootstrap)

    def estimators(tot: np.ndarray) -> dict[tuple[str, str, str], float]:
        out = {}
        n_rows = tot[-1]
        for j, ((who, metric), (*_, scale)) in enumerate(specs.items()):
            wr, w_sum, dr = tot[3 * j], tot[3 * j + 1], tot[3 * j + 2]
            out[(who, metric, "ips")] = _ratio(wr, n_rows) * scale
            out[(who, metric, "snips")] = _ratio(wr, w_sum) * scale
            out[(who, metric, "dr")] = _ratio(dr, n_rows) * scale
        for metric in ("acceptance", "value"):
            for est in ("ips", "snips", "dr"):
                out[("difference", metric, est)] = out[("candidate", metric, est)] - out[("logging", metric, est)]
        return out

    point = estimators(point_totals)
    samples: dict[tuple[str, str, str], list[float]] = {k: [] for k in point}
    for tot in resampled:
        for k, v in estimators(tot).items():
            samples[k].append(v)
    # Mass the candidate puts where the logging policy never goes cannot be estimated from the
    # log: the intervals are widened by what it could be worth (0 to the largest reward there).
    unsupported = float(a["unsupported"].mean())
    reach = {"acceptance": 1.0, "value": max(top_value, float(a["val"].max(initial=0.0)))}
    ess = float(w.sum() ** 2 / (w @ w)) if (w @ w) > 0 else 0.0
    top = float(w.max())

    def policy(who: str) -> PolicyEstimates:
        metrics: dict[str, dict[str, Estimate]] = {}
        for metric in ("acceptance", "value"):
            scale = 1.0 if metric == "acceptance" else per_decision
            metrics[metric] = {}
            for est in ("ips", "snips", "dr"):
                low, high = _interval(samples[(who, metric, est)])
                if who != "logging" and unsupported > 0:
                    gap = unsupported * reach[metric] * scale
                    low, high = low - gap, high + gap
                    if who == "candidate":
                        low = max(low, 0.0)  # rewards are never negative
                metrics[metric][est] = Estimate(value=point[(who, metric, est)], low=low, high=high,
                                                ess=ess if who != "logging" else float(len(w)),
                                                max_weight=top if who != "logging" else 1.0)
        direct = {}
        if who == "candidate":
            direct = {"acceptance": float(a["dm_acc"].mean()), "value": float(a["dm_val"].mean()) * per_decision}
        return PolicyEstimates(acceptance=metrics["acceptance"], value=metrics["value"], direct=direct)

    by_position = {int(k) + 0: float(1.0 - a["unsupported"][positions == k].mean()) for k in np.unique(positions)}
    warnings: list[str] = []
    support = 1.0 - unsupported
    if unsupported > 0.005:
        worst = min(by_position, key=lambda k: by_position[k])
        warnings.append(
            f"insufficient support: {unsupported:.1%} of the candidate's choices are offers the logging policy never "
            f"shows at that position (position {worst}: {1 - by_position[worst]:.1%}); the estimates cannot see "
            "them and the intervals are widened by what they could be worth — explore more (exploration.epsilon) "
            "before trusting this")
    if ess < 0.01 * len(w):
        warnings.append(f"effective sample size {ess:.0f} of {len(w)} rows: the candidate differs so much from the "
                        "logging policy that few logged rounds inform the estimate")
    if skipped:
        warnings.append(f"{skipped} rows without an eligible set (an older SDK logged them) were left out")
    difference = policy("difference")
    if unsupported > 0.005:
        verdict = "no verdict: insufficient support"
    else:
        snips, dr = difference.value["snips"], difference.value["dr"]
        if snips.low > 0 and dr.low > 0:
            verdict = "better"
        elif snips.high < 0 and dr.high < 0:
            verdict = "worse"
        else:
            verdict = "no clear difference"
    return Evaluation(rows=rows, decisions=decisions, candidate=policy("candidate"), logging=policy("logging"),
                      difference=difference, support=support, support_by_position=by_position, ess=ess,
                      max_weight=top, verdict=verdict, warnings=tuple(warnings), candidate_name=candidate_name)


def format_evaluation(ev: Evaluation) -> str:
    """The evaluation as the terminal shows it (what ``nbo evaluate`` prints)."""
    from ._table import format_table

    lines = [f"off-policy evaluation of {ev.candidate_name} on {ev.rows:,} shown slots of {ev.decisions:,} decisions",
             f"assumption: {ev.assumption}", ""]
    for metric, title in (("acceptance", "acceptance rate per shown slot"), ("value", "value per decision")):
        rows = []
        for est in ("ips", "snips", "dr"):
            c = getattr(ev.candidate, metric)[est]
            lg = getattr(ev.logging, metric)[est]
            d = getattr(ev.difference, metric)[est]
            rows.append([est.upper(), _fmt(c), _fmt(lg), _fmt(d)])
        lines.append(title)
        lines.append(format_table(["estimator", "candidate [95% interval]", "logging policy", "difference"], rows))
        lines.append(f"direct method (biased; for reference only, no verdict): {ev.candidate.direct[metric]:.4g}")
        lines.append("")
    lines.append(f"effective sample size {ev.ess:,.0f} of {ev.rows:,}; largest importance weight {ev.max_weight:.3g}; "
                 f"support {ev.support:.1%}")
    for warning in ev.warnings:
        lines.append(f"warning: {warning}")
    lines.append(f"verdict (value per decision, SNIPS and DR agreeing): {ev.verdict}")
    return "\n".join(lines)


def _fmt(e: Estimate) -> str:
    return f"{e.value:.4g} [{e.low:.4g}, {e.high:.4g}]"
