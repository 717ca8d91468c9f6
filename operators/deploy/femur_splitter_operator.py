"""MONAI Deploy operator that splits a CT into one femur-only volume per femur."""

from __future__ import annotations

import logging
from typing import Any

import highdicom as hd
from monai.deploy.core import ExecutionContext, Fragment, InputContext, Operator, OperatorSpec, OutputContext

from operators.femur_splitter import FemurSegmenter, FemurSplit, SplitterConfig, split_femurs

logger = logging.getLogger(__name__)


class FemurSplitterOperator(Operator):
    """Segments the femurs of a CT and cuts each out into its own femur-only volume.

    A thin shell over :func:`operators.femur_splitter.split_femurs`.

    Named input:
        loaded_series: an object with a ``volume`` attribute holding the CT (e.g. a
        :class:`~operators.series_volume.LoadedSeries`), or a ``highdicom.Volume`` itself: float32
        HU, array (z, y, x) = (slice, row, column), affine index -> LPS mm, any orientation.

    Named output:
        femur_split: :class:`~operators.femur_splitter.FemurSplit`, emitted also when no femur is
        in view (``femurs`` empty, ``no_femur_reason`` set), so that downstream operators can report
        that outcome instead of the pipeline stalling.
    """

    INPUT_NAME = "loaded_series"
    OUTPUT_NAME = "femur_split"

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        config: SplitterConfig | None = None,
        segmenter: FemurSegmenter | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the operator.

        Parameters
        ----------
        fragment : monai.deploy.core.Fragment
            The application (or fragment) the operator belongs to.
        *args
            Conditions and resources, passed to :class:`monai.deploy.core.Operator`.
        config : SplitterConfig, optional
            Splitter configuration; ``SplitterConfig()`` when None.
        segmenter : FemurSegmenter, optional
            Femur segmenter; the classical, weight-free one when None.
        **kwargs
            Passed to :class:`monai.deploy.core.Operator` (e.g. ``name``).
        """
        self._logger = logger.getChild(type(self).__name__)
        self.config = config or SplitterConfig()
        self.segmenter = segmenter
        # The base class calls setup(), so the attributes above must exist first.
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the input port ``loaded_series`` and the output port ``femur_split``."""
        spec.input(self.INPUT_NAME)
        spec.output(self.OUTPUT_NAME)

    @staticmethod
    def _volume_of(received: Any) -> hd.Volume:
        if isinstance(received, hd.Volume):
            return received
        volume = getattr(received, "volume", None)
        if isinstance(volume, hd.Volume):
            return volume
        raise TypeError(
            f"input '{FemurSplitterOperator.INPUT_NAME}' must be a highdicom.Volume or have a .volume "
            f"attribute holding one, got {type(received).__name__}"
        )

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Split the received CT and emit the :class:`FemurSplit` on ``femur_split``."""
        ct = self._volume_of(op_input.receive(self.INPUT_NAME))
        split: FemurSplit = split_femurs(ct, config=self.config, segmenter=self.segmenter)
        if split.femurs:
            for side, crop in split.femurs.items():
                self._logger.info(
                    "%s femur: %.0f ml, %.0f mm long, crop %s",
                    side, crop.volume_ml, crop.length_mm, "x".join(str(n) for n in crop.mask.shape),
                )
        else:
            self._logger.warning("no femur in view: %s", split.no_femur_reason)
        for note in split.notes:
            self._logger.info("note: %s", note)
        op_output.emit(split, self.OUTPUT_NAME)
