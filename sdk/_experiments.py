"""Experiments inside the bundle: stable, offline assignment of a customer to an arm.

Pure functions and frozen data, no I/O. A bundle's catalog may hold experiments
(``meta.experiments``, compiled by ``nbo bundle build``, docs/experiments.md). Each one takes
a slice ``[offset, offset + share)`` of the traffic and splits it over its arms by weight.

Assignment (hash version 1), the same on every device and gateway replica, with no network:

- ``unit(purpose, seed, customer_id)`` = the first 8 bytes of
  ``sha256(b"nbo-experiments/1" 0x00 purpose 0x00 seed 0x00 customer_id)`` (all UTF-8) read as a
  big-endian unsigned integer, divided by 2**64: a number uniform in [0, 1);
- a customer is in the experiment when ``offset <= unit("traffic", "", id) < offset + share``
  (one traffic hash for every experiment, so experiments with disjoint slices never share a
  customer);
- the arm is the first one whose cumulative weight share exceeds ``unit("arm", seed, id)``
  (the arms in catalog order, shadow arms not counted).

So the arm depends on the experiment's seed, its arms' weights and the customer id only:
unchanged across bundle versions while those stay, and changed for everyone by a new seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARM_KINDS",
    "HASH_VERSION",
    "Arm",
    "Assignment",
    "Experiment",
    "assign",
    "assignment_unit",
    "parse_experiments",
]

HASH_VERSION = 1
"""The version of the assignment hash above; recorded with every assigned decision."""

ARM_KINDS = ("champion", "challenger", "control-random", "control-none")
"""``champion``: the bundle as built; ``challenger``: the bundle with the arm's replacements;
``control-random``: a uniformly random eligible offer first; ``control-none``: no offer beyond the
mandatory ones and the fallback."""

_PREFIX = b"nbo-experiments/1\x00"
_SCALE = float(1 << 64)


def assignment_unit(purpose: str, seed: str, customer_id: str) -> float:
    """The hash of version 1 as a number in [0, 1) (see the module docstring)."""
    digest = hashlib.sha256(
        b"%s%s\x00%s\x00%s" % (_PREFIX, purpose.encode(), seed.encode(), customer_id.encode())
    ).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm of an experiment, as compiled into the bundle."""

    arm_id: str
    kind: str
    weight: float
    shadow: bool = False
    models: Mapping[str, str] | None = None
    """Offer model id → the model that scores those offers in this arm."""
    strategy_weights: Mapping[str, Mapping[str, float]] | None = None
    """Strategy → category → weight, replacing those weights in this arm."""
    levers: Mapping[str, float] | None = None
    """Offer id → lever in this arm."""


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment: its traffic slice and arms (``bounds``: live arms' cumulative shares)."""

    experiment_id: str
    seed: str
    share: float
    offset: float
    arms: tuple[Arm, ...]
    bounds: tuple[float, ...]
    """Per live (non-shadow) arm, in order: the cumulative share of the weights, the last 1.0."""
    live: tuple[int, ...]
    """Indices into ``arms`` of the live arms, in the order of ``bounds``."""
    shadows: tuple[int, ...]
    """Indices into ``arms`` of the shadow arms."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a customer falls: the experiment, the arm (indices into the plan's experiments)."""

    experiment: int
    arm: int
    experiment_id: str
    arm_id: str


def _experiment(raw: Mapping[str, Any], what: str) -> Experiment:
    arms = []
    for a in raw["arms"]:
        arms.append(Arm(
            arm_id=str(a["id"]), kind=str(a.get("kind", "challenger")), weight=float(a.get("weight", 0.0)),
            shadow=bool(a.get("shadow", False)), models=a.get("models") or None,
            strategy_weights=a.get("strategy_weights") or None, levers=a.get("levers") or None,
        ))
    live = tuple(i for i, a in enumerate(arms) if not a.shadow)
    total = sum(arms[i].weight for i in live)
    if not live or not total > 0.0:
        raise ValueError(f"{what}: the live arms' weights do not sum to a positive number")
    if any(a.kind not in ARM_KINDS for a in arms):
        raise ValueError(f"{what}: an arm has an unknown kind")
    bounds: list[float] = []
    running = 0.0
    for i in live:
        running += arms[i].weight
        bounds.append(running / total)
    bounds[-1] = 1.0
    return Experiment(
        experiment_id=str(raw["id"]), seed=str(raw["seed"]), share=float(raw["share"]),
        offset=float(raw.get("offset", 0.0)), arms=tuple(arms), bounds=tuple(bounds), live=live,
        shadows=tuple(i for i, a in enumerate(arms) if a.shadow),
    )


def parse_experiments(raw: Any, what: str = "meta.experiments") -> tuple[Experiment, ...]:
    """The compiled ``meta.experiments`` JSON value (a list) as :class:`Experiment` objects;
    ``ValueError`` naming ``what`` when it is malformed (the loader turns it into ``BundleError``)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ValueError(f"{what} must be a list")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(_experiment(item, f"{what}[{i}]"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{what}[{i}] is malformed: {exc!r}") from None
    return tuple(out)


def assign(experiments: Sequence[Experiment], customer_id: str) -> Assignment | None:
    """The experiment and live arm ``customer_id`` falls in, or None (outside every experiment)."""
    if not experiments:
        return None
    traffic = assignment_unit("traffic", "", customer_id)
    for k, exp in enumerate(experiments):
        if exp.offset <= traffic < exp.offset + exp.share:
            u = assignment_unit("arm", exp.seed, customer_id)
            pos = next((p for p, bound in enumerate(exp.bounds) if u < bound), len(exp.bounds) - 1)
            index = exp.live[pos]
            return Assignment(k, index, exp.experiment_id, exp.arms[index].arm_id)
    return None
