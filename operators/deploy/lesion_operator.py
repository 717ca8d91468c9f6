"""MONAI Deploy operator that segments the lytic lesions of each femur with the nnU-Net lesion model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from monai.deploy.core import ExecutionContext, Fragment, InputContext, Operator, OperatorSpec, OutputContext

from operators.errors import FemurSegError
from operators.femur_splitter import FemurSplit
from operators.lesion_model import DEFAULT_INPUT_RESAMPLING, DEFAULT_TILE_STEP, LesionModel
from operators.lesion_segmentation import StudySegmentation, resolve_model_path, segment_lesions

logger = logging.getLogger(__name__)


class FemurLesionOperator(Operator):
    """Runs the lesion model on every femur-only crop and maps the lesions back onto the CT's grid.

    A thin shell over :func:`operators.lesion_segmentation.segment_lesions`. The model is loaded once,
    when the application starts, and kept for the operator's lifetime. On a GPU its warm-up
    (:meth:`~operators.lesion_model.LesionModel.start_warm_up`) then runs while the study is loaded and
    its femurs are split.

    Named input:
        femur_split: :class:`~operators.femur_splitter.FemurSplit` -- the femurs of the CT, each with its
        femur-only crop (float32 HU inside the femur, 0 outside; array (z, y, x), affine index -> LPS mm).

    Named output:
        lesion_segmentation: :class:`~operators.lesion_segmentation.StudySegmentation` -- per femur in
        view, femur, lytic lesion and (for models with that class) cyst masks, bool (z, y, x) on the
        full CT grid, lesions and cysts inside the femur; the model's identity; per-femur timings.
        Emitted also when no femur is in view (``femurs`` empty).
    """

    INPUT_NAME = "femur_split"
    OUTPUT_NAME = "lesion_segmentation"

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        model_path: Path,
        device: str = "auto",
        use_mirroring: bool = True,
        input_resampling: str = DEFAULT_INPUT_RESAMPLING,
        tile_step_size: float = DEFAULT_TILE_STEP,
        **kwargs: Any,
    ) -> None:
        """Create the operator.

        Parameters
        ----------
        fragment : monai.deploy.core.Fragment
            The application (or fragment) the operator belongs to.
        *args
            Conditions and resources, passed to :class:`monai.deploy.core.Operator`.
        model_path : pathlib.Path
            The nnU-Net lesion model: a model folder or zip, or a folder holding exactly one (as a MAP
            mounts ``/opt/holoscan/models/<name>/``). Checked here; the weights are read when the
            application starts.
        device : str
            ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        use_mirroring : bool
            nnU-Net's test-time mirroring (up to 8 passes per patch: better, slower).
        input_resampling : str
            ``"plans"`` or ``"torch"``: how crops are resampled to the model's spacing
            (:meth:`operators.lesion_model.LesionModel.from_folder`).
        tile_step_size : float
            Step between nnU-Net's sliding-window patches, as a fraction of the patch, in (0, 1]
            (nnU-Net's default 0.5: patches overlap by half; larger is faster).
        **kwargs
            Passed to :class:`monai.deploy.core.Operator` (e.g. ``name``).

        Raises
        ------
        operators.errors.ModelFolderError
            If no single model is found at ``model_path``.
        """
        self._logger = logger.getChild(type(self).__name__)
        self.model_path = resolve_model_path(model_path)
        self.device = device
        self.use_mirroring = use_mirroring
        self.input_resampling = input_resampling
        self.tile_step_size = tile_step_size
        self._model: LesionModel | None = None
        self._load_error: FemurSegError | None = None
        # The base class calls setup(), so the attributes above must exist first.
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the input port ``femur_split`` and the output port ``lesion_segmentation``."""
        spec.input(self.INPUT_NAME)
        spec.output(self.OUTPUT_NAME)

    def start(self) -> None:
        """Load the model as the application starts, before any study arrives.

        A model that cannot be loaded is reported by :meth:`compute` (the application's error path for
        problems found while a study is processed), not here.
        """
        try:
            _ = self.model
        except FemurSegError as error:
            self._load_error = error

    @property
    def model(self) -> LesionModel:
        """The lesion model, loaded on first access."""
        if self._load_error is not None:
            raise self._load_error
        if self._model is None:
            start = time.perf_counter()
            self._model = LesionModel.from_folder(self.model_path, device=self.device,
                                                  use_mirroring=self.use_mirroring,
                                                  input_resampling=self.input_resampling,
                                                  tile_step_size=self.tile_step_size)
            info = self._model.model_info
            self._logger.info("lesion model %s %s loaded on %s in %.1f s", info.name, info.version,
                              self._model.device, time.perf_counter() - start)
        return self._model

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Segment the lesions of the received femurs and emit the :class:`StudySegmentation`."""
        split = op_input.receive(self.INPUT_NAME)
        if not isinstance(split, FemurSplit):
            raise TypeError(f"input '{self.INPUT_NAME}' must be a FemurSplit, got {type(split).__name__}")
        segmentation: StudySegmentation = segment_lesions(split, self.model)
        if segmentation.femurs:
            self._logger.info(
                "lesions: %s",
                "; ".join(f"{side} femur {f.n_lesion_voxels} voxel(s) in {f.seconds:.1f} s"
                          for side, f in segmentation.femurs.items()),
            )
        else:
            self._logger.info("no femur in view: nothing to segment")
        op_output.emit(segmentation, self.OUTPUT_NAME)
