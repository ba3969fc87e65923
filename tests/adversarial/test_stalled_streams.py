"""Attack class: streams that stall and hold the gateway's threads.

``DownloadBundle`` readers that stop reading (one device token, or terminals on slow links)
and ``PublishBundle`` uploads that stop sending each held one of the gateway's 16 RPC threads
for as long as their clients kept them open; sixteen of them left ``Health`` and ``Decide``
unanswered. Now each kind of call has executors of its own, streams beyond their limits are
refused ``RESOURCE_EXHAUSTED`` at once, and a stream with no progress for
``stream_idle_seconds`` (or open longer than ``stream_total_seconds``) is cancelled, which
frees its thread. A real gateway on 127.0.0.1:0, real stalled clients, one connection each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_helpers import (
    APP,
    DEVICE,
    PUBLISHER,
    Gateway,
    bundle_kit,
    config_data,
    publish,
    running_gateway,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nbo.gateway import create_server, parse_config
from nbo.gateway._call_limits import CallLimits
from nbo.v1 import decision_pb2, decision_pb2_grpc, publish_pb2, publish_pb2_grpc, sync_pb2, sync_pb2_grpc

# One connection per stalled client, no window growth: a reader that does not read stalls
# the server's send after the first 64 KiB.
STALLED_CHANNEL = (("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0))
BIG = 8 * 1024 * 1024


class Stalls:
    """Stalled clients, each on its own connection; ``close()`` ends them all."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.release = threading.Event()
        self.channels: list[grpc.Channel] = []
        self.downloads: list[Any] = []
        self.uploads: list[Any] = []

    def _channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.target, options=STALLED_CHANNEL)
        self.channels.append(channel)
        return channel

    def reader(self, *, name: str = "big") -> Any:
        """A ``DownloadBundle`` whose client never reads a chunk."""
        call = sync_pb2_grpc.SyncServiceStub(self._channel()).DownloadBundle(
            sync_pb2.DownloadBundleRequest(name=name, version=1), metadata=DEVICE, timeout=300)
        self.downloads.append(call)
        return call

    def uploader(self) -> Any:
        """A ``PublishBundle`` that sends its metadata and one chunk, then nothing."""
        release = self.release

        def chunks() -> Iterator[publish_pb2.PublishChunk]:
            meta = publish_pb2.PublishMetadata(filename="b.zip", total_size=BIG, sha256="0" * 64)
            yield publish_pb2.PublishChunk(metadata=meta, data=b"x" * 1024)
            release.wait(300)

        stub = publish_pb2_grpc.PublishServiceStub(self._channel())
        future = stub.PublishBundle.future(chunks(), metadata=PUBLISHER, timeout=300)
        self.uploads.append(future)
        return future

    def close(self) -> None:
        self.release.set()
        for call in (*self.downloads, *self.uploads):
            call.cancel()
        for channel in self.channels:
            channel.close()


def refused(calls: list[Any]) -> int:
    return sum(1 for c in calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)


def answering(gw: Gateway, *, seconds: float) -> None:
    """Health and Decide answer within a 2 s deadline, again and again, for ``seconds``."""
    health = health_pb2_grpc.HealthStub(gw.channel)
    decision = decision_pb2_grpc.DecisionServiceStub(gw.channel)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end or n < 5:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        answer = decision.Decide(decision_pb2.DecideRequest(customer_id=f"c{n}", channel="app"), metadata=APP,
                                 timeout=2)
        assert answer.offers
        n += 1


@pytest.fixture()
def gw(tmp_path: Path) -> Iterator[Gateway]:
    kit = bundle_kit(tmp_path / "kit")
    with running_gateway(tmp_path / "state", config_data(trusted_key=kit.pub)) as gateway:
        publish(gateway, kit.bundle(1))
        gateway.server.hub.register_bundle(os.urandom(BIG), name="big", version=1)
        yield gateway


