"""Run a trained nnU-Net lesion model on a femur-only crop.

This is the one place where a femur-only CT crop meets nnU-Net, for the MONAI Deploy application,
the MONAI Label application and the evaluation of trained models alike. It holds two things:

- :func:`to_nnunet_input` brings a crop, whatever its orientation, to the canonical **HPL** patient
  orientation (axis 0 towards the Head, axis 1 towards Posterior, axis 2 towards the patient's Left)
  by permuting and flipping axes only, and :meth:`NnUNetInput.to_original` undoes that exactly. The
  training dataset writer goes through the same function, so a model sees every femur in the same
  orientation in training and at inference (nnU-Net itself never reorients).
- :class:`LesionModel` loads an nnU-Net trained-model folder (or nnU-Net's exported zip) and predicts
  lesion labels in the crop's *original* voxel grid with ``nnUNetPredictor.predict_single_npy_array``.

Label values are those of the nnU-Net lesion datasets: 0 background, 1 lytic lesion, 2 cyst (only
in models trained with cysts as their own class); ``LesionModel.model_info.label_names`` says which.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np

from operators.errors import InputError, ModelFolderError
from operators.lesion_postprocessing import min_lesion_volume_ml, remove_small_components
from operators.nnunet_predictor import check_input_resampling, load_predictor, resolve_device

logger = logging.getLogger(__name__)

#: Patient orientation of every array handed to nnU-Net (see docs/CONVENTIONS.md).
CANONICAL_ORIENTATION = "HPL"

#: Optional file beside plans.json that names and versions a model (written by the training export).
MODEL_INFO_FILE = "model.json"

_UNVERSIONED = "unversioned"

#: How crops are resampled to the model's spacing unless asked otherwise (see operators.nnunet_predictor).
DEFAULT_INPUT_RESAMPLING = "torch"
#: nnU-Net's sliding-window step, a fraction of the patch: patches overlap by half.
DEFAULT_TILE_STEP = 0.5


# --------------------------------------------------------------------------------------------------
# Orientation: crop <-> canonical HPL array
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NnUNetInput:
    """A femur-only crop as nnU-Net takes it, and the way back to the crop's grid.

    Attributes
    ----------
    array : np.ndarray
        float32, shape (1, z, y, x): the single input channel (HU, 0 outside the femur) in the
        canonical HPL orientation.
    spacing : tuple of float
        Voxel spacing (sz, sy, sx) in mm, in the same axis order as ``array`` (nnU-Net's
        ``{'spacing': [sz, sy, sx]}``).
    affine : np.ndarray
        4x4 affine of the canonical grid, from index (z, y, x) to LPS patient coordinates in mm.
    original_shape : tuple of int
        Spatial shape (z, y, x) of the crop as it was given.
    permutation : tuple of int
        ``permutation[j]`` is the axis of the original crop that became canonical axis ``j``.
    flipped_axes : tuple of int
        Axes of the original crop that were reversed (applied before the permutation).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    original_shape: tuple[int, int, int]
    permutation: tuple[int, int, int]
    flipped_axes: tuple[int, ...]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Spatial shape (z, y, x) of the canonical array."""
        return tuple(int(n) for n in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def nnunet_properties(self) -> dict[str, list[float]]:
        """The image properties nnU-Net's ``predict_single_npy_array`` asks for."""
        return {"spacing": [float(s) for s in self.spacing]}

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Map an array on the crop's original grid to the canonical HPL grid.

        Parameters
        ----------
        array : np.ndarray
            Trailing axes (z, y, x) of shape ``original_shape``; leading axes (e.g. classes) are kept.

        Returns
        -------
        np.ndarray
            Contiguous array with trailing axes of shape ``canonical_shape``, same dtype.
        """
        lead = _check_trailing_shape(array, self.original_shape, "original")
        if self.flipped_axes:
            array = np.flip(array, axis=tuple(lead + a for a in self.flipped_axes))
        axes = list(range(lead)) + [lead + a for a in self.permutation]
        return np.ascontiguousarray(np.transpose(array, axes))

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Map an array on the canonical HPL grid back to the crop's original grid, exactly.

        Parameters
        ----------
        array : np.ndarray
            Trailing axes (z, y, x) of shape ``canonical_shape`` (e.g. a label map, or class
            probabilities (c, z, y, x)); leading axes are kept.

        Returns
        -------
        np.ndarray
            Contiguous array with trailing axes of shape ``original_shape``, same dtype.
        """
        lead = _check_trailing_shape(array, self.canonical_shape, "canonical")
        inverse = np.argsort(self.permutation)
        array = np.transpose(array, list(range(lead)) + [lead + int(a) for a in inverse])
        if self.flipped_axes:
            array = np.flip(array, axis=tuple(lead + a for a in self.flipped_axes))
        return np.ascontiguousarray(array)


