"""The MONAI Deploy application: lytic lesions of the femurs on CT, from a DICOM study to DICOM-SEG and SR.

Operator graph (each operator a thin shell over a plain function of :mod:`operators`)::

    FemurStudyLoaderOperator --loaded_series--> FemurSplitterOperator --femur_split--> FemurLesionOperator
            |                                          |                                     |
            |                                     femur_split                        lesion_segmentation
            +---------------loaded_series----------->  v                                     v
                                              StudyOutputsOperator  <------------------------+

The loader reads the study once (``CountCondition(1)``); the outputs operator writes ``seg.dcm``,
``sr.dcm``, ``report.json``, ``summary.txt`` and ``overview.png`` (see :mod:`operators.study_outputs`).

Paths come from the application context, as in every MONAI Deploy application: the ``-i/-o/-m``
arguments, else ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``, else
``input`` / ``output`` / ``models`` in the working folder. The model path may name the model folder or a
folder holding exactly one model (a MAP mounts its models as ``/opt/holoscan/models/<name>/``).

Environment variables tune where and how the models run:

``FEMUR_LESION_DEVICE``
    ``auto`` (default: CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a learned femur
    model runs there too.
``FEMUR_LESION_MIRRORING``
    ``1`` (default) or ``0``: nnU-Net's test-time mirroring, up to 8 passes per patch. Turning it off
    makes inference up to 8 times faster (worth it on a CPU-only machine) at some cost in accuracy.
``FEMUR_LESION_INPUT_RESAMPLING``
    How each femur crop is resampled to the model's spacing: ``torch`` (default: nnU-Net's linear
    torch resampling on the model's device) or ``plans`` (as the model's plans say: nnU-Net's cubic
    spline on the CPU, as in training, about a third slower per femur on 2 CPU cores; see
    :mod:`operators.nnunet_predictor`).
``FEMUR_LESION_TILE_STEP``
    Step between nnU-Net's sliding-window patches as a fraction of the patch, in (0, 1]; default 0.5
    (nnU-Net's: patches overlap by half). 0.75 is about a third faster per femur; on the shipped model
    and 20 held-out femurs it gave the same mean lesion Dice (the benchmark's settings table).
``FEMUR_SPLITTER_MODEL``
    A learned femur model for the splitter instead of the weight-free default: an nnU-Net model folder
    or a ``femur_model.json`` settings file (:func:`operators.femur_nnunet.femur_segmenter_from_settings`).
    Checked when the graph is composed, so a bad setting stops the run before any study is read.

Run it with ``python -m app`` (:mod:`app.cli`): that entry point turns problems with the input into a
one-line message and an exit status. Created directly (``FemurLesionSegApp().run()``), the application
records a problem found while a study is processed in :attr:`FemurLesionSegApp.failure` and stops
cleanly; a problem found while composing the graph (no model, bad settings) is raised by ``run()``, and so
is anything unexpected: Holoscan logs an exception raised in an operator's ``compute``, stops the graph
and re-raises the same exception object from ``run()``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, ExecutionContext, Fragment, InputContext, Operator, OutputContext

from operators.deploy.femur_splitter_operator import FemurSplitterOperator
from operators.deploy.lesion_operator import FemurLesionOperator
from operators.deploy.outputs_operator import StudyOutputsOperator
from operators.deploy.study_loader_operator import FemurStudyLoaderOperator
from operators.errors import FemurSegError
from operators.femur_splitter import FemurSegmenter

logger = logging.getLogger(__name__)

__all__ = ["DEVICE_VARIABLE", "FEMUR_MODEL_VARIABLE", "FemurLesionSegApp", "INPUT_RESAMPLING_VARIABLE",
           "MIRRORING_VARIABLE", "StageTimings", "TILE_STEP_VARIABLE"]

#: Where the lesion model runs: auto (default), cpu, cuda, cuda:N.
DEVICE_VARIABLE = "FEMUR_LESION_DEVICE"
#: nnU-Net's test-time mirroring: 1 (default) or 0.
MIRRORING_VARIABLE = "FEMUR_LESION_MIRRORING"
#: Resampling of the crops to the model's spacing: torch (default) or plans.
INPUT_RESAMPLING_VARIABLE = "FEMUR_LESION_INPUT_RESAMPLING"
#: Step between sliding-window patches, a fraction of the patch in (0, 1]: 0.5 (default).
TILE_STEP_VARIABLE = "FEMUR_LESION_TILE_STEP"
#: A learned femur model for the splitter (model folder or femur_model.json); unset: the classical splitter.
FEMUR_MODEL_VARIABLE = "FEMUR_SPLITTER_MODEL"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class StageTimings:
    """Wall time of the application's stages, in the order they ran (seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to ``stage``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        """Seconds since the timings were created."""
        return time.perf_counter() - self._started

    def describe(self) -> str:
        """One line: each stage's time and the total."""
        parts = [f"{stage} {seconds:.1f} s" for stage, seconds in self.seconds.items()]
        return ", ".join([*parts, f"total {self.total:.1f} s"])


