"""Opening a console from a gateway configuration, and serving it with uvicorn."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from nbo.gateway import load_config
from nbo.sdk import ConfigError

from ._app import Console, check_listen

__all__ = ["open_console", "serve"]


def open_console(hub_url: str | None, *, config: str | os.PathLike[str], cache: str | Path | None = None,
                 schema: str | None = None, refresh_seconds: float = 2.0) -> Console:
    """A :class:`Console` over ``hub_url`` (``None``: the configuration's ``[hub] db``) whose
    analyst tokens come from the gateway configuration file ``config``."""
    cfg = load_config(config)
    digests = [t.sha256 for t in cfg.tokens if t.role == "analyst"]
    if not digests:
        raise ConfigError(f"{config}: no [[tokens]] entry with role = \"analyst\": nobody could log in to the console")
    url = hub_url or cfg.hub_db
    if url is None:
        raise ConfigError("--hub is required (the configuration has no [hub] db)")
    return Console(url, analyst_digests=digests, cache=cache, schema=schema, refresh_seconds=refresh_seconds)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGINT/SIGTERM ends :func:`serve` normally: uvicorn would
        raise the signal again after its graceful shutdown, killing the process before the
        caller removes the console's temporary rollup file."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()

    return Server


def serve(console: Console, listen: str, *, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``console`` on ``listen`` (``HOST:PORT``, port 0 = any free one) until SIGINT/SIGTERM
    (then it returns, after letting requests in flight finish).

    ``ready`` is called with the address (``http://HOST:PORT``) once the socket listens.
    """
    import uvicorn

    _Server = _server_class()
    host, port = check_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"--listen {listen}: cannot listen there: {exc.strerror or exc}") from exc
    actual = sock.getsockname()[1]
    server = _Server(uvicorn.Config(console.app, log_level="warning", access_log=False, lifespan="off"))
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    console.start_refreshing()
    if ready is not None:
        ready(f"http://{shown}:{actual}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
