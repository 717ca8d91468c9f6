"""Helpers of the bad-input tests: a digest of a folder tree that leaves it untouched, and permission repair."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from synthetic_ct.bad_input import CORPUS_PATIENT

#: Strings that must never appear in a log, a message or a report: the corpus' patient identifiers and
#: the parts of its patient name.
CORPUS_TOKENS: tuple[str, ...] = tuple(
    sorted({*CORPUS_PATIENT.values(), *CORPUS_PATIENT["PatientName"].split("^"), "1907-05-23"})
)


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (not following links) with its type, mode and content hash.

    Reads regular files only (a FIFO is never opened); a file that cannot be read is recorded as such.
    Names are kept as bytes, so that names that are not UTF-8 compare exactly.
    """
    digest: dict[str, str] = {}
    base = os.fsencode(root)
    for folder, dirs, files in os.walk(base, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, base).decode("utf-8", "backslashreplace")
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                digest[relative] = f"link -> {os.readlink(path)!r}"
            elif stat.S_ISDIR(st.st_mode):
                digest[relative] = f"folder {mode:o}"
            elif stat.S_ISREG(st.st_mode):
                try:
                    with open(path, "rb") as fh:
                        content = hashlib.sha256(fh.read()).hexdigest()
                except PermissionError:
                    content = f"unreadable, {st.st_size} bytes"
                digest[relative] = f"file {mode:o} {content} {st.st_mtime_ns}"
            else:
                digest[relative] = f"special {stat.S_IFMT(st.st_mode):o} {mode:o}"
    return digest


def make_removable(root: Path) -> None:
    """Give back the owner's permissions on every folder and file under ``root`` (cases remove some)."""
    if not root.exists():
        return
    # Top-down: a folder's permissions are repaired before the walk enters it.
    for folder, dirs, files in os.walk(os.fsencode(root), followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700 if os.path.isdir(path) else 0o600)


def find_tokens(text: str | bytes, tokens: tuple[str, ...] = CORPUS_TOKENS) -> list[str]:
    """The tokens that occur in ``text`` (bytes are searched as UTF-8)."""
    if isinstance(text, bytes):
        return [t for t in tokens if t.encode("utf-8") in text]
    return [t for t in tokens if t in text]
