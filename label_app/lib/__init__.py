"""The MONAI Label app's modules (imported as ``lib`` by MONAI Label, or as ``label_app.lib``).

Importing the package makes pydicom-seg importable under pydicom 3 (see ``pythonpath/sitecustomize.py``,
which does the same for the server process before MONAI Label imports it).
"""

import sys

try:
    import pydicom._storage_sopclass_uids  # noqa: F401 - pydicom 2 has it
except ImportError:
    import pydicom.uid

    sys.modules["pydicom._storage_sopclass_uids"] = pydicom.uid
