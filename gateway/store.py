"""Sending results (SEG, SR) back into the study in the PACS: DICOMweb STOW-RS or DICOM C-STORE.

Both keep the files' SOPInstanceUIDs. Before storing, the worker asks the store which of a job's
instances the PACS already holds (:meth:`ResultStore.present`) and sends only the others, so that an
upload repeated after a crash, a refusal or a lost answer never leaves a second copy. STOW-RS can ask
(QIDO-RS); plain C-STORE cannot, and then relies on the PACS keeping one instance per SOPInstanceUID
(as Orthanc does).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pydicom

from gateway.orthanc import OrthancClient, PacsError

logger = logging.getLogger(__name__)


def disable_nagle(association: object) -> None:
    """Send each DIMSE message at once (TCP_NODELAY) on a pynetdicom association.

    With Nagle's algorithm on, every C-STORE waits for the peer's delayed acknowledgement (about 0.1 s per
    instance, minutes for a large series); pynetdicom 3.0 has no option for it, so it is set on its socket.
    """
    sock = getattr(getattr(getattr(association, "dul", None), "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already closed: nothing to speed up
            pass


class ResultStore(Protocol):
    """Somewhere results can be stored."""

    def store(self, study_uid: str, files: Sequence[Path]) -> list[str]:
        """Store DICOM files into the study; returns their SOPInstanceUIDs; raises PacsError."""
        ...

    def present(self, study_uid: str, sop_instance_uids: Sequence[str]) -> set[str] | None:
        """Which of these instances the study in the PACS already holds; None when the store cannot
        tell. Raises PacsError."""
        ...


class StowStore:
    """STOW-RS into the DICOMweb server of an :class:`OrthancClient` (any DICOMweb server works)."""

    def __init__(self, *, client: OrthancClient) -> None:
        self.client = client

    def store(self, study_uid: str, files: Sequence[Path]) -> list[str]:
        if not files:
            return []
        return self.client.stow(study_uid, files)

    def present(self, study_uid: str, sop_instance_uids: Sequence[str]) -> set[str] | None:
        return {uid for uid in sop_instance_uids if self.client.has_instance(study_uid, uid)}


#: Seconds a C-STORE to an Orthanc on the same machine may go unanswered before it is sent again: such a
#: peer answers in milliseconds, so a lost response (see :class:`CStoreStore`) costs 20 s, not the 2 minutes
#: a remote PACS is given.
LOCAL_PEER_TIMEOUT_S = 20.0


class _NoResponse(Exception):
    """A C-STORE request that got no response: the association timed out or was aborted."""


class CStoreStore:
    """C-STORE to a DICOM node (host, port, called AE title), as calling AE title ``calling_aet``.

    An instance that gets no response at all (a lost answer, an aborted association) is sent again, with
    the ones after it, on a new association, up to ``retries`` times; the PACS keeps one instance per
    SOPInstanceUID, so a repeat never makes a copy. pynetdicom 3.0 can lose a response to its own
    association thread under heavy load (it logs "Received unexpected C-STORE service message" and waits
    out the DIMSE timeout), so this is not only for unreliable networks. A refusal (a failure status
    from the PACS) is never retried.
    """

    def __init__(
        self, *, host: str, port: int, aet: str, calling_aet: str, timeout_s: float = 120.0, retries: int = 2
    ) -> None:
        self.host, self.port, self.aet, self.calling_aet, self.timeout_s = host, port, aet, calling_aet, timeout_s
        self.retries = retries

    def store(self, study_uid: str, files: Sequence[Path]) -> list[str]:
        if not files:
            return []
        datasets = [pydicom.dcmread(path) for path in files]
        stored: list[str] = []
        for attempt in range(self.retries + 1):
            try:
                self._send(datasets[len(stored):], stored)
                return stored
            except _NoResponse as exc:
                if attempt == self.retries:
                    raise PacsError(str(exc)) from None
                logger.warning(
                    "%s; sending the %d instance(s) left on a new association", exc, len(datasets) - len(stored)
                )
        return stored  # unreachable: the loop returns or raises

    def _send(self, datasets: Sequence[pydicom.Dataset], stored: list[str]) -> None:
        """C-STORE ``datasets`` on one association, appending each stored SOPInstanceUID to ``stored``."""
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for context in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
            ae.add_requested_context(context[0], context[1])
        association = ae.associate(self.host, self.port, ae_title=self.aet)
        if not association.is_established:
            raise PacsError(f"C-STORE: no association with {self.aet} at {self.host}:{self.port}")
        disable_nagle(association)
        try:
            for ds in datasets:
                status = association.send_c_store(ds)
                if not status or "Status" not in status:
                    raise _NoResponse(f"C-STORE of a {ds.Modality} instance to {self.aet}: no response")
                code = int(status.Status)
                if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or success with warnings
                    raise PacsError(f"C-STORE of a {ds.Modality} instance to {self.aet}: status 0x{code:04X}")
                stored.append(str(ds.SOPInstanceUID))
        finally:
            if association.is_established:
                association.release()

    def present(self, study_uid: str, sop_instance_uids: Sequence[str]) -> set[str] | None:
        return None  # a C-STORE peer cannot be asked; the PACS keeps one instance per SOPInstanceUID
