"""Broken and hostile input: every case of :mod:`synthetic_ct.bad_input` through the loader.

Each case gives the result its ``case.json`` states: a volume equal to the one of the clean series it
was made from, or one of the product's errors whose one-line, printable message names the problem and
the file. The input is never changed, and neither logs (at debug level) nor messages carry the
corpus' patient identifiers. ``tests/test_bad_input_app.py`` runs some cases through ``python -m app``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from operators.errors import FemurSegError
from operators.series_volume import GeometryPolicy, LoadedSeries, load_study
from synthetic_ct.bad_input import BAD_INPUT_CASES, BadInputCase, main, write_case, write_series
from tests.bad_input_support import find_tokens, make_removable, tree_digest

_BASE_SHAPE = (12, 32, 32)


def test_the_corpus_covers_the_requirement() -> None:
    names = {case.name for case in BAD_INPUT_CASES}
    assert len(names) - 1 >= 25  # every case but the valid reference is broken or hostile
    for required in ("truncated_pixel_data", "missing_pixel_data", "declared_jpeg_native_data",
                     "missing_image_position", "contradictory_orientation", "one_slice", "two_slices",
                     "duplicate_file", "missing_slice", "uneven_spacing", "gantry_tilt", "mixed_image_sizes",
                     "enhanced_multiframe_ct", "mr_only", "rgb_only", "dicomdir_only", "empty_folder",
                     "unreadable_extra_file", "symlink_loop", "non_ascii_names_and_values",
                     "memory_bomb_rows_columns", "large_matrix", "thousands_of_files"):
        assert required in names
    for case in BAD_INPUT_CASES:
        if case.expected.outcome == "error":
            assert case.expected.error and case.expected.words, case.name
        else:
            assert case.expected.shape is not None, case.name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> LoadedSeries:
    """The clean series every case starts from, loaded."""
    return load_study(write_case("valid_reference", tmp_path_factory.mktemp("reference") / "input"))


@pytest.fixture
def case_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "input"
    yield folder
    make_removable(tmp_path)


@pytest.mark.parametrize("case", BAD_INPUT_CASES, ids=[c.name for c in BAD_INPUT_CASES])
def test_case_gives_its_documented_outcome(
    case: BadInputCase, case_folder: Path, reference: LoadedSeries, caplog: pytest.LogCaptureFixture
) -> None:
    write_case(case, case_folder)
    before = tree_digest(case_folder)
    caplog.set_level(logging.DEBUG)
    message = ""
    if case.expected.outcome == "ok":
        loaded = load_study(case_folder)
        assert loaded.volume.shape == case.expected.shape
        assert loaded.volume.array.dtype == np.float32
        assert np.isfinite(loaded.volume.array).all()
        assert len(loaded.source_datasets) == case.expected.shape[0]
        if case.expected.shape == _BASE_SHAPE:
            # The same volume as the clean series: values and geometry.
            assert np.array_equal(loaded.volume.array, reference.volume.array)
            assert np.allclose(loaded.volume.affine, reference.volume.affine)
    else:
        with pytest.raises(FemurSegError) as raised:
            load_study(case_folder)
        error = raised.value
        message = str(error)
        assert type(error).__name__ == case.expected.error, message
        assert error.exit_code == 2
        assert message.isprintable() and "\n" not in message, repr(message)
        for word in case.expected.words:
            assert word in message, f"{word!r} not in {message!r}"
    assert tree_digest(case_folder) == before, "the input was changed"
    assert find_tokens(caplog.text + message) == [], "patient identifiers in the log or the message"


def test_a_memory_bomb_is_refused_before_any_allocation(case_folder: Path) -> None:
    # The volume would be 12 x 65535 x 65535 float32 (192 GiB): refused from the headers, so the
    # numpy allocation that would raise MemoryError (or, with overcommit, get the process killed)
    # never happens. A tighter policy refuses the large valid study the same way.
    write_case("memory_bomb_rows_columns", case_folder)
    with pytest.raises(FemurSegError, match="65535 x 65535"):
        load_study(case_folder)


def test_the_voxel_limit_refuses_a_large_series_before_decoding(tmp_path: Path) -> None:
    folder = write_case("large_matrix", tmp_path / "input")
    with pytest.raises(FemurSegError, match=r"^series 2 .* would need 10485760 voxels .* e\.g\. slice_000\.dcm"):
        load_study(folder, policy=GeometryPolicy(max_voxels=10_000_000))


def test_a_thin_colour_series_does_not_hide_the_ct(tmp_path: Path) -> None:
    folder = write_case("rgb_beside_ct", tmp_path / "input")
    loaded = load_study(folder)
    assert loaded.series.modality == "CT" and loaded.series.series_number == 2


def test_the_command_line_writes_cases_with_their_descriptions(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(case.name in listing for case in BAD_INPUT_CASES)

    out = tmp_path / "corpus"
    assert main(["--out", str(out), "--case", "gantry_tilt", "--case", "valid_reference"]) == 0
    described = json.loads((out / "gantry_tilt" / "case.json").read_text(encoding="utf-8"))
    assert described["expected"] == {"outcome": "error", "error": "SeriesGeometryError", "words": ["gantry tilt"]}
    assert described["behaviour"].startswith("refused")
    assert len(list((out / "gantry_tilt" / "input").iterdir())) == 12
    assert json.loads((out / "valid_reference" / "case.json").read_text())["expected"] == {
        "outcome": "ok", "shape": [12, 32, 32]}
    # An existing folder is never written into.
    assert main(["--out", str(out)]) == 2


def test_a_bomb_series_beside_a_valid_ct_falls_back_to_the_ct(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    def bomb(ds, k: int) -> None:  # noqa: ANN001
        ds.Rows = ds.Columns = 65535
        ds.PixelData = bytes(16)

    # The hostile series is thinner, so it ranks first; its header check fails and the CT is loaded.
    write_series(tmp_path / "in" / "bomb", key="bomb", slice_spacing=1.0, series_number=9, per_slice=bomb)
    write_series(tmp_path / "in" / "ct")
    loaded = load_study(tmp_path / "in")
    assert loaded.series.series_number == 2 and loaded.volume.shape == _BASE_SHAPE
    assert "65535 x 65535" in caplog.text
