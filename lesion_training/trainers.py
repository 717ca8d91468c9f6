"""nnU-Net trainer for the femur lesion models: nnU-Net's default trainer with its schedule read from the plans.

nnU-Net fixes the training schedule in the trainer class (1000 epochs of 250 iterations, 50 validation
iterations) and offers shorter variants only by epoch count. Here the schedule is part of the plans
configuration the model is trained with (key ``femur_training_schedule``, written by
:func:`lesion_training.configurations.apply_configuration`), so one trainer serves the paper's GPU schedule
and the short CPU one, and a trained model's plans.json documents how it was trained. The same key may turn
the Dice smoothing off (``"dice_smoothing": false``: the loss of nnU-Net's own
``nnUNetTrainerDiceCELoss_noSmooth``; see
:attr:`lesion_training.configurations.TrainingConfiguration.dice_smoothing`). Everything else (network,
optimiser, learning-rate schedule, augmentation, validation, by default the loss) is nnU-Net's own.

Finding the class
    nnU-Net looks trainers up by name. Training runs with ``nnUNet_extTrainer`` pointing at a workspace
    folder that re-exports this module (see :mod:`lesion_training.nnunet_workspace`).

Loading trained models
    The trainer does not change how the network is built, so the slim export
    (:mod:`lesion_training.export`) names ``nnUNetTrainer`` in its checkpoints: the shipped model loads in
    any nnunetv2 installation, without this package. Full checkpoints left in a workspace's
    ``nnUNet_results`` name ``nnUNetTrainerFemur`` and load where ``nnUNet_extTrainer`` is set as
    :meth:`lesion_training.nnunet_workspace.NnUNetWorkspace.environment` sets it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerDiceLoss import nnUNetTrainerDiceCELoss_noSmooth

from lesion_training.configurations import SCHEDULE_KEY

# Epochs averaged for the time-left estimate: recent enough to follow changes in machine load.
_ETA_WINDOW = 5


class nnUNetTrainerFemur(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming scheme for trainers)
    """nnU-Net's default trainer with its schedule (and optionally an unsmoothed Dice) from the plans, and a
    one-line progress report per epoch.

    The plans configuration may hold ``femur_training_schedule`` with ``num_epochs``,
    ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch`` (missing keys keep nnU-Net's defaults:
    1000, 250, 50) and ``dice_smoothing`` (missing: true, nnU-Net's loss; false: the loss of nnU-Net's
    ``nnUNetTrainerDiceCELoss_noSmooth``, see
    :attr:`lesion_training.configurations.TrainingConfiguration.dice_smoothing` for when that matters).
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        schedule = self.configuration_manager.configuration.get(SCHEDULE_KEY) or {}
        self.num_epochs = int(schedule.get("num_epochs", self.num_epochs))
        self.num_iterations_per_epoch = int(schedule.get("num_iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(
            schedule.get("num_val_iterations_per_epoch", self.num_val_iterations_per_epoch)
        )
        # Short schedules would otherwise never write checkpoint_latest.pth to resume from.
        self.save_every = max(1, min(self.save_every, self.num_epochs // 10))
        self.dice_smoothing = bool(schedule.get("dice_smoothing", True))
        self._epoch_durations: list[float] = []

    def _build_loss(self):  # noqa: ANN202 (nnU-Net's signature)
        if self.dice_smoothing:
            return super()._build_loss()
        # nnU-Net's own variant, called on this trainer: the same Dice + CE with smooth = 0.
        return nnUNetTrainerDiceCELoss_noSmooth._build_loss(self)

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        start = self.logger.get_value("epoch_start_timestamps", step=-1)
        super().on_epoch_end()
        self._epoch_durations.append(time.time() - start)
        recent = self._epoch_durations[-_ETA_WINDOW:]
        seconds_left = float(np.mean(recent)) * (self.num_epochs - epoch - 1)
        dice = self.logger.get_value("dice_per_class_or_region", step=-1)
        self.print_to_log_file(
            f"progress: epoch {epoch + 1}/{self.num_epochs}"
            f" | train loss {self.logger.get_value('train_losses', step=-1):.4f}"
            f" | val loss {self.logger.get_value('val_losses', step=-1):.4f}"
            f" | pseudo Dice {[round(float(d), 4) for d in dice]}"
            f" | {recent[-1]:.1f} s/epoch | ETA {_format_duration(seconds_left)}"
        )


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{seconds:02d}"
