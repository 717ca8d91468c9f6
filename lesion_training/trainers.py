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
    1000, 250, 50), ``dice_smoothing`` (missing: true, nnU-Net's loss; false: the loss of nnU-Net's
    ``nnUNetTrainerDiceCELoss_noSmooth``, see
    :attr:`lesion_training.configurations.TrainingConfiguration.dice_smoothing` for when that matters) and
    ``time_budget_s`` (missing or null: no limit; else the training loop's wall-clock budget, see
    :meth:`fit_epochs_to_budget`).
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
        budget = schedule.get("time_budget_s")
        #: Wall-clock seconds the training loop may take (None: no limit); see :meth:`fit_epochs_to_budget`.
        self.time_budget_s: float | None = None if budget is None else float(budget)
        self._scheduled_epochs = self.num_epochs
        self._epoch_durations: list[float] = []
        self._loop_started: float | None = None

    def _build_loss(self):  # noqa: ANN202 (nnU-Net's signature)
        if self.dice_smoothing:
            return super()._build_loss()
        # nnU-Net's own variant, called on this trainer: the same Dice + CE with smooth = 0.
        return nnUNetTrainerDiceCELoss_noSmooth._build_loss(self)

    def run_training(self) -> None:
        """nnU-Net's training loop, re-reading ``num_epochs`` after every epoch (the time budget may lower it)."""
        self.on_train_start()
        self._loop_started = time.monotonic()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()

    def fit_epochs_to_budget(self, epochs_done: int, seconds_used: float) -> None:
        """Set ``num_epochs`` to what fits in the rest of :attr:`time_budget_s` at the recent epochs' pace.

        ``epochs_done`` epochs took ``seconds_used`` seconds of the loop. Re-fitted after every epoch, so
        slow first epochs (worker start-up, cuDNN's benchmark) do not fix the count for good; never more
        than the schedule's ``num_epochs``, never fewer than ``epochs_done``. The learning-rate schedule
        (nnU-Net's poly decay over ``num_epochs``) follows the new total, so the rate still reaches about
        zero at the last epoch.
        """
        if self.time_budget_s is None or not self._epoch_durations:
            return
        pace = float(np.mean(self._epoch_durations[-_ETA_WINDOW:]))
        fitting = epochs_done + int(max(0.0, self.time_budget_s - seconds_used) // max(pace, 1e-6))
        self.num_epochs = max(epochs_done, min(self._scheduled_epochs, fitting))
        if hasattr(self.lr_scheduler, "max_steps"):
            self.lr_scheduler.max_steps = max(self.num_epochs, 1)

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        start = self.logger.get_value("epoch_start_timestamps", step=-1)
        super().on_epoch_end()
        self._epoch_durations.append(time.time() - start)
        if self._loop_started is not None:
            self.fit_epochs_to_budget(epoch + 1, time.monotonic() - self._loop_started)
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
