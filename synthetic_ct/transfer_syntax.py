"""Transfer syntaxes the writer offers, and how pixel data are encoded for each.

Uncompressed (explicit and implicit VR little endian), deflated and RLE lossless need nothing but
pydicom. JPEG-LS lossless needs ``pyjpegls``, JPEG 2000 lossless ``pylibjpeg-openjpeg``, both
through pydicom's encoders; JPEG lossless (process 14, selection value 1) has no pydicom encoder
and is written with ``imagecodecs`` where that is installed. Each is offered only if a round
trip through its encoder and pydicom's decoder returns the input exactly (checked once).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pydicom
import pydicom.uid as puid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from .config import TRANSFER_SYNTAX_NAMES, transfer_syntax_uid

logger = logging.getLogger(__name__)

#: Syntaxes whose pixel data are stored natively (no encoder involved).
NATIVE = {
    puid.ExplicitVRLittleEndian,
    puid.ImplicitVRLittleEndian,
    puid.DeflatedExplicitVRLittleEndian,
}


def _imagecodecs_jpeg():
    try:
        import imagecodecs
    except ImportError:  # optional
        return None
    if not getattr(imagecodecs, "JPEG8", None) or not imagecodecs.JPEG8.available:
        return None
    return imagecodecs


def encode_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    """Put ``stored`` (rows, columns) into ``ds`` as PixelData in ``transfer_syntax``.

    ``ds`` must already hold the Image Pixel attributes (BitsStored, PixelRepresentation...)
    and a ``file_meta``. Sets the file meta's TransferSyntaxUID.
    """
    ts = transfer_syntax_uid(transfer_syntax)
    stored = np.ascontiguousarray(stored)
    if ts in NATIVE:
        ds.PixelData = stored.astype("<" + stored.dtype.str[1:], copy=False).tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ts
        return
    if ts == puid.JPEGLosslessSV1:
        codecs = _imagecodecs_jpeg()
        if codecs is None:
            raise ValueError("JPEG lossless needs imagecodecs, which is not installed")
        bits = int(ds.BitsStored)
        # JPEG codes unsigned samples of `bits` precision: signed values go in as their
        # two's-complement bit pattern, which decoders turn back using PixelRepresentation.
        raw = stored.view(np.uint16) & np.uint16((1 << bits) - 1)
        frame = codecs.jpeg8_encode(raw, lossless=True, predictor=1, bitspersample=bits)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = ts
        return
    kwargs = {}
    ds.compress(ts, arr=stored, generate_instance_uid=False, **kwargs)


@functools.lru_cache(maxsize=1)
def available_transfer_syntaxes() -> dict[str, str]:
    """Transfer syntaxes (name -> UID) that encode and decode back exactly in this environment."""
    out = {}
    for name, uid in TRANSFER_SYNTAX_NAMES.items():
        if _round_trip_ok(uid):
            out[name] = uid
        else:
            logger.debug("transfer syntax %s (%s) not available here", name, uid)
    return out


def _round_trip_ok(uid: str) -> bool:
    rng = np.random.default_rng(0)
    for signed, bits in ((True, 16), (False, 12)):
        ds = Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.Rows, ds.Columns = 64, 48
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        if signed:
            arr = rng.integers(-3024, 3072, size=(64, 48)).astype(np.int16)
        else:
            arr = rng.integers(0, 4096, size=(64, 48)).astype(np.uint16)
        try:
            encode_pixels(ds, arr, uid)
            back = _decode(ds)
        except Exception as exc:  # any missing plugin or codec failure means "not offered"
            logger.debug("round trip of %s failed: %s", uid, exc)
            return False
        if back.dtype != arr.dtype or not np.array_equal(back, arr):
            return False
    return True


def _decode(ds: Dataset) -> np.ndarray:
    """Decode through a real file write and read, as a consumer would."""
    import io

    buf = io.BytesIO()
    ds.SOPClassUID = puid.CTImageStorage
    ds.SOPInstanceUID = puid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf).pixel_array
