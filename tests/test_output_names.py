"""Names of files and folders made from DICOM values cannot leave the folder they are written in.

The application's outputs have fixed names (seg.dcm, sr.dcm, ...; tests/test_bad_input_app.py runs it
on a study whose SeriesDescription is ``../../../etc/passwd``). Where a name does come from a DICOM value
(the gateway's spool: ``<study>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; its Orthanc downloads; the
annotation server's label files) it goes through :func:`operators.safe_names.safe_name`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from gateway.config import ReceiveSettings
from gateway.jobs import JobQueue
from gateway.rules import SeriesRules
from gateway.scp import Receiver
from gateway.worker import _link_series
from operators.safe_names import safe_name
from synthetic_ct.bad_input import write_series

HOSTILE = ["../../etc/passwd", "/etc/passwd", "..", ".", "", "a/b", "a\\..\\b", "x\x00y", "1.2.3/../../4",
           "a" * 65, ".hidden", "Hüfte", "~root", "con\n", "\udcff"]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v)[:20] for v in HOSTILE])
def test_hostile_values_become_one_harmless_component(value: str, tmp_path: Path) -> None:
    name = safe_name(value)
    assert name == safe_name(value)  # stable
    assert name and len(name) <= 64 and not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name and name.isascii()
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert safe_name(value + "x") != name


@pytest.mark.parametrize("value", ["1.2.840.113619.2.55.3.604688119.969.1268071029.320",
                                   "2.25.123456789", "0ab3f1c2-9a1b2c3d-00112233-44556677-8899aabb"])
def test_uids_and_pacs_ids_keep_their_name(value: str) -> None:
    assert safe_name(value) == value


class _Event:
    """What the receiver's C-STORE handler reads from pynetdicom's event."""

    def __init__(self, ds: pydicom.Dataset) -> None:
        self.dataset = ds
        self.file_meta = ds.file_meta
        self.assoc = SimpleNamespace()

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        from io import BytesIO

        buffer = BytesIO()
        self.dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def test_the_receiver_spools_hostile_uids_inside_the_spool(tmp_path: Path) -> None:
    (source,) = write_series(tmp_path / "sent", n_slices=1)
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = "../../../outside"
    ds.SOPInstanceUID = "/tmp/evil"
    spool = tmp_path / "spool"
    with JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        receiver = Receiver(settings=ReceiveSettings(port=0, spool=spool), queue=queue, rules=SeriesRules())
        assert receiver._on_store(_Event(ds)) == 0  # type: ignore[arg-type]
    written = [Path(folder) / name for folder, _, names in os.walk(tmp_path) for name in names]
    outside = [p for p in written if spool not in p.parents and tmp_path / "sent" not in p.parents
               and p.name != "jobs.sqlite" and not p.name.startswith("jobs.sqlite")]
    assert outside == []
    (spooled,) = [p for p in written if spool in p.parents]
    assert spooled.parent.name == safe_name("../../../outside") and spooled.name == f"{safe_name('/tmp/evil')}.dcm"

    # The worker finds the series folder under the same name and links its files into the job's input.
    input_dir = tmp_path / "job" / "input"
    input_dir.parent.mkdir()
    assert _link_series(spooled.parent.parent, input_dir, {"../../../outside"}) == 1
    assert [p.parent for p in input_dir.rglob("*.dcm")] == [input_dir / safe_name("../../../outside")]


def test_the_annotation_server_refuses_a_series_id_that_is_a_path() -> None:
    datastore = pytest.importorskip("label_app.lib.dicomweb_datastore")
    assert datastore._series_id("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
    for value in ("../../etc", "/abs", "a/b"):
        with pytest.raises(ValueError, match="not a series id"):
            datastore._series_id(value)
