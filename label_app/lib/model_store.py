"""Versions of the lesion model the annotation server uses, with an atomic ``current`` pointer.

Layout of the store folder::

    versions/0001/        a slim nnU-Net model folder (plans.json, dataset.json, fold_*/, model.json)
    versions/0002/
    current -> versions/0002     symbolic link: the version inference uses
    previous -> versions/0001    symbolic link: the version before it, for rollback

:meth:`ModelStore.publish` copies a model into the next version folder (under a hidden name, renamed
when complete) and then repoints ``current`` by renaming a new link over it, an atomic step: a reader
sees the old or the new version, never a half-written one. The inference task re-reads the link on every
request, so a version published by the trainer (which runs in another process) is used from the next
request on, without a server restart. Versions are never deleted by the store.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from operators.lesion_segmentation import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["ModelStore", "ModelVersion"]

_VERSION = re.compile(r"^\d{4}$")


@dataclass(frozen=True)
class ModelVersion:
    """One published model: its version name (``0001``, ``0002``, ...) and its folder."""

    name: str
    folder: Path


class ModelStore:
    """The model versions under ``root`` (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[ModelVersion]:
        """Published versions, oldest first."""
        return [ModelVersion(p.name, p) for p in sorted(self.versions_dir.iterdir())
                if p.is_dir() and _VERSION.match(p.name)]

    def current(self) -> ModelVersion | None:
        """The version ``current`` points to, or None before the first one is published."""
        return self._pointer("current")

    def previous(self) -> ModelVersion | None:
        """The version that was current before the current one, or None."""
        return self._pointer("previous")

    def seed(self, base: str | Path) -> ModelVersion:
        """Publish the model at ``base`` (a model folder, or a folder holding one) if no version exists yet."""
        current = self.current()
        if current is not None:
            return current
        return self.publish(resolve_model_path(base))

    def publish(self, model_folder: str | Path) -> ModelVersion:
        """Copy ``model_folder`` into the next version and make it current; the old current becomes previous."""
        source = Path(model_folder)
        if not ((source / "plans.json").is_file() and (source / "dataset.json").is_file()):
            raise ValueError(f"not an nnU-Net model folder (plans.json, dataset.json): {source}")
        existing = self.versions()
        name = f"{int(existing[-1].name) + 1 if existing else 1:04d}"
        staging = self.versions_dir / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        target = self.versions_dir / name
        os.replace(staging, target)
        old = self.current()
        if old is not None:
            self._point("previous", old.name)
        self._point("current", name)
        logger.info("model version %s published%s", name, f" (previous {old.name})" if old else "")
        return ModelVersion(name, target)

    def rollback(self) -> ModelVersion:
        """Make the previous version current again (and the current one previous)."""
        current, previous = self.current(), self.previous()
        if previous is None or current is None:
            raise ValueError(f"no previous model version to roll back to in {self.root}")
        self._point("current", previous.name)
        self._point("previous", current.name)
        logger.info("model version %s is current again (rolled back from %s)", previous.name, current.name)
        return previous

    def _pointer(self, link: str) -> ModelVersion | None:
        path = self.root / link
        try:
            target = os.readlink(path)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        folder = self.versions_dir / name
        return ModelVersion(name, folder) if _VERSION.match(name) and folder.is_dir() else None

    def _point(self, link: str, version: str) -> None:
        # A new link under a temporary name, renamed over the old one: rename(2) is atomic.
        temporary = self.root / f".{link}.{os.getpid()}.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        temporary.symlink_to(Path("versions") / version)
        os.replace(temporary, self.root / link)
