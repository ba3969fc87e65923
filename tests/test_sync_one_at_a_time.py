"""docs/sync.md "one sync in flight", across processes: two `nbo sync` processes started at the same
moment on one state directory push each event once between them (the second waits for the
first's file lock, then finds nothing to push). Without the lock both would read the same
pending events and send them: the hub would dedupe them, but the pushed counts would add up
to twice the backlog."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from gateway_helpers import NBO_CLI
from nbo.gateway import create_server, parse_config
from nbo.sdk import Client

TOKENS = [{"token": "tok-dev-1", "role": "device", "device_id": "dev-1"}]


def test_two_sync_processes_on_one_state_directory_push_each_event_once(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    backlog = 20_000
    with Client.open(state, device_id="dev-1", trusted_keys=[]) as client:
        with client._store.transaction() as tx:
            for i in range(backlog):
                tx.append_event("response", {"decision_id": f"d{i}", "offer_id": "o1", "customer_id": f"c{i % 9}",
                                             "category": "xsell", "channel": "pos", "outcome": "accepted"})
    server, port = create_server(parse_config({"tokens": TOKENS}), state_dir=tmp_path / "hub")
    server.start()
    try:
        cmd = [*NBO_CLI, "sync", "--state", str(state), "--hub", f"127.0.0.1:{port}", "--token", "tok-dev-1"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
        # the process that found everything already pushed says so instead of "pushed 0 events"
        pushed = [0 if re.search(r"^nothing to push", out, flags=re.M)
                  else int(re.search(r"^pushed (\d+) events?", out, flags=re.M).group(1))  # type: ignore[union-attr]
                  for out, _ in outputs]
        assert sum(pushed) == backlog and sorted(pushed) == [0, backlog], pushed
        held = server.hub.events(device_id="dev-1")
        assert [e["seq"] for e in held] == list(range(1, backlog + 1))
    finally:
        server.stop(0).wait(10)