class _Stage:
    """Mixin for the application's operators: times ``compute`` and stops the run on an input problem.

    A problem the user can act on (:class:`operators.errors.FemurSegError`: not a CT, unreadable files,
    no model...) is recorded on the application and stops every operator, so that the graph ends
    cleanly instead of Holoscan logging it as a crash; the entry point reports it in one line. Any
    other exception is a bug and propagates (Holoscan logs it and re-raises it from ``run()``).
    """

    def __init__(self, fragment: Fragment, *args: Any, stage: str, **kwargs: Any) -> None:
        self._app = fragment
        self._stage = stage
        super().__init__(fragment, *args, **kwargs)  # type: ignore[call-arg]

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        app: FemurLesionSegApp = self._app  # type: ignore[assignment]
        try:
            with app.timings.measure(self._stage):
                super().compute(op_input, op_output, context)  # type: ignore[misc]
        except FemurSegError as error:
            logger.debug("stage %s failed", self._stage, exc_info=True)
            logger.error("%s: %s", self._stage, error)
            app.failure = error
            app.stop_execution()


def _staged(operator: type[Operator]) -> type[Operator]:
    """``operator`` with the :class:`_Stage` behaviour, under the same name (its logs read the same)."""
    return type(operator.__name__, (_Stage, operator), {"__module__": __name__, "__doc__": operator.__doc__})


_StudyLoader = _staged(FemurStudyLoaderOperator)
_FemurSplitter = _staged(FemurSplitterOperator)
_LesionSegmenter = _staged(FemurLesionOperator)
_StudyOutputs = _staged(StudyOutputsOperator)


class FemurLesionSegApp(Application):
    """Segments the femurs and their lytic lesions in a CT study and writes DICOM-SEG, SR and reports.

    Outcomes of a run:

    * femurs with lesions: SEG with femur and lesion segments, SR with the findings;
    * femurs without lesion: SEG with the femur segments only, SR stating "Lesion: Absent";
    * no femur in view: no SEG; SR (when the CT has UIDs), report.json and summary.txt say so; a success;
    * not a CT, unreadable or empty input, no usable model: :attr:`failure` holds the problem, nothing is
      written to the output folder.

    Parameters
    ----------
    *args, **kwargs
        Passed to :class:`monai.deploy.core.Application` (e.g. ``argv``, from which the application
        context takes ``-i/-o/-m``).
    device : str, optional
        Where the lesion model runs: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"``; default ``FEMUR_LESION_DEVICE``, else ``"auto"``.
    use_mirroring : bool, optional
        nnU-Net's test-time mirroring; default ``FEMUR_LESION_MIRRORING``, else on.
    input_resampling : str, optional
        ``"torch"`` or ``"plans"``; default ``FEMUR_LESION_INPUT_RESAMPLING``, else ``"torch"``.
    tile_step_size : float, optional
        Sliding-window step, a fraction of the patch in (0, 1]; default ``FEMUR_LESION_TILE_STEP``, else 0.5.
    """

    def __init__(self, *args: Any, device: str | None = None, use_mirroring: bool | None = None,
                 input_resampling: str | None = None, tile_step_size: float | None = None,
                 **kwargs: Any) -> None:
        self.device = device
        self.use_mirroring = use_mirroring
        self.input_resampling = input_resampling
        self.tile_step_size = tile_step_size
        self.timings = StageTimings()
        self.failure: FemurSegError | None = None
        self.input_folder: Path | None = None
        self.output_folder: Path | None = None
        self.model_path: Path | None = None
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        """Build the operator graph from the application context's paths."""
        app_context = Application.init_app_context(self.argv)
        self.input_folder = Path(app_context.input_path)
        self.output_folder = Path(app_context.output_path)
        device = _device_setting(self.device)
        use_mirroring = _mirroring_setting(self.use_mirroring)
        input_resampling = _input_resampling_setting(self.input_resampling)
        tile_step_size = _tile_step_setting(self.tile_step_size)
        logger.info("input %s, output %s, model %s; lesion model on %s, mirroring %s, input resampling %s, "
                    "tile step %g", self.input_folder, self.output_folder, app_context.model_path, device,
                    "on" if use_mirroring else "off", input_resampling, tile_step_size)
        femur_segmenter = _femur_segmenter_setting(device)

        loader = _StudyLoader(self, CountCondition(self, 1), stage="load", input_folder=self.input_folder,
                              name="study_loader")
        splitter = _FemurSplitter(self, stage="split", segmenter=femur_segmenter, name="femur_splitter")
        lesions = _LesionSegmenter(self, stage="lesions", model_path=Path(app_context.model_path),
                                   device=device, use_mirroring=use_mirroring, input_resampling=input_resampling,
                                   tile_step_size=tile_step_size, name="lesion_segmenter")
        self.model_path = lesions.model_path
        outputs = _StudyOutputs(self, stage="outputs", output_folder=self.output_folder, name="study_outputs")

        self.add_flow(loader, splitter, {(FemurStudyLoaderOperator.OUTPUT_NAME, FemurSplitterOperator.INPUT_NAME)})
        self.add_flow(splitter, lesions, {(FemurSplitterOperator.OUTPUT_NAME, FemurLesionOperator.INPUT_NAME)})
        self.add_flow(loader, outputs, {(FemurStudyLoaderOperator.OUTPUT_NAME, StudyOutputsOperator.INPUT_LOADED)})
        self.add_flow(splitter, outputs, {(FemurSplitterOperator.OUTPUT_NAME, StudyOutputsOperator.INPUT_SPLIT)})
        self.add_flow(lesions, outputs,
                      {(FemurLesionOperator.OUTPUT_NAME, StudyOutputsOperator.INPUT_SEGMENTATION)})


