"""`nbo demo` runs the whole loop end to end (small sizes to stay quick)."""

import subprocess
import sys


def test_demo_runs_the_whole_loop(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())",
         "demo", "--customers", "400", "--visits", "12", "--dir", str(tmp_path / "demo"), "--no-console"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout
    for marker in ("[11/11]", "holdout AUC", "exported", "How v3 would have done", "SNIPS", "verdict:", "card number refused", "pushed", "hub balance",
                   "Acceptance by offer", "demo-retail v2", "on the app — bundle demo-retail v2"):
        assert marker in text, marker
    assert "Traceback" not in out.stderr
    # the terminals' events all reached the hub: nothing pending after sync
    sync_table = text.split("[6/11]")[1].split("[7/11]")[0]
    rows = [line.split() for line in sync_table.splitlines() if line.startswith("pos-")]
    assert len(rows) == 2 and all(r[-1] == "0" and int(r[1]) > 0 for r in rows)
    # the acceptance table is the hub's: its response events, one per visit of stage 5
    hub_stage = text.split("[7/11]")[1].split("[8/11]")[0]
    assert "from the response events the hub holds" in hub_stage
    table = hub_stage.split("from the response events the hub holds")[1]
    responses = [int(line.split()[1]) for line in table.splitlines() if line.split() and line.split()[1].isdigit()]
    assert 0 < sum(responses) <= 12
    assert (tmp_path / "demo" / "model" / "report.html").exists()
    # the learning loop: a Parquet log, a model trained on it, a verdict that decided the publication
    assert (tmp_path / "demo" / "log" / "_nbo_log.json").exists()
    assert (tmp_path / "demo" / "model-v3" / "propensity.onnx").exists()
    assert ("bundle v3 published" in text) == ("verdict: better" in text)
    # the experiment: the hub's verdict per arm, the same arm on both terminals
    experiment = text.split("[11/11]")[1]
    for marker in ("experiment gold-campaign", "campaign ", "no-campaign", "no-offers", "sample ratio:", "verdict:"):
        assert marker in experiment, marker
    (line,) = [x for x in experiment.splitlines() if "pos-1 → arm" in x]
    assert line.split("pos-1 → arm ")[1].split(",")[0] == line.split("pos-2 → arm ")[1].strip()
