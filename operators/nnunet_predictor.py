"""One way to build nnU-Net's predictor for the femur and the lesion models.

nnU-Net is imported inside the function, not at module level, so that importing the modules that
use it (e.g. for ``to_nnunet_input`` in a dataset builder) stays cheap.

nnU-Net's crop to non-zero fills the holes of each input's non-zero mask with
``scipy.ndimage.binary_fill_holes``, which floods the background one voxel layer per pass: 0.8 s of
every femur crop's 17 s on 2 CPU cores, and on a GPU a larger share, since it runs on the CPU. The
predictor's process uses :func:`operators.binary_morphology.fill_holes` there instead: the same mask,
exactly (tests/test_binary_morphology.py), from one labelling of the background.

The network's output goes back to the crop's grid by the resampling the model's plans name. nnU-Net's
default there (``resample_data_or_seg_to_shape``, linear, nearest along an anisotropic axis) runs through
SciPy on the CPU, even when the network ran on a GPU: 1.1-2.0 s of a femur crop's 16 s on 2 CPU cores.
Where the plans name exactly that default, the predictor uses nnU-Net's own torch resampling
(``resample_torch_fornnunet``, the same interpolation, the same rule for anisotropic axes) on the
predictor's device instead. Measured with the shipped model: the labels of the two femur crops of a
standard study (18 M voxels) differed in 1 voxel, those of a 3 mm-slice crop in none, and no probability
by more than 3e-4. The input's resampling, which the model was trained with, stays nnU-Net's spline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def resolve_device(device: str) -> Any:
    """The ``torch.device`` a model runs on: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    ValueError
        For another name, or a CUDA device where CUDA is not available.
    """
    import torch

    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


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
    _resample_output_with_torch(predictor, device)
    return predictor


#: nnU-Net's default resampling of the network's output, as its planners write it into plans.json.
_DEFAULT_OUTPUT_RESAMPLING = (
    "resample_data_or_seg_to_shape",
    {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
)


def _resample_output_with_torch(predictor: Any, device: Any) -> None:
    """Resample the network's output with nnU-Net's torch resampling on ``device`` (see the module docstring).

    Only a model whose plans name nnU-Net's default output resampling is changed; one that chose its own
    keeps it.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    # Only top-level entries are replaced: a shallow copy leaves the loaded plans as they are.
    configuration = dict(predictor.configuration_manager.configuration)
    named = (configuration.get("resampling_fn_probabilities"), configuration.get("resampling_fn_probabilities_kwargs"))
    if named != _DEFAULT_OUTPUT_RESAMPLING:
        return
    configuration["resampling_fn_probabilities"] = "resample_torch_fornnunet"
    configuration["resampling_fn_probabilities_kwargs"] = {
        "is_seg": False,
        "device": device,
        # nnU-Net sets torch's thread count around the export (to 8 by default); on the CPU use the cores
        # this process may run on.
        "num_threads": len(os.sched_getaffinity(0)),
        "memefficient_seg_resampling": False,
    }
    # A new manager rather than an edit: the old one caches the resampling functions it has looked up.
    predictor.configuration_manager = ConfigurationManager(configuration)


def _use_fast_hole_filling() -> None:
    """Point nnU-Net's crop to non-zero at the exact, faster hole filling (see the module docstring)."""
    from nnunetv2.preprocessing.cropping import cropping

    from operators.binary_morphology import fill_holes

    cropping.binary_fill_holes = fill_holes