def _device_setting(device: str | None) -> str:
    """The lesion model's device: the argument, else ``FEMUR_LESION_DEVICE``, else "auto"; checked."""
    value = (device if device is not None else os.environ.get(DEVICE_VARIABLE, "") or "auto").strip().lower()
    if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise FemurSegError(f"{DEVICE_VARIABLE} must be auto, cpu, cuda or cuda:N, got {value!r}")
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise FemurSegError(f"the lesion model is to run on {value}, but CUDA is not available here")
    return value


def _femur_segmenter_setting(device: str) -> FemurSegmenter | None:
    """The splitter's femur model from ``FEMUR_SPLITTER_MODEL`` (None: the classical segmenter); checked."""
    from operators.errors import ModelFolderError
    from operators.femur_nnunet import femur_segmenter_from_setting

    try:
        return femur_segmenter_from_setting(os.environ.get(FEMUR_MODEL_VARIABLE), device=device)
    except ModelFolderError as error:
        raise ModelFolderError(f"{error} (from {FEMUR_MODEL_VARIABLE})") from None


def _input_resampling_setting(input_resampling: str | None) -> str:
    """The crops' resampling: the argument, else ``FEMUR_LESION_INPUT_RESAMPLING``, else the default; checked."""
    from operators.lesion_model import DEFAULT_INPUT_RESAMPLING
    from operators.nnunet_predictor import INPUT_RESAMPLING_CHOICES

    value = (input_resampling if input_resampling is not None
             else os.environ.get(INPUT_RESAMPLING_VARIABLE, "") or DEFAULT_INPUT_RESAMPLING).strip().lower()
    if value not in INPUT_RESAMPLING_CHOICES:
        raise FemurSegError(f"{INPUT_RESAMPLING_VARIABLE} must be {' or '.join(INPUT_RESAMPLING_CHOICES)}, "
                            f"got {value!r}")
    return value


def _tile_step_setting(tile_step_size: float | None) -> float:
    """The sliding-window step: the argument, else ``FEMUR_LESION_TILE_STEP``, else 0.5; checked."""
    from operators.lesion_model import DEFAULT_TILE_STEP

    if tile_step_size is not None:
        value: float = tile_step_size
    else:
        text = os.environ.get(TILE_STEP_VARIABLE, "").strip()
        if not text:
            return DEFAULT_TILE_STEP
        try:
            value = float(text)
        except ValueError:
            raise FemurSegError(f"{TILE_STEP_VARIABLE} must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise FemurSegError(f"{TILE_STEP_VARIABLE} must be a number in (0, 1], got {value:g}")
    return float(value)


def _mirroring_setting(use_mirroring: bool | None) -> bool:
    """Test-time mirroring: the argument, else ``FEMUR_LESION_MIRRORING``, else on."""
    if use_mirroring is not None:
        return bool(use_mirroring)
    value = os.environ.get(MIRRORING_VARIABLE, "").strip().lower()
    if not value or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise FemurSegError(f"{MIRRORING_VARIABLE} must be 1 or 0, got {value!r}")