def test_64_stalled_streams_leave_health_and_decide_answering(gw: Gateway) -> None:
    stalls = Stalls(f"127.0.0.1:{gw.port}")
    budgets = gw.server.budgets
    assert budgets is not None
    limits = budgets.limits
    try:
        for _ in range(32):
            stalls.reader()
        for _ in range(32):
            stalls.uploader()
        # The gateway holds as many as its limits allow and refuses the rest at once.
        wait_for(lambda: budgets.active_streams("download") == limits.max_downloads
                 and budgets.active_streams("publish") == limits.max_publishes, timeout=30, what="streams admitted")
        wait_for(lambda: refused(stalls.downloads) == 32 - limits.max_downloads
                 and refused(stalls.uploads) == 32 - limits.max_publishes, timeout=30, what="refusals")
        answering(gw, seconds=3)
        # still stalled, still held: nothing above was answered by their going away
        assert budgets.active_streams("download") == limits.max_downloads
        assert budgets.active_streams("publish") == limits.max_publishes
    finally:
        stalls.close()
    wait_for(lambda: budgets.active_streams() == 0, timeout=30, what="streams released")


@pytest.fixture()
def tight(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with a 1 s idle limit, a 2 s total limit, two downloads and one upload at a time."""
    kit = bundle_kit(tmp_path / "kit")
    limits = CallLimits(max_downloads=2, max_publishes=1, max_open_streams=1, stream_idle_seconds=1.0,
                        stream_total_seconds=2.0)
    config = parse_config(config_data(trusted_key=kit.pub), base_dir=tmp_path)
    server, port = create_server(config, state_dir=tmp_path / "state", bundle_poll_seconds=0, limits=limits)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    gateway = Gateway(server=server, port=port, channel=channel, state_dir=tmp_path / "state")
    try:
        publish(gateway, kit.bundle(1))
        server.hub.register_bundle(os.urandom(BIG), name="big", version=1)
        yield gateway
    finally:
        channel.close()
        server.stop(grace=2).wait(10)


def cut(gw: Gateway, rpc: str, reason: str) -> float:
    assert gw.server.metrics is not None
    value = gw.server.metrics.registry.get_sample_value("nbo_stream_limit_total", {"rpc": rpc, "reason": reason})
    return value or 0.0


def test_idle_streams_are_cut_and_their_threads_freed(tight: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nbo.gateway")
    budgets = tight.server.budgets
    assert budgets is not None
    stalls = Stalls(f"127.0.0.1:{tight.port}")
    try:
        readers = [stalls.reader(), stalls.reader()]
        upload = stalls.uploader()
        wait_for(lambda: cut(tight, "DownloadBundle", "idle") == 2 and cut(tight, "PublishBundle", "idle") == 1,
                 timeout=20, what="the idle limit to cut three streams")
        wait_for(lambda: budgets.active_streams() == 0, timeout=20, what="the cut streams to be released")
        wait_for(upload.done, timeout=20, what="the uploader to see its call end")
        assert upload.code() == grpc.StatusCode.CANCELLED
        for reader in readers:  # what had reached the reader's buffer, then the end of the call
            received = 0
            with pytest.raises(grpc.RpcError) as info:
                for chunk in reader:
                    received += len(chunk.data)
            assert info.value.code() == grpc.StatusCode.CANCELLED
            assert received < BIG
        # the freed slots serve a reader that reads
        total = 0
        for chunk in tight.sync.DownloadBundle(sync_pb2.DownloadBundleRequest(name="big", version=1),
                                               metadata=DEVICE, timeout=60):
            total += len(chunk.data)
        assert total == BIG
    finally:
        stalls.close()
    lines = [r.getMessage() for r in caplog.records if "stream_limit" in r.getMessage()]
    assert any("rpc=DownloadBundle reason=idle" in line for line in lines)
    assert not any(r.exc_info for r in caplog.records)


def test_a_long_stream_is_cut_at_the_total_limit(tight: Gateway) -> None:
    """``Health/Watch`` is silent while the status holds, so only the total limit applies to it."""
    budgets = tight.server.budgets
    assert budgets is not None
    health = health_pb2_grpc.HealthStub(tight.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    assert budgets.active_streams("stream") == 1
    # a second watcher while one is open is refused at once (max_open_streams = 1)
    with pytest.raises(grpc.RpcError) as refused_info:
        next(health.Watch(health_pb2.HealthCheckRequest(), timeout=60))
    assert refused_info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as info:
        next(watch)  # nothing changes: no next message; the total limit ends the stream
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert cut(tight, "Watch", "total") == 1
    wait_for(lambda: budgets.active_streams("stream") == 0, timeout=10, what="the watch to be released")
