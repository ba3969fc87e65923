"""Training benchmark (``make bench``): demo data → gbt and logreg → ONNX parity; CDNOW AUC.

Prints, per model kind, the fit and export times, the holdout AUC and the ONNX-vs-scikit-learn
max |Δp| that export checks (limit 1e-4), then runs examples/cdnow_clv.py (target AUC ≥ 0.763).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nbo.model_export import generate_demo_data, train_from_directory

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        demo = generate_demo_data(Path(tmp) / "data", customers=2000, seed=0)
        print(f"demo data: {demo.n_customers} customers, {demo.n_history} shown offers "
              f"in {time.perf_counter() - started:.1f} s")
        for kind in ("gbt", "logreg"):
            started = time.perf_counter()
            result = train_from_directory(demo.directory, Path(tmp) / kind, model=kind, progress=False)
            m = result.metrics
            print(f"{kind:7s} fit {m['fit_seconds']:6.2f} s  export+parity {m['export_seconds']:5.2f} s  "
                  f"total {time.perf_counter() - started:6.2f} s  AUC {m['auc']:.3f} "
                  f"(truth ceiling {m['ground_truth']['auc_of_ground_truth']:.3f})  "
                  f"parity max|Δp| {m['parity_max_abs_diff']:.2e}")
    started = time.perf_counter()
    rc = subprocess.call([sys.executable, str(ROOT / "examples" / "cdnow_clv.py")], cwd=ROOT,
                         stderr=subprocess.DEVNULL)
    print(f"cdnow example: exit {rc} in {time.perf_counter() - started:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
