"""Entry point: ``python -m app ...`` from the repository root, or ``python app ...`` (a MAP runs
``python3 /opt/holoscan/app``). See :mod:`app.cli` for the arguments, streams and exit status."""

import os
import sys

if not __package__:
    # Run as a folder: Python put this folder first on sys.path, where this package's own app.py would
    # shadow the package "app". Import the package from the folder's parent; the folder stays on the
    # path after it, for modules shipped inside it.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(_here))
    del _here

from app.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
