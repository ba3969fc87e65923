"""The smallest embedding of nbo-edge: open the device state, install a signed bundle, decide.

    python examples/kiosk_embed.py BUNDLE.zip SIGNING.pub [STATE_DIR]

With no arguments it first makes a sample bundle and key in a temporary directory
(examples/_prepare.py: sample data, a small trained model, a signed bundle), then runs the
same ten lines. Everything happens locally: no server, no network.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nbo.sdk import BundleError, Client, NboError


def kiosk(bundle: Path, public_key: Path, state_dir: Path) -> None:
    """Open, install, decide — the whole integration (a restart keeps the installed bundle)."""
    with Client.open(state_dir, device_id="kiosk-1", trusted_keys=[public_key]) as client:
        try:
            before = client.bundle
            info = client.install_bundle(bundle)  # the bundle that is active already: nothing to do
            print(f"keeping bundle {info.name} v{info.version}: already installed" if info == before
                  else f"installed bundle {info.name} v{info.version} ({info.offer_count} offers)")
        except BundleError as exc:  # refused (tampered, untrusted, not newer): the active bundle keeps serving
            if client.bundle is None:
                raise
            print(f"keeping bundle {client.bundle.name} v{client.bundle.version}: {exc}")
        decision = client.decide("C000042", channel="kiosk", profile={"age": 34, "segment": "mass"})
        print(f"offers for {decision.customer_id} (strategy {decision.strategy or '-'}):")
        for rank, offer in enumerate(decision.offers, start=1):
            print(f"  {rank}. {offer.category.upper()} {offer.name}: score {offer.score:.1f} = propensity "
                  f"{offer.propensity:.3f} x value {offer.value:g} x weight {offer.weight:g} x lever {offer.lever:g}")


def main(argv: list[str]) -> int:
    if len(argv) not in (0, 2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nbo-kiosk-") as tmp:
        if argv:
            bundle, public_key = Path(argv[0]), Path(argv[1])
        else:
            from _prepare import prepare  # the sample bundle maker next to this file

            print("no bundle given: preparing a sample bundle and key first …")
            prepared = prepare(Path(tmp) / "central")
            bundle, public_key = prepared.bundle, prepared.public_key
        try:
            kiosk(bundle, public_key, Path(argv[2]) if len(argv) == 3 else Path(tmp) / "state")
        except NboError as exc:  # one line, not a traceback: what is wrong is in the message
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
