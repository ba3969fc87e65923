"""`nbo export`, `nbo evaluate`: the learning loop's commands (docs/learning.md).

Thin: each parses its flags and calls one public function — ``nbo.gateway.export_log`` (the
hub's field log → Parquet) and ``nbo.model_export.evaluate_bundle`` (off-policy evaluation of a
candidate bundle on an exported log) — imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_command, int_at_least

__all__ = ["register"]


def _export(args: argparse.Namespace) -> int:
    from nbo.gateway import export_log

    def progress(rows: int, decisions: int) -> None:
        if not args.quiet:
            print(f"\rexported {rows:,} slots of {decisions:,} decisions", end="", file=sys.stderr, flush=True)

    report = export_log(args.hub, args.out, since=args.since, until=args.until, progress=progress)
    if not args.quiet and report.rows:
        print(file=sys.stderr)
    days = f"{report.days[0]} … {report.days[-1]}" if report.days else "no days"
    print(f"wrote {report.directory}: {report.rows:,} shown slots of {report.decisions:,} decisions ({days}, "
          f"{len(report.days)} partitions), {len(report.inputs)} input columns, {len(report.bundles)} bundles")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from nbo.model_export import evaluate_bundle, format_evaluation

    def progress(rows: int) -> None:
        if not args.quiet:
            print(f"\rre-ranked {rows:,} logged slots", end="", file=sys.stderr, flush=True)

    evaluation = evaluate_bundle(args.logs, args.bundle, n_bootstrap=args.bootstrap, seed=args.seed,
                                 progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    print(format_evaluation(evaluation))
    return 0


def register(sub: Any) -> None:
    export = add_command(
        sub, "export", help="write the hub's field log (decisions, rewards, logged inputs) as Parquet",
        description="Attribute the rewards on the hub, then write one row per shown slot — time, device, channel, "
                    "bundle, customer, position, offer, selection probability, score parts, rewards, the logged "
                    "model inputs and the eligible set with its probabilities — partitioned by day, zstd. "
                    "Columns: docs/learning.md.",
        examples=["nbo export --hub sqlite:///srv/nbo/state/hub.sqlite --out log",
                  "nbo export --hub postgresql://nbo@db/nbo --out log-nov --since 2026-11-01 --until 2026-12-01"],
    )
    export.add_argument("--hub", required=True, metavar="URL",
                        help="hub database: sqlite:///path/hub.sqlite or postgresql://…")
    export.add_argument("--out", required=True, metavar="DIR", help="directory to create (must not exist or be empty)")
    export.add_argument("--since", metavar="DATE", help="first day (or ISO time) to export, inclusive, UTC")
    export.add_argument("--until", metavar="DATE", help="day (or ISO time) to stop before, exclusive, UTC")
    export.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    export.set_defaults(func=_export)

    evaluate = add_command(
        sub, "evaluate", help="estimate off-policy how a candidate bundle would have done on the field log",
        description="Re-run the candidate's models and ranking on every logged moment (its eligible set and "
                    "logged inputs) and estimate, for the candidate and the logging policy, the acceptance rate per "
                    "shown slot and the value per decision with IPS, self-normalised IPS and doubly robust "
                    "estimators, each with a bootstrap 95% interval; with effective sample size, largest weight, "
                    "a support check and a verdict. Method and assumptions: docs/learning.md.",
        examples=["nbo evaluate --logs log --bundle retail-v4.zip",
                  "nbo evaluate --logs log --bundle retail-v4.zip --bootstrap 500 --seed 1"],
    )
    evaluate.add_argument("--logs", required=True, metavar="DIR", help="a field log written by `nbo export`")
    evaluate.add_argument("--bundle", required=True, metavar="FILE.zip", help="the candidate bundle")
    evaluate.add_argument("--bootstrap", type=int_at_least(10), default=200, metavar="N",
                          help="bootstrap resamples for the intervals (default 200)")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the resampling (default 0)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    evaluate.set_defaults(func=_evaluate)
