"""MONAI Deploy operator that writes a study's results: DICOM-SEG, DICOM SR, report.json, summary.txt, overview."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.deploy.core import ExecutionContext, Fragment, InputContext, Operator, OperatorSpec, OutputContext

from operators.femur_splitter import FemurSplit
from operators.lesion_findings import FindingsConfig
from operators.lesion_segmentation import StudySegmentation
from operators.series_volume import LoadedSeries
from operators.study_outputs import OutputFiles, write_study_outputs

logger = logging.getLogger(__name__)


class StudyOutputsOperator(Operator):
    """Writes the results of one study into the output folder (see :mod:`operators.study_outputs`).

    A thin shell over :func:`operators.study_outputs.write_study_outputs`: ``seg.dcm`` (not when no
    femur is in view), ``sr.dcm``, ``report.json``, ``summary.txt`` and ``overview.png``, all moved into
    place only once complete.

    Named inputs:
        loaded_series: :class:`~operators.series_volume.LoadedSeries` -- the CT (float32 HU, array
        (z, y, x), affine index -> LPS mm) and its header datasets, which the SEG and SR reference.
        femur_split: :class:`~operators.femur_splitter.FemurSplit` -- the femurs found in that CT.
        lesion_segmentation: :class:`~operators.lesion_segmentation.StudySegmentation` -- femur, lesion
        and cyst masks on the CT's grid.

    No output port: the files are the result. :attr:`last_outputs` holds what the last study wrote.
    """

    INPUT_LOADED = "loaded_series"
    INPUT_SPLIT = "femur_split"
    INPUT_SEGMENTATION = "lesion_segmentation"

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_folder: Path,
        findings_config: FindingsConfig | None = None,
        overview: bool = True,
        **kwargs: Any,
    ) -> None:
        """Create the operator.

        Parameters
        ----------
        fragment : monai.deploy.core.Fragment
            The application (or fragment) the operator belongs to.
        *args
            Conditions and resources, passed to :class:`monai.deploy.core.Operator`.
        output_folder : pathlib.Path
            Where the files are written (created if needed).
        findings_config : FindingsConfig, optional
            How lesions are counted and described; ``FindingsConfig()`` when None.
        overview : bool
            Also render ``overview.png``.
        **kwargs
            Passed to :class:`monai.deploy.core.Operator` (e.g. ``name``).
        """
        self._logger = logger.getChild(type(self).__name__)
        self.output_folder = Path(output_folder)
        self.findings_config = findings_config
        self.overview = overview
        self.last_outputs: OutputFiles | None = None
        # The base class calls setup(), so the attributes above must exist first.
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the input ports ``loaded_series``, ``femur_split`` and ``lesion_segmentation``."""
        spec.input(self.INPUT_LOADED)
        spec.input(self.INPUT_SPLIT)
        spec.input(self.INPUT_SEGMENTATION)

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Write the received study's results into the output folder."""
        loaded = op_input.receive(self.INPUT_LOADED)
        split = op_input.receive(self.INPUT_SPLIT)
        segmentation = op_input.receive(self.INPUT_SEGMENTATION)
        for name, value, kind in ((self.INPUT_LOADED, loaded, LoadedSeries), (self.INPUT_SPLIT, split, FemurSplit),
                                  (self.INPUT_SEGMENTATION, segmentation, StudySegmentation)):
            if not isinstance(value, kind):
                raise TypeError(f"input '{name}' must be a {kind.__name__}, got {type(value).__name__}")
        outputs = write_study_outputs(
            self.output_folder, loaded=loaded, split=split, segmentation=segmentation,
            findings_config=self.findings_config, overview=self.overview,
        )
        for line in outputs.summary.read_text(encoding="utf-8").splitlines():
            self._logger.info("finding: %s", line)
        self._logger.info("results in %s: %s", self.output_folder, ", ".join(p.name for p in outputs.paths()))
        self.last_outputs = outputs
