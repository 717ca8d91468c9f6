"""The lesion model on a CUDA device gives the CPU's answer (runs where a GPU is present, skipped elsewhere).

On CUDA, nnU-Net's predictor keeps the whole sliding window on the device and runs the network under
fp16 autocast; on the CPU it runs in float32. The two may disagree at a few lesion-boundary voxels where
the class probabilities are near 0.5, never on whole lesions: the test bounds that disagreement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "model" / "femur_lesion_nnunet"
# A held-out 'small' study (never used in training) with a lytic lesion in view.
SEED = 2000


@pytest.fixture(scope="module")
def crops() -> dict:
    from operators.femur_splitter import split_femurs
    from synthetic_ct import generate_phantom

    split = split_femurs(generate_phantom(SEED, "small").ct)
    assert split.femurs, "the splitter found no femur in the test study"
    return {side: crop.femur_only for side, crop in sorted(split.femurs.items())}


def _predict_all(device: str, crops: dict) -> tuple[str, dict[str, np.ndarray]]:
    from operators.lesion_model import LesionModel

    model = LesionModel.from_folder(SHIPPED_MODEL, device=device, use_mirroring=False)
    return model.device, {side: np.asarray(model.predict(crop).labels) for side, crop in crops.items()}


def test_cuda_prediction_matches_the_cpu_in_the_crops_grid(crops: dict) -> None:
    cpu_device, on_cpu = _predict_all("cpu", crops)
    cuda_device, on_cuda = _predict_all("cuda", crops)
    assert cpu_device == "cpu"
    assert cuda_device.startswith("cuda")
    assert sum(int((labels == 1).sum()) for labels in on_cpu.values()) > 0, "no lesion predicted on the CPU"
    for side, crop in crops.items():
        cpu, cuda = on_cpu[side], on_cuda[side]
        assert cuda.shape == cpu.shape == tuple(crop.spatial_shape)
        assert cuda.dtype == cpu.dtype
        assert set(np.unique(cuda)) <= {0, 1, 2}
        both = int(((cpu == 1) & (cuda == 1)).sum())
        total = int((cpu == 1).sum() + (cuda == 1).sum())
        agreement = 1.0 if total == 0 else 2 * both / total
        assert agreement >= 0.97, f"{side}: CPU and CUDA lesion masks agree at Dice {agreement:.3f}"
        # Outside the lesion boundary the two are the same: no voxel flips between lesion and cyst.
        assert not np.any((cpu == 1) & (cuda == 2)) and not np.any((cpu == 2) & (cuda == 1))


def test_a_model_on_cuda_warms_up_by_default_and_then_predicts_as_before(crops: dict, caplog) -> None:
    from operators.lesion_model import LesionModel

    _, cold = _predict_all("cuda", {side: crops[side] for side in sorted(crops)[:1]})
    with caplog.at_level("INFO", logger="operators.lesion_model"):
        model = LesionModel.from_folder(SHIPPED_MODEL, device="cuda", use_mirroring=False)
        model.wait_for_warm_up()
    assert any("warmed up on cuda" in r.getMessage() for r in caplog.records), caplog.text
    for side, labels in cold.items():
        warm = np.asarray(model.predict(crops[side]).labels)
        both = int(((labels == 1) & (warm == 1)).sum())
        total = int((labels == 1).sum() + (warm == 1).sum())
        assert total == 0 or 2 * both / total >= 0.99


def test_torch_input_resampling_runs_on_the_gpu_and_agrees_with_the_plans(crops: dict) -> None:
    from operators.lesion_model import LesionModel

    plans = LesionModel.from_folder(SHIPPED_MODEL, device="cuda", use_mirroring=False, input_resampling="plans")
    on_torch = LesionModel.from_folder(SHIPPED_MODEL, device="cuda", use_mirroring=False, input_resampling="torch")
    kwargs = on_torch._predictor.configuration_manager.configuration["resampling_fn_data_kwargs"]
    assert kwargs["device"].type == "cuda"
    for side, crop in crops.items():
        a = np.asarray(plans.predict(crop).labels)
        b = np.asarray(on_torch.predict(crop).labels)
        assert a.shape == b.shape == tuple(crop.spatial_shape)
        both = int(((a == 1) & (b == 1)).sum())
        total = int((a == 1).sum() + (b == 1).sum())
        # A different interpolation of the input: lesion borders move, lesions stay.
        assert total == 0 or 2 * both / total >= 0.8, f"{side}: Dice {2 * both / total:.3f}"
