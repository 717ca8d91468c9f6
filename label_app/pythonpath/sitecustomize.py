"""Loaded by Python at start-up when this folder is on PYTHONPATH (the annotation server sets it so).

``monailabel start_server`` imports pydicom-seg before it loads the application, and pydicom-seg 0.4
imports ``pydicom._storage_sopclass_uids``, a module pydicom 3 no longer has. Its names (SOP class UIDs
such as ``SegmentationStorage``) all live in ``pydicom.uid``, so that module stands in for it.
"""

import sys

try:
    import pydicom._storage_sopclass_uids  # noqa: F401 - present in pydicom 2: nothing to do
except ImportError:
    try:
        import pydicom.uid

        sys.modules["pydicom._storage_sopclass_uids"] = pydicom.uid
    except ImportError:  # pydicom not installed: nothing to alias
        pass
