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
by more than 3e-4.

The input's resampling to the model's spacing is a choice (``input_resampling``). ``"plans"`` keeps what
the plans name, nnU-Net's default cubic spline through SciPy on the CPU, with which the model was trained:
about 3 s of a standard femur crop's 9 s on 2 CPU cores, and most of a femur's time on a GPU. ``"torch"``
uses nnU-Net's torch resampling on the predictor's device (linear, with the same rule for anisotropic axes)
for the image and for its non-zero mask, where the plans name nnU-Net's defaults. Linear is not the spline
the model saw in training, so labels change at lesion borders; on the shipped model's 20 held-out femurs
the mean lesion Dice was the same (0.398 against 0.394) and each femur took a third less time
(docs/benchmarks/README.md). The lesion model uses ``"torch"`` unless told otherwise; a femur model,
``"plans"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Values of ``input_resampling``: the model's plans as they are, or nnU-Net's torch resampling.
INPUT_RESAMPLING_CHOICES = ("plans", "torch")


def check_input_resampling(value: str) -> None:
    """Raise ValueError naming the choices when ``value`` is not one of :data:`INPUT_RESAMPLING_CHOICES`."""
    if value not in INPUT_RESAMPLING_CHOICES:
        raise ValueError(f"input_resampling must be one of {', '.join(INPUT_RESAMPLING_CHOICES)}, got {value!r}")


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
    input_resampling: str = "plans",
) -> Any:
    """An initialised ``nnUNetPredictor`` for the trained model in ``folder``.

    Gaussian patch weighting as nnU-Net's default; the whole pipeline stays on the device only on
    CUDA (on a CPU, nnU-Net's own device handling is the faster path). ``input_resampling`` is
    ``"plans"`` or ``"torch"`` (see the module docstring). Loading errors are nnU-Net's own; callers
    turn them into messages about their model.
    """
    check_input_resampling(input_resampling)
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
    _resample_with_torch(predictor, device, _OUTPUT_RESAMPLING)
    if input_resampling == "torch":
        _resample_with_torch(predictor, device, _INPUT_RESAMPLING)
    return predictor


#: nnU-Net's default resamplings, as its planners write them into plans.json: per configuration entry,
#: (function name, keyword arguments) and whether it resamples a label map (``is_seg``).
_OUTPUT_RESAMPLING = {
    "resampling_fn_probabilities": (
        ("resample_data_or_seg_to_shape", {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}),
        False,
    ),
}
_INPUT_RESAMPLING = {
    # The image, and the non-zero mask nnU-Net's crop to non-zero derives from it (0 inside, -1 outside).
    "resampling_fn_data": (
        ("resample_data_or_seg_to_shape", {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}),
        False,
    ),
    "resampling_fn_seg": (
        ("resample_data_or_seg_to_shape", {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}),
        True,
    ),
}


def _resample_with_torch(predictor: Any, device: Any, entries: dict[str, tuple[tuple[str, dict], bool]]) -> None:
    """Point the plans' ``entries`` at nnU-Net's torch resampling on ``device`` (see the module docstring).

    Only an entry that names nnU-Net's default (function and keyword arguments) is changed; a model
    that chose its own resampling keeps it.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    # Only top-level entries are replaced: a shallow copy leaves the loaded plans as they are.
    configuration = dict(predictor.configuration_manager.configuration)
    changed = False
    for key, (default, is_seg) in entries.items():
        if (configuration.get(key), configuration.get(key + "_kwargs")) != default:
            continue
        configuration[key] = "resample_torch_fornnunet"
        configuration[key + "_kwargs"] = {
            "is_seg": is_seg,
            "device": device,
            # nnU-Net sets torch's thread count around the resampling (to 4 or 8 by default); on the CPU
            # use the cores this process may run on.
            "num_threads": len(os.sched_getaffinity(0)),
            "memefficient_seg_resampling": False,
        }
        changed = True
    if changed:
        # A new manager rather than an edit: the old one caches the resampling functions it has looked up.
        predictor.configuration_manager = ConfigurationManager(configuration)


def _use_fast_hole_filling() -> None:
    """Point nnU-Net's crop to non-zero at the exact, faster hole filling (see the module docstring)."""
    from nnunetv2.preprocessing.cropping import cropping

    from operators.binary_morphology import fill_holes

    cropping.binary_fill_holes = fill_holes
