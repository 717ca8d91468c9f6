"""The training configurations, applied by editing the plans nnU-Net generates.

nnU-Net plans a dataset by itself (target spacing, patch size, network topology, batch size). The
configurations below start from those plans and change only what they list; the network topology
for a given patch size still comes from nnU-Net's own rule (``get_pool_and_conv_props``). Each is
saved under its own plans identifier (``nnUNetPlans_femur_<name>``), so all can live in one workspace.

``paper`` — the configuration of Rachmil et al. (2024), for a GPU
    =========================  ===================================  =====================
    item                       value                                nnU-Net default?
    =========================  ===================================  =====================
    configuration              3d_fullres, PlainConvUNet            default
    target spacing             dataset median (nnU-Net's rule)      default
    patch (z, y, x)            384 x 64 x 96 (clipped to the        set (nnU-Net derives its
                               median shape, then padded to a       own from GPU memory)
                               multiple of the pooling factor)
    stages                     6 (5 downsamplings, bottleneck       set (caps nnU-Net's rule,
                               12 x 4 x 6 on 384 x 64 x 96)         which would pool z 6 times)
    features per stage         32, 64, 128, 256, 320, 320           default (32 doubling, cap 320)
    normalisation              instance norm, leaky ReLU            default
    batch size                 2                                    set (= nnU-Net's minimum)
    schedule                   1000 epochs x 250 iterations,        default
                               50 validation iterations
    optimiser, learning rate   SGD Nesterov 0.99, lr 0.01,          default
                               poly decay (exponent 0.9)
    loss                       cross-entropy + Dice, deep           default
                               supervision
    intensity normalisation    per-case z-score over femur voxels   set (see below)
    =========================  ===================================  =====================

``small`` — one fold trains on 2 CPU cores in about half an hour
    =========================  ===================================  ==========================
    item                       value                                why
    =========================  ===================================  ==========================
    target spacing             at least 2.0 x 1.6 x 1.6 mm          a femur crop of ~560 x 110 x
                                                                    110 at 1.0 x 0.8 x 0.8 mm
                                                                    becomes ~280 x 45 x 45; the
                                                                    paper's lesions (~19,000
                                                                    voxels at ~0.85 mm) keep
                                                                    ~2,000 voxels
    patch (z, y, x)            96 x 48 x 48 (19 x 8 x 8 cm)         the femur's whole width
    stages, features           5 stages, 16 .. 128                  a quarter of nnU-Net's width:
                                                                    3.7 M parameters, 15 MB
                                                                    exported per fold
    batch size                 2                                    nnU-Net's minimum
    schedule                   40 epochs x 25 iterations, 5         1,000 iterations
                               validation iterations
    Dice loss                  over the batch (nnU-Net: per patch   per patch, lesion-free patches
                               when crops fit a patch)              reward lesion probabilities of
                                                                    ~1e-10 and a short run never
                                                                    leaves that state
    =========================  ===================================  ==========================

    Measured on the toy dataset at that crop size (2-core machine shared with other work): one
    training iteration costs ~2.0 CPU-seconds (network with deep supervision; data augmentation
    0.05-0.3 s of it), i.e. ~1.2 s on two idle cores and ~20 min for the schedule; predicting one
    560 x 110 x 110 crop costs ~5 CPU-seconds without test-time mirroring and ~22 with it.
    Everything else as ``paper``.

``small_gpu`` — the ``small`` network on a GPU, for the shipped model
    The same grid, patch and network as ``small`` (so the model predicts on a CPU as fast as a
    ``small`` one), trained with batch 8 for as many epochs of 250 iterations as fit in a time budget
    (7.5 minutes by default, at most 1000 epochs; ``time_budget_minutes``). Epochs of nnU-Net's 250
    iterations, not fewer: each epoch ends with about a second of logging and plotting, which took a
    third of the time with epochs of 50 iterations on an H200. Eight patches per batch
    with the Dice over the batch leave few batches without any lesion voxel (nnU-Net samples a third
    of the patches around foreground): the batches of two in which the smoothed Dice rewards
    predicting no lesion at all (``dice_smoothing``) become rare. On a GPU the data augmentation
    (nnU-Net's worker processes on the CPU) sets the pace, not the network.

Intensity normalisation, all configurations
    Femur-only crops hold HU inside the femur and 0 outside. nnU-Net's ``CT`` scheme would normalise
    with dataset-wide statistics over the whole crop, zeros included; the paper z-scores each femur
    over its own voxels. ``ZScoreNormalization`` with ``use_mask_for_norm: [true]`` does exactly that:
    statistics over the non-zero (hole-filled) region, 0 elsewhere. The planner enables the mask only
    when cropping removes more than a quarter of the image, so it is set here explicitly; datasets
    name their channel ``femur_CT_zscore`` so that re-planning by hand does not pick ``CT``.

Schedules, and whether the Dice loss is smoothed, are written into the plans (``femur_training_schedule``)
and read by :class:`lesion_training.trainers.nnUNetTrainerFemur`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: nnU-Net configuration both configurations train.
NNUNET_CONFIGURATION = "3d_fullres"
#: Key of the training schedule (and the Dice smoothing switch) inside a plans configuration (read by the trainer).
SCHEDULE_KEY = "femur_training_schedule"
#: Trainer class (``lesion_training.trainers``) that reads the schedule.
TRAINER_NAME = "nnUNetTrainerFemur"

# nnU-Net planner constants reused unchanged (ExperimentPlanner: UNet_featuremap_min_edge_length,
# UNet_blocks_per_stage_encoder/decoder).
_MIN_FEATURE_MAP_EDGE = 4
_CONVS_PER_STAGE = 2


@dataclass(frozen=True)
class FineTuneSchedule:
    """How long a fine-tuning run (:func:`lesion_training.finetune.fine_tune`) trains: ``num_epochs`` x
    ``iterations_per_epoch`` batches, plus ``val_iterations_per_epoch`` validation batches per epoch, with
    which Dice (``dice_smoothing``, as :attr:`TrainingConfiguration.dice_smoothing`), and whether the
    network's output layer starts from the base model's (``keep_output_layer``).

    nnU-Net's fine-tuning (``-pretrained_weights``) transfers every weight but the 1x1 output convolutions,
    which it initialises afresh: it is made for a new task with other labels. Fine-tuning here always has
    the base model's labels, so by default those convolutions are carried over too and the classes the
    base model knows stay known from the first iteration. Re-initialised, a class the new cases rarely show
    has to be learned again: a cyst class that 1,000 iterations on 40 patients did not bring back
    (``docs/training/experiments.md``).
    """

    num_epochs: int = 10
    iterations_per_epoch: int = 25
    val_iterations_per_epoch: int = 5
    dice_smoothing: bool = True
    keep_output_layer: bool = True

    def __post_init__(self) -> None:
        for name in ("num_epochs", "iterations_per_epoch", "val_iterations_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class TrainingConfiguration:
    """What a configuration changes in nnU-Net's generated plans, and its training schedule.

    All sizes are in the canonical array order (z, y, x) of the HPL orientation; they are mapped to
    nnU-Net's internal axis order (``transpose_forward``) when applied.

    Attributes
    ----------
    name : str
        Short name, part of the plans identifier.
    description : str
        One line for logs and model.json.
    patch_size : tuple of int
        Patch (z, y, x) in voxels at the target spacing; clipped to the dataset's median shape and
        padded to a multiple of the pooling factor, as nnU-Net's planner does.
    n_stages : int
        Encoder stages (downsamplings + 1); fewer if the patch is too small to pool that often.
    base_features, max_features : int
        Features of the first stage, doubling per stage up to ``max_features``.
    batch_size : int
        Patches per iteration.
    min_target_spacing : tuple of float or None
        Lower bound (sz, sy, sx) in mm on nnU-Net's target spacing, or None to keep nnU-Net's.
    num_epochs, iterations_per_epoch, val_iterations_per_epoch : int
        Training schedule.
    batch_dice : bool or None
        Dice loss over the whole batch (True) or per patch (False); None keeps nnU-Net's choice, which
        is per patch when the femur crops fit a patch (no 3d_lowres). Per patch, a patch without lesion
        scores a Dice of 1 only when every lesion probability is ~1e-10: in a short schedule, where most
        patches hold no lesion, the network settles there and never predicts a lesion.
    dice_smoothing : bool
        True (nnU-Net's default, and the paper's): the soft Dice ``(2 I + s) / (G + P + s)`` with
        ``s = 1e-5``. False: ``s = 0`` (nnU-Net's ``nnUNetTrainerDiceCELoss_noSmooth``). With smoothing a
        class absent from a batch (``I = G = 0``) scores ``s / (P + s)``, near 1 once its predicted mass
        ``P`` is tiny, so suppressing lesions wherever a batch has none is rewarded; without it an absent
        class adds 0 and no gradient. Measured on the short CPU schedule (see ``docs/training/experiments.md``): on 40
        synthetic patients neither was clearly better; on 120, training with smoothing collapsed (lesion
        pseudo-Dice 0 throughout) and training without reached a held-out lesion Dice of 0.16.
    time_budget_minutes : float or None
        Wall-clock minutes the training loop may take (None: no limit). After each epoch the trainer
        sets the number of epochs to what fits in the rest of the budget at the recent epochs' pace (at
        most ``num_epochs``), and the learning-rate schedule follows the new total, so a run on an
        unknown machine ends on time with its learning rate decayed as nnU-Net's poly schedule intends
        (:class:`lesion_training.trainers.nnUNetTrainerFemur`). The epochs trained are in the training
        log, the checkpoint and the exported model.json (``training.epochs_trained``).
    """

    name: str
    description: str
    patch_size: tuple[int, int, int]
    n_stages: int
    base_features: int
    max_features: int
    batch_size: int
    min_target_spacing: tuple[float, float, float] | None
    num_epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    batch_dice: bool | None = None
    dice_smoothing: bool = True
    time_budget_minutes: float | None = None

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"configuration name must be letters, digits and '_', got {self.name!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive voxel counts (z, y, x), got {self.patch_size}")
        if self.min_target_spacing is not None and (
            len(self.min_target_spacing) != 3 or min(self.min_target_spacing) <= 0
        ):
            raise ValueError(f"min_target_spacing must be three positive mm (z, y, x), got {self.min_target_spacing}")
        for name in ("n_stages", "base_features", "max_features", "batch_size", "num_epochs",
                     "iterations_per_epoch", "val_iterations_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_features < self.base_features:
            raise ValueError("max_features must be at least base_features")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(f"time_budget_minutes must be positive minutes, got {self.time_budget_minutes}")

    @property
    def plans_identifier(self) -> str:
        """nnU-Net plans identifier of this configuration (plans file name without ``.json``)."""
        return f"nnUNetPlans_femur_{self.name}"

    def replace(self, **changes: Any) -> TrainingConfiguration:
        """A copy with some fields changed (e.g. a shorter schedule under a new name)."""
        return dataclasses.replace(self, **changes)


PAPER = TrainingConfiguration(
    name="paper",
    description="Rachmil et al. 2024: 3d_fullres, patch 384x64x96, 6 stages 32-320, 1000x250 iterations",
    patch_size=(384, 64, 96),
    n_stages=6,
    base_features=32,
    max_features=320,
    batch_size=2,
    min_target_spacing=None,
    num_epochs=1000,
    iterations_per_epoch=250,
    val_iterations_per_epoch=50,
)

SMALL = TrainingConfiguration(
    name="small",
    description="CPU: >=2.0x1.6x1.6 mm, patch 96x48x48, 5 stages 16-128, 40x25 iterations",
    patch_size=(96, 48, 48),
    n_stages=5,
    base_features=16,
    max_features=128,
    batch_size=2,
    min_target_spacing=(2.0, 1.6, 1.6),
    num_epochs=40,
    iterations_per_epoch=25,
    val_iterations_per_epoch=5,
    batch_dice=True,
)

SMALL_GPU = SMALL.replace(
    name="small_gpu",
    description="GPU: the small network and grid, batch 8, up to 1000x250 iterations within a 7.5-minute budget",
    batch_size=8,
    num_epochs=1000,
    iterations_per_epoch=250,
    val_iterations_per_epoch=10,
    time_budget_minutes=7.5,
)

CONFIGURATIONS: dict[str, TrainingConfiguration] = {c.name: c for c in (PAPER, SMALL, SMALL_GPU)}


def get_configuration(name: str) -> TrainingConfiguration:
    """The configuration called ``name`` (``"paper"``, ``"small"`` or ``"small_gpu"``)."""
    try:
        return CONFIGURATIONS[name]
    except KeyError:
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGURATIONS)}") from None


def target_spacing(planned_spacing: Sequence[float], configuration: TrainingConfiguration) -> tuple[float, ...]:
    """The target spacing (sz, sy, sx) in mm: nnU-Net's planned one, coarsened to the configuration's bound.

    Parameters
    ----------
    planned_spacing : sequence of float
        nnU-Net's full-resolution target spacing (z, y, x) in mm, in the array order of the dataset
        (not transposed).
    configuration : TrainingConfiguration
        Supplies ``min_target_spacing``.
    """
    planned = tuple(float(s) for s in planned_spacing)
    if configuration.min_target_spacing is None:
        return planned
    return tuple(max(p, m) for p, m in zip(planned, configuration.min_target_spacing))


def apply_configuration(plans: dict, configuration: TrainingConfiguration) -> dict:
    """Edit nnU-Net's generated plans into a configuration's plans.

    Parameters
    ----------
    plans : dict
        Contents of a plans file written by nnU-Net's ``ExperimentPlanner`` with a ``3d_fullres``
        configuration (planned at the configuration's target spacing, see :func:`target_spacing`).
    configuration : TrainingConfiguration
        What to change.

    Returns
    -------
    dict
        New plans (the input is not modified) named ``configuration.plans_identifier``, holding only
        ``3d_fullres`` with the configuration's patch, topology, features, batch size, masked z-score
        normalisation and schedule.

    Raises
    ------
    ValueError
        If the plans have no 3d_fullres configuration or no valid transpose.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    plans = copy.deepcopy(plans)
    configurations = plans.get("configurations", {})
    if NNUNET_CONFIGURATION not in configurations:
        raise ValueError(f"plans {plans.get('plans_name')!r} have no {NNUNET_CONFIGURATION} configuration")
    transpose = [int(a) for a in plans.get("transpose_forward", [])]
    if sorted(transpose) != [0, 1, 2]:
        raise ValueError(f"plans have an invalid transpose_forward {transpose}")
    fullres = configurations[NNUNET_CONFIGURATION]
    n_channels = len(fullres["normalization_schemes"])

    # nnU-Net's internal order puts the coarsest axis first; the configuration speaks (z, y, x).
    spacing = [float(s) for s in fullres["spacing"]]
    median_shape = [float(s) for s in fullres["median_image_size_in_voxels"]]
    wanted = [configuration.patch_size[axis] for axis in transpose]
    clipped = [max(1, min(w, int(round(m)))) for w, m in zip(wanted, median_shape)]
    _, strides, kernel_sizes, patch_size, _ = get_pool_and_conv_props(
        spacing, clipped, _MIN_FEATURE_MAP_EDGE, configuration.n_stages - 1
    )
    n_stages = len(strides)
    if n_stages < configuration.n_stages:
        logger.info("patch %s allows %d stages, not %d", list(patch_size), n_stages, configuration.n_stages)

    arch_kwargs = fullres["architecture"]["arch_kwargs"]
    arch_kwargs.update(
        n_stages=n_stages,
        features_per_stage=[min(configuration.base_features * 2 ** i, configuration.max_features)
                            for i in range(n_stages)],
        kernel_sizes=[list(k) for k in kernel_sizes],
        strides=[list(s) for s in strides],
        n_conv_per_stage=[_CONVS_PER_STAGE] * n_stages,
        n_conv_per_stage_decoder=[_CONVS_PER_STAGE] * (n_stages - 1),
    )
    fullres.update(
        data_identifier=f"{configuration.plans_identifier}_{NNUNET_CONFIGURATION}",
        patch_size=[int(p) for p in patch_size],
        batch_size=int(configuration.batch_size),
        normalization_schemes=["ZScoreNormalization"] * n_channels,
        use_mask_for_norm=[True] * n_channels,
    )
    if configuration.batch_dice is not None:
        fullres["batch_dice"] = bool(configuration.batch_dice)
    fullres[SCHEDULE_KEY] = schedule_entry(configuration)
    plans["plans_name"] = configuration.plans_identifier
    plans["configurations"] = {NNUNET_CONFIGURATION: fullres}
    return plans


def schedule_entry(configuration: TrainingConfiguration) -> dict[str, Any]:
    """The plans entry ``femur_training_schedule`` of a configuration, as the trainer reads it."""
    return {
        "configuration": configuration.name,
        "num_epochs": configuration.num_epochs,
        "num_iterations_per_epoch": configuration.iterations_per_epoch,
        "num_val_iterations_per_epoch": configuration.val_iterations_per_epoch,
        "dice_smoothing": bool(configuration.dice_smoothing),
        "time_budget_s": None if configuration.time_budget_minutes is None
        else round(60.0 * configuration.time_budget_minutes, 1),
    }
