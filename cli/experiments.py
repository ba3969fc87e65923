"""`nbo experiments`: the verdict of the bundle's experiments (docs/experiments.md).

Thin: parses its flags and calls ``nbo.gateway.experiment_reports`` (imported when the command
runs), then prints ``format_reports`` or the reports as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import add_command

__all__ = ["register"]


def _experiments(args: argparse.Namespace) -> int:
    from nbo.gateway import experiment_reports, format_reports

    reports = experiment_reports(args.hub, tuning=args.tuning)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print(format_reports(reports))
    broken = [r.experiment_id for r in reports if r.sample_ratio is not None and r.sample_ratio.mismatch]
    if broken:
        print(f"warning: SAMPLE RATIO MISMATCH in {', '.join(broken)}: the assignment is broken",
              file=sys.stderr)
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text!r}")
    return value


def register(sub: Any) -> None:
    parser = add_command(
        sub, "experiments", help="per-arm verdicts of the bundle's experiments, read from the hub",
        description="Attribute the rewards on the hub, then report per experiment and arm: customers, decisions, "
                    "shown, accepted, acceptance rate, value per decision, the lift against the control and the "
                    "champion with 95% and always-valid 95% intervals, and a sample-ratio check that flags a "
                    "broken assignment. Method: docs/experiments.md.",
        examples=["nbo experiments --hub sqlite:///srv/nbo/state/hub.sqlite",
                  "nbo experiments --hub postgresql://nbo@db/nbo --json"],
    )
    parser.add_argument("--hub", required=True, metavar="URL",
                        help="hub database: sqlite:///path/hub.sqlite or postgresql://…")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--tuning", type=_positive, default=5000.0, metavar="N",
                        help="customers at which the always-valid interval is tightest (default 5000)")
    parser.set_defaults(func=_experiments)