def to_nnunet_input(volume: hd.Volume) -> NnUNetInput:
    """Bring a femur-only crop to the canonical HPL orientation for nnU-Net.

    Only axes are permuted and flipped (``Volume.to_patient_orientation("HPL")``): no voxel is
    resampled, so :meth:`NnUNetInput.to_original` restores the original grid exactly.

    Parameters
    ----------
    volume : highdicom.Volume
        Femur-only crop in the patient coordinate system: a single-channel 3D array (z, y, x) of HU
        with 0 outside the femur, any orientation.

    Returns
    -------
    NnUNetInput
        The (1, z, y, x) float32 array, spacing (sz, sy, sx) in mm and the mapping back.

    Raises
    ------
    InputError
        If the volume is not a 3D single-channel patient-space volume of finite values.
    """
    _check_volume(volume)
    canonical = volume.to_patient_orientation(CANONICAL_ORIENTATION)
    permutation, flipped = _axis_mapping(volume.affine, canonical.affine)
    array = np.ascontiguousarray(canonical.array, dtype=np.float32)[np.newaxis]
    return NnUNetInput(
        array=array,
        spacing=tuple(float(s) for s in canonical.spacing),  # type: ignore[arg-type]
        affine=np.array(canonical.affine, dtype=np.float64),
        original_shape=tuple(int(n) for n in volume.spatial_shape),  # type: ignore[arg-type]
        permutation=permutation,
        flipped_axes=flipped,
    )


def _check_volume(volume: hd.Volume) -> None:
    if not isinstance(volume, hd.Volume):
        raise InputError(f"expected a highdicom.Volume femur crop, got {type(volume).__name__}")
    if volume.coordinate_system != hd.CoordinateSystemNames.PATIENT:
        raise InputError("femur crop is not in the patient coordinate system")
    if volume.number_of_channel_dimensions != 0 or volume.array.ndim != 3:
        raise InputError(f"femur crop must be a single-channel 3D volume, got array shape {volume.array.shape}")
    if min(volume.spatial_shape) < 1:
        raise InputError(f"femur crop is empty, shape {volume.spatial_shape}")
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise InputError(f"femur crop must hold real numbers (HU), got dtype {volume.dtype}")
    if np.issubdtype(volume.dtype, np.floating) and not np.isfinite(volume.array).all():
        raise InputError("femur crop holds NaN or infinite values")


def _axis_mapping(
    original_affine: np.ndarray, canonical_affine: np.ndarray
) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    # Read the permutation and flips off the two affines rather than re-deriving highdicom's
    # choice: index_canonical = M @ index_original, with M a signed permutation.
    mapping = np.linalg.solve(canonical_affine, original_affine)[:3, :3]
    rounded = np.rint(mapping)
    if not np.allclose(mapping, rounded, atol=1e-3) or sorted(np.abs(rounded).sum(axis=1)) != [1, 1, 1]:
        raise InputError("femur crop could not be brought to HPL orientation by permuting and flipping axes")
    permutation = tuple(int(np.flatnonzero(row)[0]) for row in rounded)
    flipped = tuple(sorted(p for j, p in enumerate(permutation) if rounded[j, p] < 0))
    return permutation, flipped  # type: ignore[return-value]


