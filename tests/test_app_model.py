"""The lesion model the application tests run, and how the application finds a model folder.

:func:`lesion_model_folder` (fixture ``lesion_model``) is the model every application test uses: the
shipped model in ``model/`` when that folder holds one, otherwise a tiny nnU-Net model trained on the toy
dataset on CPU (about two minutes on two cores). The tiny model is kept in pytest's cache, keyed by the
code that trains and loads it, so later runs reuse it; its predictions are meaningless, the point is
that a real nnU-Net model goes through the real code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from operators.errors import ModelFolderError
from operators.lesion_segmentation import resolve_model_path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL_FOLDER = REPO_ROOT / "model"

# Toy crops at about the resolution of the "small" synthetic studies (2.4-3 mm pixels, 2.5-3 mm slices),
# so that inference on their femurs stays at a few patches.
_TOY_SHAPE = (64, 48, 48)
_TOY_SPACING = (3.0, 2.5, 2.5)
_TINY_SCHEDULE = dict(num_epochs=2, iterations_per_epoch=4, val_iterations_per_epoch=1)
_CACHE_CODE = ("lesion_training/configurations.py", "lesion_training/export.py", "lesion_training/raw_dataset.py",
               "lesion_training/toy_dataset.py", "lesion_training/train.py", "lesion_training/trainers.py", "operators/lesion_model.py")

_memo: dict[str, Path] = {}


def shipped_model() -> Path | None:
    """The model in ``model/``, or None when that folder holds none."""
    try:
        return resolve_model_path(SHIPPED_MODEL_FOLDER)
    except ModelFolderError:
        return None


def _cache_key() -> str:
    digest = hashlib.sha256()
    for name in _CACHE_CODE:
        path = REPO_ROOT / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    digest.update(repr((_TOY_SHAPE, _TOY_SPACING, sorted(_TINY_SCHEDULE.items()))).encode())
    try:
        from importlib import metadata

        digest.update(metadata.version("nnunetv2").encode())
    except Exception:  # noqa: BLE001 - the key only needs to change when nnU-Net does
        pass
    return digest.hexdigest()[:16]


def train_tiny_model(destination: Path, work: Path) -> Path:
    """Train the tiny toy model (fold "all") and export it to ``destination``."""
    from lesion_training.configurations import SMALL
    from lesion_training.toy_dataset import write_toy_dataset
    from lesion_training.train import train

    dataset = write_toy_dataset(work / "Dataset991_ToyFemurApp", num_cases=6, shape=_TOY_SHAPE, spacing=_TOY_SPACING)
    tiny = SMALL.replace(name="apptest", description="application tests: tiny toy model", patch_size=_TOY_SHAPE,
                         n_stages=3, base_features=4, max_features=16, min_target_spacing=None, **_TINY_SCHEDULE)
    run = train(dataset, workspace=work / "workspace", configuration=tiny, folds=["all"], device="cpu",
                num_processes=1, output=destination, model_name="femur-lesion-apptest", model_version="0.0.0-test")
    assert run.exported is not None
    return run.exported.folder


def lesion_model_folder(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model for application tests: ``model/`` if it holds one, else the (cached) tiny toy model."""
    shipped = shipped_model()
    if shipped is not None:
        return shipped
    key = _cache_key()
    if key in _memo:
        return _memo[key]
    if getattr(config, "cache", None) is not None:
        cache = Path(config.cache.mkdir("femur-lesion-tiny-model"))
    else:  # pytest's cache plugin disabled: train for this session only
        cache = tmp_path_factory.mktemp("tiny-model-cache")
    folder = cache / key
    if not (folder / "plans.json").is_file():
        work = tmp_path_factory.mktemp("tiny-model")
        trained = train_tiny_model(work / "model", work)
        partial = cache / f".{key}.{os.getpid()}.partial"
        shutil.copytree(trained, partial)
        try:
            partial.rename(folder)
        except OSError:  # another test run put it there first
            shutil.rmtree(partial, ignore_errors=True)
        for old in cache.iterdir():
            if old.name != folder.name and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    _memo[key] = folder
    return folder


@pytest.fixture(scope="session")
def lesion_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the lesion model the application tests run (see the module docstring)."""
    return lesion_model_folder(request.config, tmp_path_factory)


# --------------------------------------------------------------------------------------------------
# Finding the model folder, as a MAP mounts it


def _fake_model(folder: Path) -> Path:
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return folder


def test_a_model_folder_is_taken_as_it_is(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "femur-lesion")
    assert resolve_model_path(model) == model


def test_the_only_model_inside_a_models_folder_is_found(tmp_path: Path) -> None:
    # /opt/holoscan/models/<name>/ in a MAP, with HOLOSCAN_MODEL_PATH=/opt/holoscan/models.
    model = _fake_model(tmp_path / "models" / "femur-lesion")
    (tmp_path / "models" / ".cache").mkdir()
    assert resolve_model_path(tmp_path / "models") == model
    # One level deeper: <models>/<name>/<nnU-Net results folder>.
    deeper = _fake_model(tmp_path / "deep" / "femur-lesion" / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    assert resolve_model_path(tmp_path / "deep") == deeper


def test_a_zip_inside_a_models_folder_is_found(tmp_path: Path) -> None:
    archive = tmp_path / "models" / "femur-lesion.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("x/plans.json", "{}")
    assert resolve_model_path(tmp_path / "models") == archive


def test_no_model_or_several_models_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="not found"):
        resolve_model_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no lesion model in"):
        resolve_model_path(tmp_path / "empty")
    _fake_model(tmp_path / "two" / "a")
    _fake_model(tmp_path / "two" / "b")
    with pytest.raises(ModelFolderError, match=r"several lesion models .*\(a, b\)"):
        resolve_model_path(tmp_path / "two")
