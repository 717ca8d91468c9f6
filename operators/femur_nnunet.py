"""A learned femur model (nnU-Net v2) as a drop-in replacement of the classical femur segmenter.

The paper segmented the femurs with a U-Net (Dice 0.99). A trained nnU-Net v2 femur model plugs in
here: :class:`NnUNetFemurSegmenter` validates the model folder when it is constructed (so a bad
configuration fails at start-up with a one-line message, not half-way through a study), loads the
network on first use, and returns the splitter's label convention (0 background, 1 left femur,
2 right femur).

The model's own label values are mapped with ``label_mapping``: ``{1: "left", 2: "right"}`` for a
model that knows the sides, or ``{1: "femur"}`` for one that does not; in that case the splitter
separates the two femurs and names the sides from the geometry. Without a mapping, the label names of
the model's dataset.json decide where they name femurs (``femur_left``/``femur_right`` of a
whole-body model; its other labels are background here), else ``{1: "left", 2: "right"}``.
A model can only know the sides if it was trained without mirroring along the left-right axis: nnU-Net's
default augmentation mirrors every axis and keeps the labels, so a mirrored left femur is still "left"
(tests/femur_model_support.py measured what that does); map such a model's labels to "femur".

Orientation: nnU-Net does not reorient images; a model only works on arrays in the axis order it was
trained on. ``orientation`` names that order as a patient-orientation string (highdicom's
convention): the default ``"HPL"`` is what SimpleITK produces when it reads a standard axial DICOM
series (slice index towards the head, rows towards posterior, columns towards the patient's left).
The CT is rearranged to it (permutations and flips, no resampling) and the prediction is mapped back
to the CT's grid exactly.

Configuration: :func:`femur_segmenter_from_settings` builds the segmenter from a model folder or from a
JSON settings file (``femur_model.json``), which is how the application takes it
(``FEMUR_SPLITTER_MODEL``)::

    {
      "model_folder": "Dataset321_Femur/nnUNetTrainer__nnUNetPlans__3d_fullres",
      "labels": {"1": "left", "2": "right"},
      "orientation": "HPL",
      "folds": [0, 1, 2, 3, 4],
      "checkpoint": "checkpoint_final.pth",
      "tile_step_size": 0.5,
      "mirroring": true
    }

Every key is optional. ``model_folder`` is relative to the settings file (default: the file's own
folder, so a ``femur_model.json`` inside the model folder needs none); ``folds`` defaults to every
``fold_<k>`` folder holding the checkpoint, as nnU-Net's own predictor does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np

from operators.errors import ModelFolderError
from operators.femur_classical import LEFT_LABEL, RIGHT_LABEL
from operators.nnunet_predictor import load_predictor, resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "NnUNetFemurSegmenter",
    "SETTINGS_FILE_NAME",
    "femur_segmenter_from_setting",
    "femur_segmenter_from_settings",
    "mapping_from_label_names",
]

#: Settings file a femur model folder may hold (read when the settings path names the folder).
SETTINGS_FILE_NAME = "femur_model.json"
_SETTINGS_KEYS = ("model_folder", "labels", "orientation", "folds", "checkpoint", "tile_step_size", "mirroring")

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
        Default: from the label names in the model's dataset.json where they name femurs (see
        :func:`mapping_from_label_names`), else ``{1: "left", 2: "right"}``.
    orientation:
        Patient orientation of the arrays the model was trained on (see the module docstring).
    device:
        Where the model runs: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    tile_step_size, use_mirroring:
        Sliding-window overlap and test-time mirroring (mirroring costs 8 passes in 3D).

    Notes
    -----
    No femur model ships with this project (the classical segmenter needs no weights); the test suite
    trains a small one with nnU-Net on synthetic studies (tests/test_femur_nnunet.py).
    """

    def __init__(
        self,
        model_folder: Path | str,
        *,
        folds: Sequence[int | str] = (0,),
        checkpoint_name: str = "checkpoint_final.pth",
        label_mapping: Mapping[int, str] | None = None,
        orientation: str = "HPL",
        device: str = "auto",
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
        model_labels = _model_labels(folder / "dataset.json")
        if label_mapping is not None:
            mapping = dict(label_mapping)
        else:
            mapping = mapping_from_label_names(model_labels) or {1: "left", 2: "right"}
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
        values = {v for vs in model_labels.values() for v in vs}
        unknown = sorted(set(mapping) - values)
        if unknown:
            raise ValueError(f"label_mapping names label value(s) {unknown} the model does not have ({sorted(values)})")
        if isinstance(tile_step_size, bool) or not isinstance(tile_step_size, (int, float)) \
                or not (0 < tile_step_size <= 1):
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
        self.device = resolve_device(device)
        self.tile_step_size = float(tile_step_size)
        self.use_mirroring = bool(use_mirroring)
        #: False for a one-label femur model: the splitter then assigns sides from the geometry.
        self.sided = kinds != {"femur"}
        self._predictor = None

    def _load(self):
        if self._predictor is None:
            predictor = load_predictor(self.model_folder, device=self.device, folds=self.folds,
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


def _model_labels(dataset_json: Path) -> dict[str, tuple[int, ...]]:
    """Label name -> label value(s) of a model's dataset.json."""
    try:
        labels = json.loads(dataset_json.read_text(encoding="utf-8"))["labels"]
        # nnU-Net v2 region-based models list tuples of values; plain models a single int.
        return {str(name): tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else (value,)))
                for name, value in labels.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"cannot read the labels of the femur model's dataset.json: {exc}") from None


