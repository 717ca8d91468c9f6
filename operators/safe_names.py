"""File and folder names made from values that come from outside (DICOM tags, a PACS's ids, requests).

A value such as a SeriesInstanceUID becomes a single path component that cannot leave the folder it is
joined to: a well-formed UID (or PACS id) is kept as it is, so that names stay readable and stable;
anything else (``../../etc/x``, an absolute path, a NUL, a leading dot, more than 64 characters, non-ASCII)
is replaced by a name derived from its hash. The same value always gives the same name.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["safe_name"]

# Letters, digits, '.', '_' and '-', not starting with a dot: a UID, an Orthanc id, a plain name.
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_LENGTH = 64


def safe_name(value: object, *, prefix: str = "x") -> str:
    """``value`` as one path component that stays inside the folder it is joined to.

    Parameters
    ----------
    value
        The untrusted value (converted with ``str``).
    prefix
        Start of the name used for a value that is not kept as it is: ``<prefix>-<32 hex digits>``.

    Examples
    --------
    >>> safe_name("1.2.840.113619.2.55.3")
    '1.2.840.113619.2.55.3'
    >>> safe_name("../../etc/passwd")[:2]
    'x-'
    """
    text = str(value)
    if len(text) <= _MAX_LENGTH and _SAFE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{prefix}-{digest}"
