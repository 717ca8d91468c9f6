"""``python -m synthetic_ct``: see :mod:`synthetic_ct.cli`."""

from .cli import main

raise SystemExit(main())
