"""Folders written whole: built under a temporary name beside the destination, then renamed into place,
so that an interrupted build never leaves a half-written folder where a complete one is expected."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["partial_folder", "replace_folder"]


def partial_folder(destination: Path) -> Path:
    """A fresh, empty temporary folder beside ``destination`` (same file system, so renaming is atomic)."""
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial


def replace_folder(partial: Path, destination: Path) -> None:
    """Put the complete folder ``partial`` in place of ``destination`` (replacing an earlier one)."""
    if destination.exists():
        old = destination.with_name(f".{destination.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        destination.rename(old)
        partial.rename(destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(destination)
    logger.debug("wrote %s", destination)
