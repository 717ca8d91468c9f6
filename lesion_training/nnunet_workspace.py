"""A folder that holds everything nnU-Net reads and writes for training, and the variables that point to it.

nnU-Net v2 locates its data through environment variables (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``), read lazily since 2.8.0, so they can be set in-process just before a call as well
as passed to the subprocesses that run its commands. A workspace keeps the three folders side by side::

    <root>/nnUNet_raw/DatasetXXX_Name/            imagesTr/, labelsTr/, dataset.json
    <root>/nnUNet_preprocessed/DatasetXXX_Name/   plans, fingerprint, splits_final.json, data
    <root>/nnUNet_results/DatasetXXX_Name/        Trainer__Plans__configuration/fold_k/
    <root>/nnUNet_trainers/                       makes this project's trainers visible to nnU-Net
    <root>/export/                                slim model folders ready to ship

The project's trainer classes live in :mod:`lesion_training.trainers`. nnU-Net finds trainers by class name,
in its own package or in the folders listed in ``nnUNet_extTrainer``; the workspace's
``nnUNet_trainers/`` folder holds a one-line module that re-exports them, so the nnU-Net commands
(``nnUNetv2_train -tr nnUNetTrainerFemur ...``) work from a shell with :meth:`NnUNetWorkspace.environment`
set, without copying trainer code around.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

RAW = "nnUNet_raw"
PREPROCESSED = "nnUNet_preprocessed"
RESULTS = "nnUNet_results"
EXT_TRAINER = "nnUNet_extTrainer"
TRAINER_SHIM_FOLDER = "nnUNet_trainers"
EXPORT_FOLDER = "export"

# Variables nnU-Net reads for parallelism: data-augmentation workers per GPU, and worker processes
# of preprocessing, validation export and evaluation (the latter read once, at import).
N_PROC_DA = "nnUNet_n_proc_DA"
DEF_N_PROC = "nnUNet_def_n_proc"

_TRAINER_SHIM = '''"""Makes the femur lesion project's nnU-Net trainers visible to nnU-Net (nnUNet_extTrainer).

Written by lesion_training.nnunet_workspace; the classes live in lesion_training.trainers.
"""
from lesion_training.trainers import nnUNetTrainerFemur  # noqa: F401
'''
_TRAINER_SHIM_MODULE = "femur_trainers.py"


class NnUNetWorkspace:
    """The nnU-Net folders of one training workspace.

    Parameters
    ----------
    root : str or Path
        Folder of the workspace; created with its sub-folders if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        for folder in (self.raw, self.preprocessed, self.results, self.trainer_shims, self.export):
            folder.mkdir(parents=True, exist_ok=True)
        shim = self.trainer_shims / _TRAINER_SHIM_MODULE
        if not shim.is_file() or shim.read_text(encoding="utf-8") != _TRAINER_SHIM:
            shim.write_text(_TRAINER_SHIM, encoding="utf-8")

    def __repr__(self) -> str:
        return f"NnUNetWorkspace({str(self.root)!r})"

    @property
    def raw(self) -> Path:
        """``nnUNet_raw``: one ``DatasetXXX_Name`` folder per dataset."""
        return self.root / RAW

    @property
    def preprocessed(self) -> Path:
        """``nnUNet_preprocessed``: plans, fingerprints, splits and preprocessed data."""
        return self.root / PREPROCESSED

    @property
    def results(self) -> Path:
        """``nnUNet_results``: trained models, one folder per trainer, plans and configuration."""
        return self.root / RESULTS

    @property
    def trainer_shims(self) -> Path:
        """The folder named in ``nnUNet_extTrainer``."""
        return self.root / TRAINER_SHIM_FOLDER

    @property
    def export(self) -> Path:
        """Default destination of slim model exports."""
        return self.root / EXPORT_FOLDER

    def nnunet_variables(
        self, *, training_device: str | None = None, worker_processes: int | None = None
    ) -> dict[str, str]:
        """The nnU-Net variables for this workspace (not the rest of the environment).

        Parameters
        ----------
        training_device : str, optional
            ``"cpu"`` or ``"cuda"`` for a training process. On CPU, data augmentation runs in the
            training process (``nnUNet_n_proc_DA=0``), where separate workers would only compete with
            the network for the same cores. Values already set in the environment are kept.
        worker_processes : int, optional
            ``nnUNet_def_n_proc``: worker processes of nnU-Net's validation export and evaluation;
            default: the environment's value, else the CPU count (at most 8).
        """
        cpus = os.cpu_count() or 1
        variables = {
            RAW: str(self.raw),
            PREPROCESSED: str(self.preprocessed),
            RESULTS: str(self.results),
            EXT_TRAINER: os.pathsep.join(
                p for p in (str(self.trainer_shims), os.environ.get(EXT_TRAINER, "")) if p
            ),
            # nnU-Net's default of 8 worker processes oversubscribes small machines.
            DEF_N_PROC: str(worker_processes) if worker_processes else os.environ.get(
                DEF_N_PROC, str(max(1, min(8, cpus)))
            ),
        }
        if training_device == "cpu":
            variables[N_PROC_DA] = os.environ.get(N_PROC_DA, "0")
        elif os.environ.get(N_PROC_DA) == "0":
            # nnU-Net's planner hands this value to torch.set_num_threads, which refuses 0.
            variables[N_PROC_DA] = "1"
        return variables

    def environment(
        self,
        *,
        training_device: str | None = None,
        worker_processes: int | None = None,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """A full environment for an nnU-Net subprocess working in this workspace.

        Parameters
        ----------
        training_device, worker_processes
            See :meth:`nnunet_variables`.
        base : mapping, optional
            Environment to start from; default ``os.environ``.

        Returns
        -------
        dict
            ``base`` plus the nnU-Net variables, and this project on ``PYTHONPATH`` so that the trainer
            re-export in ``nnUNet_trainers/`` can import :mod:`lesion_training.trainers`.
        """
        env = dict(os.environ if base is None else base)
        env.update(self.nnunet_variables(training_device=training_device, worker_processes=worker_processes))
        project_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
        return env

    @contextlib.contextmanager
    def activate(self) -> Iterator[NnUNetWorkspace]:
        """Set the nnU-Net variables in this process for the duration of a ``with`` block.

        Previous values are restored on exit. nnU-Net reads the folder variables lazily, so calls
        into its API inside the block use this workspace; ``nnUNet_def_n_proc`` is read when
        ``nnunetv2.configuration`` is first imported and only takes effect if that happens inside.
        """
        variables = self.nnunet_variables()
        previous = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            yield self
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
