"""MONAI Deploy operator that loads the CT series to segment from a folder of DICOM files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.deploy.core import ExecutionContext, Fragment, InputContext, Operator, OperatorSpec, OutputContext

from operators.series_selection import SelectionRules
from operators.series_volume import GeometryPolicy, LoadedSeries, load_study

logger = logging.getLogger(__name__)


class FemurStudyLoaderOperator(Operator):
    """Scans a DICOM folder, selects the CT series to segment and decodes it into a HU volume.

    A thin shell over :func:`operators.series_volume.load_study`: header-only scan of any folder
    layout, series selection by :class:`~operators.series_selection.SelectionRules`, geometry QC and
    decoding into a float32 Hounsfield-unit ``highdicom.Volume``.

    Named output:
        loaded_series: :class:`~operators.series_volume.LoadedSeries` -- ``volume`` (float32 HU,
        array (z, y, x) = (slice, row, column), affine index -> LPS mm), ``source_datasets`` (header
        datasets in the volume's slice order, for a DICOM SEG writer), ``series`` and ``geometry``.

    Problems with the input raise an :class:`operators.errors.InputError` subclass whose one-line
    message names the file or series concerned.
    """

    OUTPUT_NAME = "loaded_series"

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        input_folder: Path,
        selection_rules: SelectionRules | None = None,
        geometry_policy: GeometryPolicy | None = None,
        max_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the operator.

        Parameters
        ----------
        fragment : monai.deploy.core.Fragment
            The application (or fragment) the operator belongs to.
        *args
            Conditions and resources, passed to :class:`monai.deploy.core.Operator` (e.g. a
            ``CountCondition(fragment, 1)`` so that the study is loaded once).
        input_folder : pathlib.Path
            Folder holding the study's DICOM files. It is only read.
        selection_rules : SelectionRules, optional
            Series selection rules; the default rules (original primary axial CT, thinnest first) when None.
        geometry_policy : GeometryPolicy, optional
            Geometry tolerances; ``GeometryPolicy()`` when None.
        max_workers : int, optional
            Decoding threads.
        **kwargs
            Passed to :class:`monai.deploy.core.Operator` (e.g. ``name``).
        """
        self._logger = logger.getChild(type(self).__name__)
        self.input_folder = Path(input_folder)
        self.selection_rules = selection_rules
        self.geometry_policy = geometry_policy
        self.max_workers = max_workers
        # The base class calls setup(), so the attributes above must exist first.
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the output port ``loaded_series``."""
        spec.output(self.OUTPUT_NAME)

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Load the study and emit the :class:`LoadedSeries` on ``loaded_series``."""
        self._logger.info("loading DICOM study from %s", self.input_folder)
        loaded: LoadedSeries = load_study(
            self.input_folder,
            rules=self.selection_rules,
            policy=self.geometry_policy,
            max_workers=self.max_workers,
        )
        self._logger.info(
            "emitting %s: volume %s, slice spacing %.3g mm",
            loaded.series.describe(),
            "x".join(str(n) for n in loaded.volume.shape),
            loaded.geometry.slice_spacing_mm,
        )
        op_output.emit(loaded, self.OUTPUT_NAME)
