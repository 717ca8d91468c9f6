"""One way to build nnU-Net's predictor for the femur and the lesion models.

nnU-Net is imported inside the function, not at module level, so that importing the modules that
use it (e.g. for ``to_nnunet_input`` in a dataset builder) stays cheap.

nnU-Net's crop to non-zero fills the holes of each input's non-zero mask with
``scipy.ndimage.binary_fill_holes``, which floods the background one voxel layer per pass: 0.8 s of
every femur crop's 17 s on 2 CPU cores, and on a GPU a larger share, since it runs on the CPU. The
predictor's process uses :func:`operators.binary_morphology.fill_holes` there instead: the same mask,
exactly (tests/test_binary_morphology.py), from one labelling of the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_predictor(
    folder: Path,
    *,
    device: Any,
    folds: Sequence[int | str],
    checkpoint_name: str,
    use_mirroring: bool,
    tile_step_size: float,
) -> Any:
    """An initialised ``nnUNetPredictor`` for the trained model in ``folder``.

    Gaussian patch weighting as nnU-Net's default; the whole pipeline stays on the device only on
    CUDA (on a CPU, nnU-Net's own device handling is the faster path). Loading errors are nnU-Net's
    own; callers turn them into messages about their model.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    _use_fast_hole_filling()
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds, checkpoint_name=checkpoint_name)
    return predictor


def _use_fast_hole_filling() -> None:
    """Point nnU-Net's crop to non-zero at the exact, faster hole filling (see the module docstring)."""
    from nnunetv2.preprocessing.cropping import cropping

    from operators.binary_morphology import fill_holes

    cropping.binary_fill_holes = fill_holes
