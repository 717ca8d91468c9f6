"""One way to build nnU-Net's predictor for the femur and the lesion models.

nnU-Net is imported inside the function, not at module level, so that importing the modules that
use it (e.g. for ``to_nnunet_input`` in a dataset builder) stays cheap.
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
