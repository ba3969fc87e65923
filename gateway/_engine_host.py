"""The gateway's own engine: one active :class:`LoadedBundle` reference, swapped atomically.

The same install path as a device (``sdk._bundle.BundleStore`` verifies and extracts,
``sdk._runtime.load_bundle`` loads and warms the ONNX sessions *before* the switch), kept under
``STATE/engine-bundles``. A ``Decide`` grabs :attr:`EngineHost.active` once and uses only that
object, so a call in flight during a switch finishes on the old bundle and no call fails; the
switch itself is one reference assignment.

Installs are serialised by a lock (``BundleStore`` sweeps staging directories on commit, so two
concurrent installs must not interleave).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from nbo.sdk import BundleError, BundleInfo, Clock, NboError, NotReadyError, SystemClock
from nbo.sdk.core import (
    BundleStore,
    LoadedBundle,
    StagedBundle,
    load_bundle,
    load_trusted_keys,
    stage_and_load,
)

__all__ = ["EngineHost"]

log = logging.getLogger("nbo.gateway.engine")


class EngineHost:
    """Holds the bundle the gateway decides with and installs new ones without a pause."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        trusted_keys: Iterable[bytes | str | os.PathLike[str]],
        clock: Clock | None = None,
        on_switch: Callable[[BundleInfo], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.clock: Clock = clock or SystemClock()
        self._store = BundleStore(self.root, trusted_keys=load_trusted_keys(list(trusted_keys)), clock=self.clock)
        # Re-entrant: a publish holds it across stage → register → switch, because a commit
        # sweeps every bundle directory that is neither active nor previous.
        self._lock = threading.RLock()
        self._on_switch = on_switch
        self._active: LoadedBundle | None = None
        current = self._store.active()
        if current is not None:
            try:
                self._active = load_bundle(current.directory, current.manifest, current.info)
            except NboError as exc:
                # A bundle that no longer loads must not keep the gateway down: serve none, say why.
                log.error("event=engine_bundle_unloadable detail=%s", exc)
            else:
                self._notify(self._active.info)

    def exclusive(self) -> threading.RLock:
        """The install lock, for a caller that must stage and switch without interleaving."""
        return self._lock

    @property
    def active(self) -> LoadedBundle | None:
        """The bundle in service now (``None`` before the first install). Read it once per call."""
        return self._active

    def require(self) -> LoadedBundle:
        """The active bundle, or :class:`NotReadyError` when none is installed."""
        active = self._active
        if active is None:
            raise NotReadyError("the gateway has no bundle installed yet: publish one with `nbo publish`")
        return active

    def stage(self, path: str | os.PathLike[str]) -> tuple[StagedBundle, LoadedBundle]:
        """Verify, extract and load a bundle without switching to it.

        The signature is checked against the trusted keys; version ordering is the caller's
        decision (the hub's registry is the authority for that), so this stages with ``force``.
        Any failure leaves nothing behind and raises :class:`BundleError`.
        """
        with self._lock:
            return stage_and_load(self._store, Path(path), force=True)

    def discard(self, staged: StagedBundle) -> None:
        """Throw away a staged bundle that will not be switched to."""
        with self._lock:
            self._store.discard(staged)

    def switch(self, staged: StagedBundle, loaded: LoadedBundle) -> BundleInfo:
        """Make a staged and loaded bundle the active one (pointer flip, then reference swap)."""
        with self._lock:
            info = self._store.commit(staged)
            self._active = replace(loaded, info=info)
        log.info("event=engine_switched bundle=%s version=%d", info.name, info.version)
        self._notify(info)
        return info

    def install(self, path: str | os.PathLike[str]) -> BundleInfo:
        """Stage, load and switch in one step (for bundles already accepted by the registry)."""
        staged, loaded = self.stage(path)
        return self.switch(staged, loaded)

    def refresh(self, latest: tuple[str, int, Path] | None) -> BundleInfo | None:
        """Switch to ``latest`` (name, version, file) when it is newer than the active bundle.

        Replicas sharing one hub call this periodically so that a bundle published to any of
        them ends up in every engine; a file not present on this replica's disk is skipped.
        """
        if latest is None:
            return None
        name, version, path = latest
        active = self._active
        if active is not None and active.info.name == name and active.info.version >= version:
            return None
        if not path.exists():
            return None
        try:
            with self._lock:
                active = self._active  # re-check: a publish may have switched meanwhile
                if active is not None and active.info.name == name and active.info.version >= version:
                    return None
                return self.install(path)
        except BundleError as exc:
            log.warning("event=engine_refresh_failed bundle=%s version=%d detail=%s", name, version, exc)
            return None

    def _notify(self, info: BundleInfo) -> None:
        if self._on_switch is not None:
            self._on_switch(info)
