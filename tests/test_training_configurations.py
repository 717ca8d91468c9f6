"""Configurations: what they change in nnU-Net's plans, and that nnU-Net builds the result."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lesion_training.configurations import (
    PAPER,
    SCHEDULE_KEY,
    SMALL,
    SMALL_GPU,
    TrainingConfiguration,
    apply_configuration,
    get_configuration,
    target_spacing,
)


def _planner_output(
    spacing: list[float], median_shape: list[float], transpose_forward: list[int] = (0, 1, 2)
) -> dict:
    """The parts of an ExperimentPlanner plans file a configuration reads or writes (nnU-Net order)."""
    transpose_forward = list(transpose_forward)
    backward = [transpose_forward.index(i) for i in range(3)]
    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [128, 128, 128],
        "median_image_size_in_voxels": median_shape,
        "spacing": spacing,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
                "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset501_Femur",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": median_shape,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": transpose_forward,
        "transpose_backward": backward,
        "configurations": {"2d": {"patch_size": [128, 128]}, "3d_fullres": fullres,
                           "3d_lowres": {"patch_size": [64, 64, 64]}},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}},
    }


def _fullres(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]


def test_paper_configuration_reproduces_the_papers_network() -> None:
    # The paper's data: ~0.85 mm in-plane, ~1 mm slices, femurs of ~370+ slices.
    plans = apply_configuration(_planner_output([1.0, 0.85, 0.85], [420.0, 92.0, 110.0]), PAPER)
    fullres = _fullres(plans)
    arch = fullres["architecture"]["arch_kwargs"]

    assert fullres["patch_size"] == [384, 64, 96]
    assert fullres["batch_size"] == 2
    assert arch["n_stages"] == 6
    assert arch["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    bottleneck = np.array(fullres["patch_size"]) // np.prod(arch["strides"], axis=0)
    assert bottleneck.tolist() == [12, 4, 6]
    assert len(arch["n_conv_per_stage"]) == 6 and len(arch["n_conv_per_stage_decoder"]) == 5
    assert fullres[SCHEDULE_KEY] == {"configuration": "paper", "num_epochs": 1000,
                                     "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50,
                                     "dice_smoothing": True, "time_budget_s": None}


@pytest.mark.parametrize("configuration", [PAPER, SMALL, SMALL_GPU])
def test_every_configuration_zscores_within_the_femur(configuration: TrainingConfiguration) -> None:
    plans = apply_configuration(_planner_output([1.0, 0.85, 0.85], [420.0, 92.0, 110.0]), configuration)
    assert _fullres(plans)["normalization_schemes"] == ["ZScoreNormalization"]
    assert _fullres(plans)["use_mask_for_norm"] == [True]


def test_the_small_configuration_computes_dice_over_the_batch_and_the_paper_keeps_nnunets_choice() -> None:
    planned = _planner_output([1.0, 0.85, 0.85], [420.0, 92.0, 110.0])
    for nnunet_choice in (False, True):
        planned["configurations"]["3d_fullres"]["batch_dice"] = nnunet_choice
        assert _fullres(apply_configuration(planned, SMALL))["batch_dice"] is True
        assert _fullres(apply_configuration(planned, PAPER))["batch_dice"] is nnunet_choice


def test_the_plans_say_whether_the_dice_is_smoothed_and_both_configurations_keep_nnunets_loss() -> None:
    planned = _planner_output([1.0, 0.85, 0.85], [420.0, 92.0, 110.0])
    assert _fullres(apply_configuration(planned, PAPER))[SCHEDULE_KEY]["dice_smoothing"] is True
    assert _fullres(apply_configuration(planned, SMALL))[SCHEDULE_KEY]["dice_smoothing"] is True
    unsmoothed = apply_configuration(planned, SMALL.replace(dice_smoothing=False))
    assert _fullres(unsmoothed)[SCHEDULE_KEY]["dice_smoothing"] is False


def test_the_gpu_configuration_trains_the_small_network_on_the_small_grid_in_bigger_batches_within_a_budget() -> None:
    planned = _planner_output([1.0, 0.85, 0.85], [420.0, 92.0, 110.0])
    small, gpu = _fullres(apply_configuration(planned, SMALL)), _fullres(apply_configuration(planned, SMALL_GPU))
    for key in ("spacing", "patch_size", "architecture", "batch_dice", "normalization_schemes", "use_mask_for_norm"):
        assert gpu[key] == small[key], key
    assert (small["batch_size"], gpu["batch_size"]) == (2, 8)
    assert gpu[SCHEDULE_KEY] == {"configuration": "small_gpu", "num_epochs": 1000, "num_iterations_per_epoch": 250,
                                 "num_val_iterations_per_epoch": 10, "dice_smoothing": True, "time_budget_s": 450.0}
    assert small[SCHEDULE_KEY]["time_budget_s"] is None


def test_configuration_gets_its_own_plans_and_data_identifier_and_only_3d_fullres() -> None:
    original = _planner_output([2.0, 1.6, 1.6], [280.0, 45.0, 45.0])
    kept = copy.deepcopy(original)
    plans = apply_configuration(original, SMALL)
    assert original == kept, "the planner's plans must not be modified"
    assert plans["plans_name"] == "nnUNetPlans_femur_small"
    assert _fullres(plans)["data_identifier"] == "nnUNetPlans_femur_small_3d_fullres"
    assert list(plans["configurations"]) == ["3d_fullres"]


def test_small_patch_is_clipped_to_the_femur_and_padded_like_nnunet() -> None:
    # Femur crops shrink to their bounding box; a 48-voxel patch cannot exceed a 37-voxel femur.
    plans = apply_configuration(_planner_output([2.0, 1.6, 1.6], [250.0, 37.0, 36.5]), SMALL)
    fullres = _fullres(plans)
    strides = np.prod(fullres["architecture"]["arch_kwargs"]["strides"], axis=0)
    assert fullres["patch_size"][0] == 96
    assert all(37 <= p < 48 for p in fullres["patch_size"][1:])
    assert all(p % s == 0 for p, s in zip(fullres["patch_size"], strides))
    assert fullres["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128, 128]


def test_patch_is_given_in_canonical_axes_whatever_nnunets_transpose() -> None:
    # Thin slices: nnU-Net puts the coarsest axis (here y) first. The paper's 384 must stay on z.
    plans = apply_configuration(_planner_output([0.9, 0.7, 0.7], [92.0, 420.0, 110.0], [1, 0, 2]), PAPER)
    patch_in_nnunet_order = _fullres(plans)["patch_size"]
    assert patch_in_nnunet_order == [64, 384, 96]


def test_target_spacing_only_coarsens() -> None:
    assert target_spacing([1.0, 0.8, 0.8], SMALL) == (2.0, 1.6, 1.6)
    assert target_spacing([3.0, 0.8, 2.5], SMALL) == (3.0, 1.6, 2.5)
    assert target_spacing([1.0, 0.8, 0.8], PAPER) == (1.0, 0.8, 0.8)


def test_edited_plans_build_in_nnunet() -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = apply_configuration(_planner_output([2.0, 1.6, 1.6], [280.0, 45.0, 45.0]), SMALL)
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    network = nnUNetTrainer.build_network_architecture(
        manager, configuration, 1, 2, enable_deep_supervision=False
    )
    with torch.no_grad():
        output = network(torch.zeros(1, 1, *configuration.patch_size))
    assert tuple(output.shape) == (1, 2, *configuration.patch_size)
    assert configuration.configuration[SCHEDULE_KEY]["num_epochs"] == SMALL.num_epochs


def test_configurations_are_validated() -> None:
    assert get_configuration("small") is SMALL
    with pytest.raises(ValueError, match="unknown configuration"):
        get_configuration("large")
    with pytest.raises(ValueError, match="patch_size"):
        SMALL.replace(patch_size=(96, 0, 48))
    with pytest.raises(ValueError, match="name"):
        SMALL.replace(name="small model")
    with pytest.raises(ValueError, match="time_budget_minutes"):
        SMALL.replace(time_budget_minutes=0)
    with pytest.raises(ValueError, match="no 3d_fullres"):
        apply_configuration({"configurations": {"2d": {}}, "transpose_forward": [0, 1, 2]}, SMALL)
