"""C-STORE of results to a DICOM node when the peer loses an answer or refuses an instance.

The peer is a real storage SCP on loopback (pynetdicom's): Orthanc cannot be made to drop one answer on
purpose. The first request it is sent either gets no answer within the SCU's DIMSE timeout (the handler
sleeps past it: the SCU aborts, as it does when pynetdicom's own association thread takes the answer)
or is refused with 0xA700 (out of resources).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import CTImageStorage

from gateway.loadtest import template_study
from gateway.orthanc import PacsError
from gateway.store import CStoreStore

_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five CT images of a small synthetic series."""
    return template_study(tmp_path_factory.mktemp("cstore") / "study")[::10][:5]


class _Peer:
    """A storage SCP whose first C-STORE is answered late (``"lose"``) or refused (``"refuse"``)."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.received: list[str] = []
        self.calls = 0
        self.associations = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="PEER")
        ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ESTABLISHED, self._on_association)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _on_association(self, event: evt.Event) -> None:
        with self._lock:
            self.associations += 1

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first and self.first == "refuse":
            return 0xA700
        if first and self.first == "lose":
            time.sleep(3 * _TIMEOUT_S)  # past the SCU's DIMSE timeout: it aborts and never sees this answer
            return 0x0000
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[_Peer]:
    p = _Peer(request.param)
    yield p
    p.server.shutdown()


@pytest.mark.parametrize("peer", ["lose"], indirect=True)
def test_an_instance_whose_answer_is_lost_is_sent_again_with_the_rest_on_a_new_association(
    peer: _Peer, files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    store = CStoreStore(host="127.0.0.1", port=peer.port, aet="PEER", calling_aet="FEMURSEG", timeout_s=_TIMEOUT_S)
    stored = store.store("", files)

    expected = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert stored == expected
    # The instance without an answer came again first on the second association, then the rest.
    assert peer.received == expected
    assert peer.associations == 2
    assert "no response; sending the 5 instance(s) left on a new association" in caplog.text


@pytest.mark.parametrize("peer", ["refuse"], indirect=True)
def test_a_refused_instance_is_an_error_naming_the_status_and_is_not_sent_again(
    peer: _Peer, files: list[Path]
) -> None:
    store = CStoreStore(host="127.0.0.1", port=peer.port, aet="PEER", calling_aet="FEMURSEG", timeout_s=_TIMEOUT_S)
    with pytest.raises(PacsError, match=r"C-STORE of a CT instance to PEER: status 0xA700"):
        store.store("", files)
    assert peer.associations == 1
    assert peer.received == []


@pytest.mark.parametrize("peer", ["lose"], indirect=True)
def test_answers_lost_more_often_than_the_retries_allow_are_an_error(peer: _Peer, files: list[Path]) -> None:
    store = CStoreStore(
        host="127.0.0.1", port=peer.port, aet="PEER", calling_aet="FEMURSEG", timeout_s=_TIMEOUT_S, retries=0
    )
    with pytest.raises(PacsError, match=r"C-STORE of a CT instance to PEER: no response"):
        store.store("", files)
    assert peer.associations == 1
