"""The lesion model a MAP carries: find it, check it, lay it out as the packager and the app expect.

``monai-deploy package -m DIR`` treats every sub-folder of ``DIR`` as a model named after it (and, if
``DIR`` holds files, ``DIR`` itself as one more model), and the image gets them as
``/opt/holoscan/models/<name>/``. Handing it ``model/`` itself would make two "models" of our one
(``model`` for the model card beside it, and the nnU-Net folder), so the model is staged alone into
``<build>/models/<name>/`` and that folder is packaged. The application is then started with
``HOLOSCAN_MODEL_PATH=/opt/holoscan/models`` and finds its only model there
(:func:`operators.lesion_segmentation.resolve_model_path`, the same rule checked here).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from map_packaging.folders import partial_folder, replace_folder

from operators.errors import ModelFolderError
from operators.lesion_segmentation import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "ModelError", "find_model", "stage_models"]

#: The checkpoint the application loads from each ``fold_*/``.
CHECKPOINT = "checkpoint_final.pth"


class ModelError(ValueError):
    """No usable model where one is expected (one line naming the folder)."""


def find_model(folder: Path) -> Path:
    """The one lesion model in ``folder`` (an nnU-Net model folder or export zip), checked.

    Parameters
    ----------
    folder : Path
        A model folder, or a folder holding exactly one (as ``model/`` holds
        ``model/femur_lesion_nnunet/`` beside its model card).

    Raises
    ------
    ModelError
        ``folder`` holds no model (e.g. none trained yet), several, or one without weights or with
        unreadable ``plans.json``/``dataset.json``.
    """
    try:
        model = resolve_model_path(folder)
    except ModelFolderError as error:
        raise ModelError(f"{error}; `make model` trains one into model/ (or name another with --model FOLDER, "
                         "`make map MAP_MODEL=FOLDER`)") from None
    if model.is_file():
        if model.suffix != ".zip":
            raise ModelError(f"{model}: a model file must be nnU-Net's export zip")
        return model
    for name in ("plans.json", "dataset.json"):
        try:
            content = json.loads((model / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelError(f"{model / name}: not readable JSON ({' '.join(str(error).split())})") from None
        if not isinstance(content, dict) or not content:
            raise ModelError(f"{model / name}: expected a non-empty JSON object")
    weights = sorted(p for p in model.glob(f"fold_*/{CHECKPOINT}") if p.is_file() and p.stat().st_size > 0)
    if not weights:
        raise ModelError(f"{model}: no fold_*/{CHECKPOINT} with weights")
    logger.info("model %s: %s", model, ", ".join(str(w.relative_to(model)) for w in weights))
    return model


def stage_models(model: Path, destination: Path) -> Path:
    """Copy ``model`` alone into a fresh models folder ``destination/<name>/``; returns ``destination``.

    ``<name>`` is the model folder's name (a zip goes to ``<stem>/<file>``, as the packager would place
    a model file). The copy is written beside ``destination`` and renamed into place when complete; an
    earlier ``destination`` is replaced. Afterwards the application's own lookup must find exactly this
    model in ``destination``, as it will in ``/opt/holoscan/models``.
    """
    destination = Path(destination)
    partial = partial_folder(destination)
    name = model.stem if model.is_file() else model.name
    if model.is_file():
        (partial / name).mkdir(parents=True)
        shutil.copy2(model, partial / name / model.name)
    else:
        # Hidden files (editor or OS droppings) are not part of the model.
        shutil.copytree(model, partial / name, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    replace_folder(partial, destination)
    found = resolve_model_path(destination)
    expected = destination / name / model.name if model.is_file() else destination / name
    if found != expected:
        raise ModelError(f"{destination}: the application would load {found}, not the staged {expected}")
    logger.info("staged model %s -> %s", model, expected)
    return destination

