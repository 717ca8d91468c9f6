"""Synthetic lower-body CT studies with femur, lytic-lesion and cyst ground truth.

No public CT of femoral tumours exists, so these studies are the product's test, demo and
training data. A study is drawn from a seed: anatomy (pelvis, both femurs head to knee, knees,
soft tissues, table), lesions, scanner set-up and DICOM headers all vary with it.

>>> from synthetic_ct import generate_phantom, write_study
>>> phantom = generate_phantom(3, "small")            # doctest: +SKIP
>>> study = write_study(phantom, out_dir)              # doctest: +SKIP
"""

from .config import PRESETS, PhantomConfig
from .phantom import LABELS, SyntheticPhantom, generate_phantom

__all__ = ["PRESETS", "LABELS", "PhantomConfig", "SyntheticPhantom", "generate_phantom", "write_study", "WrittenStudy"]


def __getattr__(name: str):
    # The DICOM writer imports pydicom's encoders; load it only when asked for.
    if name in ("write_study", "WrittenStudy", "WrittenSeries"):
        from . import writer

        return getattr(writer, name)
    raise AttributeError(name)