def _check_trailing_shape(array: np.ndarray, expected: tuple[int, ...], grid: str) -> int:
    array = np.asarray(array)
    if array.ndim < 3 or tuple(array.shape[-3:]) != tuple(expected):
        raise ValueError(f"array of shape {array.shape} does not end in the {grid} grid's shape {expected}")
    return array.ndim - 3


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionModelInfo:
    """What identifies a loaded model, e.g. for a DICOM-SEG's algorithm identification.

    Attributes
    ----------
    name, version : str
        From the model folder's ``model.json`` when present; otherwise the nnU-Net dataset name
        and ``"unversioned"``.
    configuration : str
        nnU-Net configuration the model was trained as (e.g. ``3d_fullres``).
    trainer : str
        Trainer class used for training (``model.json``), else the one named by the checkpoint.
    plans : str
        nnU-Net plans identifier.
    folds : tuple
        Folds whose weights are ensembled (ints, or ``"all"``).
    label_names : dict of int to str
        Label value to name, background included (from the model's dataset.json).
    extra : dict
        The whole model.json (empty without one): training command and date, validation Dice, ...
    """

    name: str
    version: str
    configuration: str
    trainer: str
    plans: str
    folds: tuple[int | str, ...]
    label_names: dict[int, str]
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class LesionPrediction:
    """A model's output on one femur crop, in the crop's original voxel grid.

    Attributes
    ----------
    labels : np.ndarray
        uint8, shape (z, y, x) of the input crop: 0 background, 1 lytic lesion (2 cyst where the
        model has that class).
    probabilities : np.ndarray or None
        float32, shape (classes, z, y, x), class order as ``LesionModelInfo.label_names``; only
        when asked for. nnU-Net's post-processing (if any) is not applied to them.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None


class LesionModel:
    """A trained nnU-Net lesion model, ready to predict on femur-only crops.

    Build it with :meth:`from_folder`; then call :meth:`predict` once per femur crop. The weights of
    all selected folds are held in memory; nothing is read from the folder after loading.
    """

    def __init__(self, predictor: Any, info: LesionModelInfo, postprocessing: tuple[list, list] | None, *,
                 min_lesion_volume_ml: float = 0.0) -> None:
        # Built by from_folder: an initialised nnUNetPredictor, nnU-Net's post-processing (functions,
        # keyword arguments) or None, and the model's smallest lesion kept (ml; 0 keeps all).
        self._predictor = predictor
        self._info = info
        self._postprocessing = postprocessing
        self._min_lesion_volume_ml = float(min_lesion_volume_ml)
        names = {str(name).strip().casefold(): value for value, name in info.label_names.items()}
        self._lesion_value = int(names.get("lesion", 1))
        # One prediction at a time: the warm-up thread and the callers share one nnUNetPredictor.
        self._predict_lock = threading.Lock()
        self._warm_up_thread: threading.Thread | None = None

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        folds: Sequence[int | str] | None = None,
        checkpoint: str = "checkpoint_final.pth",
        use_mirroring: bool = True,
        tile_step_size: float = DEFAULT_TILE_STEP,
        apply_postprocessing: bool = True,
        input_resampling: str = DEFAULT_INPUT_RESAMPLING,
        warm_up: bool | None = None,
    ) -> LesionModel:
        """Load a model from an nnU-Net trained-model folder or an exported zip.

        Parameters
        ----------
        path : str or Path
            A folder with ``plans.json``, ``dataset.json`` and ``fold_k/<checkpoint>`` (nnU-Net's
            ``Trainer__Plans__configuration`` results folder, or the slim folder the training export
            writes), or a zip holding one such folder (``nnUNetv2_export_model_to_zip`` format).
        device : str
            ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. On CUDA the
            whole sliding-window prediction stays on the device.
        folds : sequence of int or "all", optional
            Folds to ensemble; default: every ``fold_k`` with the checkpoint (``fold_all`` only when it
            is the only one).
        checkpoint : str
            Checkpoint file name inside each fold folder.
        use_mirroring : bool
            Test-time mirroring along the axes the model was trained with (up to 8 passes in 3D:
            better, and up to 8x slower).
        tile_step_size : float
            Sliding-window step as a fraction of the patch size (0.5 = nnU-Net's default overlap).
        apply_postprocessing : bool
            Apply the post-processing nnU-Net chose on cross-validation (``postprocessing.pkl``
            beside plans.json), when the folder holds one, and drop lesion components smaller than
            the model's ``model.json`` declares (``postprocessing.min_lesion_volume_ml``).
        input_resampling : str
            How the crop is resampled to the model's spacing: ``"torch"`` (the default: nnU-Net's
            linear torch resampling on the model's device) or ``"plans"`` as the model's plans say
            (nnU-Net's cubic spline on the CPU, as in training); see :mod:`operators.nnunet_predictor`.
        warm_up : bool or None
            Start :meth:`start_warm_up` at once. None (the default) does so on CUDA only, where the
            first prediction otherwise pays seconds of one-off device costs; on a CPU the warm-up
            would only take cores from the work that runs beside it.

        Raises
        ------
        ModelFolderError
            If the path, plans.json, dataset.json or a fold's checkpoint is missing, the zip holds no
            single model, or nnU-Net cannot build the network the checkpoint names.
        """
        if not 0.0 < tile_step_size <= 1.0:
            raise ValueError(f"tile_step_size must be in (0, 1], got {tile_step_size}")
        check_input_resampling(input_resampling)  # before anything is loaded
        torch_device = resolve_device(device)
        path = Path(path)
        if not path.exists():
            raise ModelFolderError(f"lesion model not found: {path}")
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise ModelFolderError(f"lesion model is neither a folder nor a zip archive: {path}")
            # Everything is read into memory while loading, so the extracted copy can go at once.
            with tempfile.TemporaryDirectory(prefix="lesion-model-") as tmp:
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(tmp)
                folder = _find_model_folder_in(Path(tmp), archive_name=path.name)
                model = cls._load(folder, torch_device, folds, checkpoint, use_mirroring, tile_step_size,
                                  apply_postprocessing, input_resampling, source=path)
        else:
            model = cls._load(path, torch_device, folds, checkpoint, use_mirroring, tile_step_size,
                              apply_postprocessing, input_resampling, source=path)
        if warm_up or (warm_up is None and torch_device.type == "cuda"):
            model.start_warm_up()
        return model

    @classmethod
    def _load(
        cls,
        folder: Path,
        device: Any,
        folds: Sequence[int | str] | None,
        checkpoint: str,
        use_mirroring: bool,
        tile_step_size: float,
        apply_postprocessing: bool,
        input_resampling: str,
        *,
        source: Path,
    ) -> LesionModel:
        folds = _check_model_folder(folder, folds, checkpoint)
        try:
            predictor = load_predictor(folder, device=device, folds=folds, checkpoint_name=checkpoint,
                                       use_mirroring=use_mirroring, tile_step_size=tile_step_size,
                                       input_resampling=input_resampling)
        except Exception as error:  # noqa: BLE001 - any failure to load is a problem with the model folder
            if "Could not find requested nnunet trainer" in str(error):
                raise ModelFolderError(
                    f"lesion model {source}: its checkpoint names a trainer class nnU-Net cannot find; "
                    "use the slim export of the training pipeline or set nnUNet_extTrainer"
                ) from error
            # E.g. a truncated download, or a Git LFS pointer committed instead of the weights.
            detail = (str(error).strip().splitlines() or [""])[0]
            raise ModelFolderError(
                f"lesion model {source} cannot be loaded: {type(error).__name__}: {detail}"
            ) from error

        info = _read_model_info(folder, predictor, folds)
        postprocessing = _load_postprocessing(folder, folds) if apply_postprocessing else None
        try:
            min_volume = min_lesion_volume_ml(info.extra) if apply_postprocessing else 0.0
        except ValueError as error:
            raise ModelFolderError(f"lesion model {source}: {error}") from error
        logger.info(
            "loaded lesion model %s %s (%s, folds %s) on %s, mirroring %s, input resampling %s%s%s",
            info.name, info.version, info.configuration, list(info.folds), device,
            "on" if use_mirroring else "off", input_resampling, ", with post-processing" if postprocessing else "",
            f", lesions under {min_volume:g} ml dropped" if min_volume else "",
        )
        return cls(predictor, info, postprocessing, min_lesion_volume_ml=min_volume)

    @property
    def model_info(self) -> LesionModelInfo:
        """Name, version, configuration, trainer, folds and label names of the loaded model."""
        return self._info

    @property
    def device(self) -> str:
        """The torch device the model runs on, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return str(self._predictor.device)

    def start_warm_up(self) -> None:
        """Run one sliding-window patch through the whole prediction, in a background thread.

        The first prediction on a GPU pays one-off costs: cuDNN's search for the fastest convolution
        algorithms at the patch size, the device's kernels loading, nnU-Net's first-call set-up. Paid
        here, while the caller loads the CT and splits the femurs on the CPU, they leave the first
        femur's prediction. The patch is synthetic, on the model's own grid (no resampling); its result
        is dropped. :meth:`predict` waits for a running warm-up, so results never depend on it. A
        failed warm-up is logged as a warning; the first prediction then pays as before. Calling it
        again does nothing.
        """
        if self._warm_up_thread is not None:
            return
        self._warm_up_thread = threading.Thread(target=self._warm_up, name="lesion-model-warm-up", daemon=True)
        self._warm_up_thread.start()

    def wait_for_warm_up(self) -> None:
        """Block until a started warm-up has finished (returns at once when none was started)."""
        if self._warm_up_thread is not None:
            self._warm_up_thread.join()

    def _warm_up(self) -> None:
        start = time.perf_counter()
        manager = self._predictor.configuration_manager
        patch_zyx = tuple(int(n) for n in manager.patch_size)
        # Bone-like values (HU), all non-zero so that nnU-Net's crop to non-zero keeps the whole patch.
        data = np.random.default_rng(0).normal(300.0, 150.0, size=(1, *patch_zyx)).astype(np.float32)
        data[data == 0] = 1.0
        try:
            with self._predict_lock:
                self._predictor.predict_single_npy_array(
                    data, {"spacing": [float(s) for s in manager.spacing]}, None, None, False
                )
        except Exception as error:  # noqa: BLE001 - a failed warm-up only costs the first prediction time
            logger.warning("lesion model warm-up failed (the first femur pays the set-up instead): %s: %s",
                           type(error).__name__, error)
            return
        logger.info("lesion model warmed up on %s in %.1f s (one %s patch)", self.device,
                    time.perf_counter() - start, "x".join(str(n) for n in patch_zyx))

    def predict(
        self, volume: hd.Volume, *, return_probabilities: bool = False, postprocess: bool = True
    ) -> LesionPrediction:
        """Segment lytic lesions in one femur-only crop.

        Parameters
        ----------
        volume : highdicom.Volume
            Femur-only crop: HU inside the femur, 0 outside; any orientation (see
            :func:`to_nnunet_input`). nnU-Net resamples to the model's spacing and back itself.
        return_probabilities : bool
            Also return the class probabilities.
        postprocess : bool
            Apply the model's post-processing (:meth:`postprocess`) to the labels; False gives the
            network's labels as they are (the probabilities are never post-processed).

        Returns
        -------
        LesionPrediction
            Labels (uint8) and, if asked, probabilities (float32, classes first), both on the crop's
            original (z, y, x) grid.
        """
        nnunet_input = to_nnunet_input(volume)
        n_classes = len(self._info.label_names)
        if not np.any(nnunet_input.array):
            # No femur voxel at all: nnU-Net's crop to non-zero would be empty. Nothing to find.
            logger.warning("femur crop holds no non-zero voxel; predicting background everywhere")
            labels = np.zeros(nnunet_input.original_shape, dtype=np.uint8)
            probabilities = None
            if return_probabilities:
                probabilities = np.zeros((n_classes, *nnunet_input.original_shape), dtype=np.float32)
                probabilities[0] = 1.0
            return LesionPrediction(labels=labels, probabilities=probabilities)

        with self._predict_lock:
            result = self._predictor.predict_single_npy_array(
                nnunet_input.array, nnunet_input.nnunet_properties, None, None, return_probabilities
            )
        segmentation, probabilities = result if return_probabilities else (result, None)
        labels = nnunet_input.to_original(np.asarray(segmentation).astype(np.uint8, copy=False))
        if postprocess:
            labels = self.postprocess(labels, volume.spacing)
        if probabilities is not None:
            probabilities = nnunet_input.to_original(np.asarray(probabilities, dtype=np.float32))
        return LesionPrediction(labels=labels, probabilities=probabilities)


    def postprocess(self, labels: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
        """The model's post-processing of predicted labels, as :meth:`predict` applies it.

        nnU-Net's own (``postprocessing.pkl``) when the model folder has one and it was loaded with
        ``apply_postprocessing``, then the removal of lesion components under the model's
        ``min_lesion_volume_ml``.

        Parameters
        ----------
        labels : numpy.ndarray
            uint8 labels on a crop's (z, y, x) grid.
        spacing_mm : sequence of float
            The crop's voxel size along (z, y, x), mm.

        Returns
        -------
        numpy.ndarray
            uint8 labels (``labels`` itself when there is nothing to apply).
        """
        if self._postprocessing is not None:
            from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

            labels = apply_postprocessing(labels, *self._postprocessing).astype(np.uint8, copy=False)
        if self._min_lesion_volume_ml > 0:
            labels = remove_small_components(labels, self._lesion_value, self._min_lesion_volume_ml,
                                             tuple(float(s) for s in spacing_mm))
        return labels

    @property
    def has_postprocessing(self) -> bool:
        """Whether :meth:`postprocess` changes anything (nnU-Net's or a smallest lesion volume)."""
        return self._postprocessing is not None or self._min_lesion_volume_ml > 0


def _find_model_folder_in(root: Path, *, archive_name: str) -> Path:
    candidates = sorted(
        {p.parent for p in root.rglob("plans.json") if any(p.parent.glob("fold_*"))},
        key=lambda p: len(p.parts),
    )
    if not candidates:
        raise ModelFolderError(f"lesion model archive {archive_name} holds no folder with plans.json and fold_*/")
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(root)) for c in candidates)
        raise ModelFolderError(f"lesion model archive {archive_name} holds several models ({names}); extract one")
    return candidates[0]


def _check_model_folder(folder: Path, folds: Sequence[int | str] | None, checkpoint: str) -> tuple[int | str, ...]:
    if not folder.is_dir():
        raise ModelFolderError(f"lesion model folder not found: {folder}")
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise ModelFolderError(f"lesion model folder {folder} has no {required}")
    if folds is None:
        found = sorted(
            int(d.name[len("fold_"):]) for d in folder.glob("fold_*")
            if d.name[len("fold_"):].isdigit() and (d / checkpoint).is_file()
        )
        if not found and (folder / "fold_all" / checkpoint).is_file():
            return ("all",)
        if not found:
            raise ModelFolderError(f"lesion model folder {folder} has no fold_*/{checkpoint}")
        return tuple(found)
    if isinstance(folds, (str, int)):
        folds = [folds]
    selected: list[int | str] = []
    for fold in folds:
        if fold != "all":
            try:
                fold = int(fold)
            except (TypeError, ValueError):
                raise ValueError(f"fold must be an integer or 'all', got {fold!r}") from None
        if not (folder / f"fold_{fold}" / checkpoint).is_file():
            raise ModelFolderError(f"lesion model folder {folder} has no fold_{fold}/{checkpoint}")
        selected.append(fold)
    if not selected:
        raise ValueError("folds must name at least one fold")
    return tuple(selected)


def _read_model_info(folder: Path, predictor: Any, folds: tuple[int | str, ...]) -> LesionModelInfo:
    dataset_json = predictor.dataset_json
    label_names = {int(value): str(name) for name, value in dataset_json["labels"].items()
                   if isinstance(value, int)}
    meta: dict[str, Any] = {}
    meta_file = folder / MODEL_INFO_FILE
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ModelFolderError(f"lesion model {meta_file} cannot be read: {error}") from error
        if not isinstance(meta, dict):
            raise ModelFolderError(f"lesion model {meta_file} is not a JSON object")
    return LesionModelInfo(
        name=str(meta.get("name") or predictor.plans_manager.dataset_name),
        version=str(meta.get("version") or _UNVERSIONED),
        configuration=str(meta.get("nnunet_configuration") or _configuration_of(folder, predictor)),
        trainer=str(meta.get("trainer") or predictor.trainer_name),
        plans=str(predictor.plans_manager.plans_name),
        folds=folds,
        label_names=dict(sorted(label_names.items())),
        extra=meta,
    )


def _configuration_of(folder: Path, predictor: Any) -> str:
    # The predictor does not keep the configuration's name. nnU-Net names results folders
    # Trainer__Plans__configuration; otherwise find the plans entry with the same data identifier.
    parts = folder.name.split("__")
    if len(parts) == 3 and parts[2] in predictor.plans_manager.available_configurations:
        return parts[2]
    identifier = predictor.configuration_manager.data_identifier
    for name in predictor.plans_manager.available_configurations:
        if predictor.plans_manager.get_configuration(name).data_identifier == identifier:
            return name
    return "unknown"


def _load_postprocessing(folder: Path, folds: tuple[int | str, ...]) -> tuple[list, list] | None:
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string

    candidates = [folder / "postprocessing.pkl"]
    if all(isinstance(f, int) for f in folds):
        candidates.append(folder / f"crossval_results_folds_{folds_tuple_to_string(folds)}" / "postprocessing.pkl")
    for candidate in candidates:
        if candidate.is_file():
            functions, kwargs = load_pickle(str(candidate))
            return (list(functions), list(kwargs)) if functions else None
    return None
