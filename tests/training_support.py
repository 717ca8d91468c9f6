"""What the training tests share: nnU-Net's ``small`` configuration shrunk to a few seconds of training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lesion_training import configurations


@contextmanager
def smoke_small_configuration() -> Iterator[configurations.TrainingConfiguration]:
    """Within the block, the ``small`` configuration trains 2 epochs of 3 iterations on a 4-16 feature net.

    A real nnU-Net training through the project's commands, small enough for a test on 2 CPU cores.
    """
    smoke = configurations.SMALL.replace(num_epochs=2, iterations_per_epoch=3, val_iterations_per_epoch=1,
                                         base_features=4, max_features=16)
    patch = pytest.MonkeyPatch()
    patch.setitem(configurations.CONFIGURATIONS, "small", smoke)
    try:
        yield smoke
    finally:
        patch.undo()
