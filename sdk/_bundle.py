"""Bundle verification and the on-disk bundle store (stage → verify → commit / rollback).

PLACEHOLDER: implemented by the foundation work (issue 2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._clock import Clock
from ._types import BundleInfo


@dataclass(frozen=True, slots=True)
class StagedBundle:
    directory: Path
    manifest: Mapping[str, Any]
    info: BundleInfo


def load_trusted_keys(keys: Iterable[bytes | str | os.PathLike[str]]) -> list[Any]:
    return list(keys)


class BundleStore:
    def __init__(self, root: Path, *, trusted_keys: list[Any], clock: Clock) -> None:
        self.root = root
        self.trusted_keys = trusted_keys
        self.clock = clock

    def active(self) -> StagedBundle | None:
        return None

    def previous(self) -> StagedBundle | None:
        return None

    def stage(self, path: Path, *, force: bool) -> StagedBundle:
        raise NotImplementedError

    def commit(self, staged: StagedBundle) -> BundleInfo:
        raise NotImplementedError

    def discard(self, staged: StagedBundle) -> None:
        raise NotImplementedError

    def rollback(self) -> BundleInfo:
        raise NotImplementedError
