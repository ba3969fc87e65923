"""Issue 7 item 1, the parts test_demo.py does not check: run as `make demo` runs it (no --dir),
`nbo demo` works in a fresh temp directory and deletes it afterwards (--keep keeps it); it
prints ranked offers in the seeds' style with their score parts, the terminals picking up v2
by sync, and where the report HTML is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NBO = [sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())"]


def run_demo(tmp: Path, *extra: str) -> tuple[str, Path]:
    tmp.mkdir()
    out = subprocess.run([*NBO, "demo", "--customers", "400", "--visits", "12", *extra],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    match = re.search(r"^nbo demo — working in (\S+)$", out.stdout, flags=re.M)
    assert match is not None, out.stdout
    workdir = Path(match.group(1))
    assert workdir.parent == tmp  # a fresh temp directory, not the current one
    return out.stdout, workdir


@pytest.mark.slow
def test_demo_cleans_up_and_prints_the_loop(tmp_path: Path) -> None:
    text, workdir = run_demo(tmp_path / "tmp")
    # (onnxruntime itself leaves a small ``.ses`` session file in TMPDIR on import: not the demo's.)
    assert not workdir.exists() and [p for p in (tmp_path / "tmp").iterdir() if p.name != ".ses"] == []

    # Ranked offers in the seeds' style ("X-SELL Product C 400 / LOYALTY advice 375 / …").
    lines = re.findall(r"^ +C\d+ \(\w+\): (.+)$", text, flags=re.M)
    assert len(lines) >= 3, text
    for line in lines:
        parts = line.split(" / ")
        assert len(parts) >= 2 and all(re.fullmatch(r"[A-Z]+ .+ [\d,]+", p) for p in parts), line
    # Score parts of one decision: propensity × value × weight × lever = score.
    header = re.search(r"^rank +offer +category +propensity +value +weight +lever +score$", text, flags=re.M)
    assert header is not None, text
    rows = re.findall(r"^ +\d+ +.+? +[a-z]+ +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)$",
                      text[header.end():], flags=re.M)
    assert rows, text
    for propensity, value, weight, lever, score in rows:
        assert abs(float(propensity) * float(value) * float(weight) * float(lever) - float(score)) < 0.05

    # Both terminals installed v2 by sync.
    picked = re.findall(r"^(pos-\d) +v2 +demo-retail v2$", text, flags=re.M)
    assert picked == ["pos-1", "pos-2"], text
    # Where the report is — and that it goes with the directory unless --keep.
    assert re.search(r"Evaluation report: \S+report\.html \(deleted with the demo directory; rerun with --keep\)",
                     text), text


@pytest.mark.slow
def test_demo_keep_keeps_the_directory(tmp_path: Path) -> None:
    text, workdir = run_demo(tmp_path / "tmp", "--keep")
    assert (workdir / "model" / "report.html").exists()
    assert f"kept {workdir}" in text
