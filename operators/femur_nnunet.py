"""A learned femur model (nnU-Net v2) as a drop-in replacement of the classical femur segmenter.

The paper segmented the femurs with a U-Net (Dice 0.99). A trained nnU-Net v2 femur model plugs in
here: :class:`NnUNetFemurSegmenter` validates the model folder when it is constructed (so a bad
configuration fails at start-up with a one-line message, not half-way through a study), loads the
network on first use, and returns the splitter's label convention (0 background, 1 left femur,
2 right femur).

The model's own label values are mapped with ``label_mapping``: ``{1: "left", 2: "right"}`` for a
model that knows the sides, or ``{1: "femur"}`` for one that does not; in that case the splitter
separates the two femurs and names the sides from the geometry.

Orientation: nnU-Net does not reorient images; a model only works on arrays in the axis order it was
trained on. ``orientation`` names that order as a patient-orientation string (highdicom's
convention): the default ``"HPL"`` is what SimpleITK produces when it reads a standard axial DICOM
series (slice index towards the head, rows towards posterior, columns towards the patient's left).
The CT is rearranged to it (permutations and flips, no resampling) and the prediction is mapped back
to the CT's grid exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np

from operators.femur_classical import LEFT_LABEL, RIGHT_LABEL
from operators.nnunet_predictor import load_predictor

logger = logging.getLogger(__name__)

_KINDS = ("left", "right", "femur")


class NnUNetFemurSegmenter:
    """Femur segmentation with a trained nnU-Net v2 model.

    Parameters
    ----------
    model_folder:
        nnU-Net training output folder of one configuration (holds ``dataset.json``, ``plans.json``
        and ``fold_<k>/<checkpoint_name>``).
    folds:
        Folds to ensemble.
    checkpoint_name:
        Checkpoint file inside each fold folder.
    label_mapping:
        Model label value -> "left", "right" or "femur". Sided and unsided kinds cannot be mixed.
    orientation:
        Patient orientation of the arrays the model was trained on (see the module docstring).
    device:
        torch device name ("cpu", "cuda", "cuda:1").
    tile_step_size, use_mirroring:
        Sliding-window overlap and test-time mirroring (mirroring costs 8 passes in 3D).

    Notes
    -----
    Only construction (configuration checks) is covered by the test suite: no femur model weights
    ship with this project.
    """

    def __init__(
        self,
        model_folder: Path | str,
        *,
        folds: Sequence[int | str] = (0,),
        checkpoint_name: str = "checkpoint_final.pth",
        label_mapping: Mapping[int, str] | None = None,
        orientation: str = "HPL",
        device: str = "cpu",
        tile_step_size: float = 0.5,
        use_mirroring: bool = True,
    ) -> None:
        folder = Path(model_folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"femur model folder does not exist: {folder}")
        for name in ("dataset.json", "plans.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"femur model folder has no {name}: {folder}")
        folds = tuple(folds)
        if not folds:
            raise ValueError("folds must name at least one fold")
        for fold in folds:
            checkpoint = folder / f"fold_{fold}" / checkpoint_name
            if not checkpoint.is_file():
                raise FileNotFoundError(f"femur model checkpoint missing: fold_{fold}/{checkpoint_name} in {folder}")
        mapping = dict(label_mapping) if label_mapping is not None else {1: "left", 2: "right"}
        if not mapping:
            raise ValueError("label_mapping must map at least one model label")
        for value, kind in mapping.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"label_mapping keys must be positive model label values, got {value!r}")
            if kind not in _KINDS:
                raise ValueError(f"label_mapping values must be one of {_KINDS}, got {kind!r}")
        kinds = set(mapping.values())
        if "femur" in kinds and kinds != {"femur"}:
            raise ValueError("label_mapping cannot mix 'femur' with 'left'/'right'")
        model_labels = _model_label_values(folder / "dataset.json")
        unknown = sorted(set(mapping) - model_labels)
        if unknown:
            raise ValueError(f"label_mapping names label value(s) {unknown} the model does not have ({sorted(model_labels)})")
        if not (0 < tile_step_size <= 1):
            raise ValueError(f"tile_step_size must be in (0, 1], got {tile_step_size!r}")
        try:
            hd.Volume(np.zeros((1, 1, 1)), np.eye(4), "PATIENT").to_patient_orientation(orientation)
        except Exception as exc:
            raise ValueError(f"orientation {orientation!r} is not a patient orientation such as 'HPL': {exc}") from None

        self.model_folder = folder
        self.folds = folds
        self.checkpoint_name = checkpoint_name
        self.label_mapping = mapping
        self.orientation = orientation
        self.device = device
        self.tile_step_size = float(tile_step_size)
        self.use_mirroring = bool(use_mirroring)
        #: False for a one-label femur model: the splitter then assigns sides from the geometry.
        self.sided = kinds != {"femur"}
        self._predictor = None

    def _load(self):
        if self._predictor is None:
            import torch
            predictor = load_predictor(self.model_folder, device=torch.device(self.device), folds=self.folds,
                                       checkpoint_name=self.checkpoint_name, use_mirroring=self.use_mirroring,
                                       tile_step_size=self.tile_step_size)
            self._predictor = predictor
            logger.info("loaded femur model (folds %s) on %s", ",".join(map(str, self.folds)), self.device)
        return self._predictor

    def segment(self, ct: hd.Volume) -> np.ndarray:
        """Predict femur labels for a CT.

        Parameters
        ----------
        ct:
            CT in HU, array (z, y, x), affine index -> LPS mm, any orientation.

        Returns
        -------
        numpy.ndarray
            uint8 (z, y, x) on the CT's grid: 0/1 left/2 right, or 0/1 femur when the model is unsided.
        """
        predictor = self._load()
        oriented = ct.to_patient_orientation(self.orientation)
        image = np.asarray(oriented.array, dtype=np.float32)[None]
        spacing = [float(s) for s in oriented.spacing]
        raw = predictor.predict_single_npy_array(image, {"spacing": spacing}, None, None, False)
        raw = np.asarray(raw)
        out = np.zeros(raw.shape, dtype=np.uint8)
        for value, kind in self.label_mapping.items():
            out[raw == value] = {"left": LEFT_LABEL, "right": RIGHT_LABEL, "femur": 1}[kind]
        # Back to the CT's grid: a permutation and flips, exact.
        back = hd.Volume(out, oriented.affine, "PATIENT").match_geometry(ct)
        return np.ascontiguousarray(back.array)


def _model_label_values(dataset_json: Path) -> set[int]:
    try:
        labels = json.loads(dataset_json.read_text())["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read the labels of the femur model's dataset.json: {exc}") from None
    values: set[int] = set()
    for value in labels.values():
        # nnU-Net v2 region-based models list tuples of values; plain models a single int.
        for v in value if isinstance(value, (list, tuple)) else (value,):
            values.add(int(v))
    return values
