"""``python -m map_packaging``: see :mod:`map_packaging.cli`."""

import sys

from map_packaging.cli import main

if __name__ == "__main__":
    sys.exit(main())