def mapping_from_label_names(labels: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """The label mapping that a model's label names state, or {} when they state none.

    Labels whose name holds "femur" count (case-insensitive; region labels of several values do not):
    with "left" or "right" in the name they give that side (``femur_left``, ``Right femur``), else "femur".
    Sided names win over an unsided one, so that ``{"femur": 1, "femur_left": 2}`` is read as sided.
    Other labels (hip, tibia, ...) are left out: their voxels are background to the splitter.
    """
    sided: dict[int, str] = {}
    unsided: dict[int, str] = {}
    for name, values in labels.items():
        folded = name.casefold()
        if "femur" not in folded or len(values) != 1 or values[0] <= 0:
            continue
        if "left" in folded and "right" not in folded:
            sided[values[0]] = "left"
        elif "right" in folded and "left" not in folded:
            sided[values[0]] = "right"
        else:
            unsided[values[0]] = "femur"
    return sided or unsided


def femur_segmenter_from_settings(path: Path | str, *, device: str = "auto") -> NnUNetFemurSegmenter:
    """The femur segmenter that a settings file or a model folder describes.

    Parameters
    ----------
    path:
        A JSON settings file (keys in the module docstring), or an nnU-Net model folder of one
        configuration; a folder holding :data:`SETTINGS_FILE_NAME` takes its settings from it.
    device:
        Where the model runs ("auto", "cpu", "cuda", "cuda:N").

    Returns
    -------
    NnUNetFemurSegmenter
        Validated (folder, checkpoints, labels, orientation, device); the network loads on first use.

    Raises
    ------
    ModelFolderError
        One line naming what is wrong: a missing path or file, unreadable JSON, an unknown key, a value
        of the wrong kind.
    """
    path = Path(path)
    try:
        if path.is_dir() and not (path / SETTINGS_FILE_NAME).is_file():
            settings: dict = {}
            base = path
        else:
            file = path / SETTINGS_FILE_NAME if path.is_dir() else path
            if not file.is_file():
                raise FileNotFoundError(f"no femur model folder or settings file at {path}")
            try:
                settings = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot read {file.name} as JSON: {exc}") from None
            if not isinstance(settings, dict):
                raise ValueError(f"{file.name} must hold a JSON object, got {type(settings).__name__}")
            unknown = sorted(set(settings) - set(_SETTINGS_KEYS))
            if unknown:
                raise ValueError(f"{file.name} has unknown key(s) {unknown}; known: {list(_SETTINGS_KEYS)}")
            base = file.parent
        folder = base / _typed(settings, "model_folder", str, ".")
        checkpoint = _typed(settings, "checkpoint", str, "checkpoint_final.pth")
        folds = settings.get("folds")
        if folds is None:
            folds = _folds_with(folder, checkpoint)
        elif not isinstance(folds, list) or not all(
            (isinstance(f, int) and not isinstance(f, bool)) or f == "all" for f in folds
        ):
            raise ValueError(f"folds must be a list of fold numbers (or \"all\"), got {folds!r}")
        labels = settings.get("labels")
        if labels is not None:
            if not isinstance(labels, dict):
                raise ValueError(f"labels must map model label values to left/right/femur, got {labels!r}")
            try:
                labels = {int(value): kind for value, kind in labels.items()}
            except ValueError:
                raise ValueError(f"labels keys must be model label values such as \"1\", got {sorted(labels)}") from None
        return NnUNetFemurSegmenter(
            folder, folds=folds, checkpoint_name=checkpoint, label_mapping=labels,
            orientation=_typed(settings, "orientation", str, "HPL"), device=device,
            tile_step_size=_typed(settings, "tile_step_size", (int, float), 0.5),
            use_mirroring=_typed(settings, "mirroring", bool, True),
        )
    except (OSError, ValueError) as exc:
        message = str(exc)
        raise ModelFolderError(message if message.startswith("femur model") else f"femur model: {message}") from None


def femur_segmenter_from_setting(setting: str | None, *, device: str = "auto") -> NnUNetFemurSegmenter | None:
    """The femur model a deployment setting names (an environment variable, a server option), or None.

    None or a blank setting means the classical, weight-free splitter. Anything else goes to
    :func:`femur_segmenter_from_settings`, whose :class:`ModelFolderError` stops the caller at start-up
    rather than letting it split with another segmenter than the one asked for.
    """
    if setting is None or not setting.strip():
        return None
    segmenter = femur_segmenter_from_settings(Path(setting.strip()), device=device)
    logger.info("femur model %s (folds %s) on %s for the splitter", segmenter.model_folder.name,
                ",".join(map(str, segmenter.folds)), segmenter.device)
    return segmenter


_KIND_NAMES = {str: "a string", bool: "true or false"}


def _typed(settings: Mapping, key: str, kind: type | tuple[type, ...], default):
    """``settings[key]`` (or ``default``), checked to be of ``kind`` (JSON true/false never counts as a number)."""
    value = settings.get(key, default)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ValueError(f"{key} must be {_KIND_NAMES.get(kind, 'a number')}, got {value!r}")
    return value


def _folds_with(folder: Path, checkpoint: str) -> list[int | str]:
    """The folds whose folder holds ``checkpoint`` (numbered ones; "all" only when there is no other)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"femur model folder does not exist: {folder}")
    found = [p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).is_file()]
    numbered = sorted(int(f) for f in found if f.isdigit())
    if numbered:
        return list(numbered)
    if "all" in found:
        return ["all"]
    raise FileNotFoundError(f"femur model folder has no fold_<k>/{checkpoint}: {folder}")
