"""Where the CPU of one gateway call goes, thread by thread (a diagnostic for bench_gateway.py).

    .venv/bin/python bench/bench_gateway_profile.py [--calls 2000] [--rounds 2]

Runs the gateway in this process (``create_server``, the real configuration, interceptors, SQLite
hub, the bench's catalog and model) and calls it over loopback from one client thread, so the
CPU time of every thread of the process (``/proc/self/task/*/stat``, Linux only) is one call's
whole cost: the client, gRPC's completion-queue thread, the RPC worker, gRPC's core threads and
the hub's WAL checkpointer. Three calls are measured: health ``Check``; ``Decide``; and
``Decide`` answered with a canned response (auth, metrics and message sizes of a ``Decide``,
none of its work). ``inside Decide`` is the worker's CPU inside ``DecisionServicer.Decide``.
Not a pass/fail benchmark: it prints where the time goes.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the signed-bundle fixtures of the test suite

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _task_seconds(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's Python threads (by name) and of all its tasks."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            seconds = _task_seconds(f"/proc/self/task/{thread.native_id}/stat")
        except OSError:
            continue
        name = thread.name
        if name.startswith("nbo-rpc"):
            name = "rpc worker"
        elif name.startswith("nbo-wal-checkpoint"):
            name = "wal checkpointer"
        elif "_serve" in name:
            name = "grpc completion queue"
        elif name.startswith("nbo-decision-reader"):
            name = "reader"
        elif name == "MainThread":
            name = "client"
        out[name] = out.get(name, 0.0) + seconds
    total = 0.0
    for path in glob.glob("/proc/self/task/*/stat"):
        try:
            total += _task_seconds(path)
        except OSError:
            continue
    out["all tasks"] = total
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("needs Linux /proc")

    import grpc
    from gateway_helpers import APP, PUBLISHER, bench_setup, publish_chunks
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from nbo.gateway import create_server, load_config
    from nbo.gateway._decision_service import DecisionServicer
    from nbo.v1 import decision_pb2, decision_pb2_grpc, publish_pb2_grpc

    inside = [0.0]
    canned: dict[str, Any] = {"on": False, "response": None}
    real_decide = DecisionServicer.Decide

    def decide(self: DecisionServicer, request: Any, context: Any) -> Any:
        if canned["on"] and canned["response"] is not None:
            return canned["response"]
        started = time.thread_time()
        try:
            canned["response"] = real_decide(self, request, context)
            return canned["response"]
        finally:
            inside[0] += time.thread_time() - started

    DecisionServicer.Decide = decide  # type: ignore[method-assign]  # before create_server binds it

    with tempfile.TemporaryDirectory(prefix="nbo-bench-gwp-") as tmp:
        base = Path(tmp)
        bundle, config = bench_setup(base)
        server, port = create_server(load_config(config), state_dir=base / "state", bundle_poll_seconds=0)
        server.start()
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            publish_pb2_grpc.PublishServiceStub(channel).PublishBundle(
                publish_chunks(bundle.read_bytes()), metadata=PUBLISHER, timeout=60)
            health = health_pb2_grpc.HealthStub(channel)
            decisions = decision_pb2_grpc.DecisionServiceStub(channel)
            rng = random.Random(1)

            def check() -> Any:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=10)

            def decide_call() -> Any:
                return decisions.Decide(decision_pb2.DecideRequest(
                    customer_id=f"C{rng.randrange(1000)}", channel="pos"), metadata=APP, timeout=10)

            calls: list[tuple[str, Callable[[], Any], bool]] = [
                ("Check", check, False), ("Decide", decide_call, False), ("Decide, canned response", decide_call, True),
            ]
            for r in range(args.rounds):
                for name, call, use_canned in calls:
                    canned["on"] = use_canned
                    for _ in range(200):
                        call()
                    inside[0] = 0.0
                    before = thread_cpu()
                    started = time.perf_counter()
                    for _ in range(args.calls):
                        call()
                    elapsed = time.perf_counter() - started
                    after = thread_cpu()
                    per = {k: (after[k] - before.get(k, 0.0)) / args.calls * 1e6 for k in after}
                    parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(per.items()) if k != "all tasks" and v >= 0.5)
                    extra = f", inside Decide {inside[0] / args.calls * 1e6:.0f}" if name == "Decide" else ""
                    print(f"round {r + 1} {name:24s} {args.calls / elapsed:6.0f}/s  CPU per call {per['all tasks']:5.0f} µs"
                          f"  ({parts}{extra})", flush=True)
            channel.close()
        finally:
            server.stop(1).wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
