"""``python -m lesion_training``: see :mod:`lesion_training.cli`."""

import sys

from lesion_training.cli import main

if __name__ == "__main__":
    sys.exit(main())
