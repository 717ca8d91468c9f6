"""The MONAI Deploy operator in a tiny real application: loader -> recording sink."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.series_selection import DEFAULT_RULES
from operators.series_volume import LoadedSeries
from tests.dicom_factory import write_ct_series

try:
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import Application, Operator, OperatorSpec

    from operators.deploy import FemurStudyLoaderOperator
except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when libcudart.so.13 is not found
    pytest.skip(
        f"holoscan cannot be imported ({type(exc).__name__}: {exc}); run through `make test`, which sets "
        "LD_LIBRARY_PATH to the CUDA runtime wheel's lib folder",
        allow_module_level=True,
    )


class _RecordingSink(Operator):
    """Stores whatever arrives on its ``loaded_series`` input."""

    def __init__(self, fragment: Any, *args: Any, received: list[Any], **kwargs: Any) -> None:
        self._received = received
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("loaded_series")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        self._received.append(op_input.receive("loaded_series"))


class _LoaderApp(Application):
    def __init__(self, *args: Any, input_folder: Path, received: list[Any], **kwargs: Any) -> None:
        self._input_folder = input_folder
        self._received = received
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        loader = FemurStudyLoaderOperator(
            self,
            CountCondition(self, 1),
            input_folder=self._input_folder,
            selection_rules=DEFAULT_RULES.with_options(min_slices=4),
            name="study_loader",
        )
        sink = _RecordingSink(self, received=self._received, name="sink")
        self.add_flow(loader, sink, {("loaded_series", "loaded_series")})


def test_operator_emits_the_loaded_series(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "study" / "nested", n_slices=6)
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    received: list[Any] = []
    # argv: only the program, so that Holoscan does not parse pytest's arguments.
    app = _LoaderApp([sys.executable], input_folder=tmp_path / "study", received=received)
    app.run()

    assert len(received) == 1
    loaded = received[0]
    assert isinstance(loaded, LoadedSeries)
    assert loaded.series.series_instance_uid == written.series_uid
    assert loaded.volume.array.dtype == np.float32
    assert loaded.volume.spatial_shape == (6, 16, 16)
    np.testing.assert_array_equal(loaded.volume.array, written.hu[::-1].astype(np.float32))
    assert len(loaded.source_datasets) == 6
