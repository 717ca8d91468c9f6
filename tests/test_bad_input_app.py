"""Bad input and patient data through the real application, ``python -m app`` in its own process.

* Some cases of :mod:`synthetic_ct.bad_input` (the important ones; tests/test_bad_input.py runs them all
  through the loader): exit status 2, exactly one line on standard error that names the problem and the
  file, no traceback for the user (it is in the debug log), nothing in the output folder, the input
  byte for byte as it was.
* Planted identifiers: a small synthetic study whose PatientName (without a caret, as archives often
  have it), PatientID, PatientBirthDate, OtherPatientIDs and AccessionNumber are unique tokens and whose
  SeriesDescription and StudyDescription are path-like, run at debug level to success and, with a slice
  removed, to a failure. No token appears in standard output or error, report.json, summary.txt or the
  overview (its text chunks included); the SEG and the SR carry them, as DICOM requires. Every output
  lies in the output folder under its fixed name.

The runs go two at a time (input-stage failures end before the model is used).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from operators.study_outputs import OVERVIEW_FILE, REPORT_FILE, SEG_FILE, SR_FILE, SUMMARY_FILE
from synthetic_ct import generate_phantom, write_study
from synthetic_ct.bad_input import write_case
from tests.bad_input_support import CORPUS_TOKENS, find_tokens, make_removable, tree_digest
from tests.test_app_end_to_end import _failure_details, run_app
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

#: Cases run through the application, with the words their one error line must contain.
CLI_CASES = ("truncated_pixel_data", "memory_bomb_rows_columns", "missing_slice", "gantry_tilt",
             "undecodable_name_broken_file")
_DEBUG_CASE = "memory_bomb_rows_columns"  # run with -l DEBUG: the traceback goes to the log only


@dataclass
class Run:
    process: subprocess.CompletedProcess[str]
    root: Path
    input: Path
    output: Path
    before: dict[str, str]
    after: dict[str, str]


@dataclass(frozen=True)
class Planted:
    """Unique identifiers planted in the study, and the forms a birth date could be written in."""

    name: str
    given: str
    patient_id: str
    other_id: str
    accession: str
    birth_date: str

    @property
    def tokens(self) -> tuple[str, ...]:
        y, m, d = self.birth_date[:4], self.birth_date[4:6], self.birth_date[6:]
        return (self.name, self.given, self.patient_id, self.other_id, self.accession, self.birth_date,
                f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}")


def _planted() -> Planted:
    token = secrets.token_hex(4).upper()
    number = int(token, 16)
    birth = f"{1900 + number % 60}{1 + number % 12:02d}{1 + number % 28:02d}"
    return Planted(name=f"Plantname{token}", given=f"Givenname{token}", patient_id=f"PID{token}",
                   other_id=f"OPID{token}", accession=f"ACC{token}", birth_date=birth)


def _plant(study_dir: Path, planted: Planted) -> None:
    for path in sorted(p for p in study_dir.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.PatientName = f"{planted.name} {planted.given}"  # no caret, as many archives write it
        ds.PatientID = planted.patient_id
        ds.OtherPatientIDs = planted.other_id
        ds.AccessionNumber = planted.accession
        ds.PatientBirthDate = planted.birth_date
        ds.SeriesDescription = "../../../etc/passwd"
        ds.StudyDescription = "/tmp/x\\..\\boot.ini"
        ds.save_as(path)


def _execute(root: Path, input_dir: Path, args: list[str]) -> Run:
    before = tree_digest(input_dir)
    output = root / "out"
    process = run_app(["-i", str(input_dir), "-o", str(output), *args])
    return Run(process=process, root=root, input=input_dir, output=output, before=before,
               after=tree_digest(input_dir))


@pytest.fixture(scope="module")
def planted() -> Planted:
    return _planted()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, lesion_model: Path, planted: Planted  # noqa: F811
         ) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("bad-input-app")
    jobs: dict[str, tuple[Path, Path, list[str]]] = {}
    model = ["-m", str(lesion_model)]
    for name in CLI_CASES:
        root = base / name
        input_dir = write_case(name, root / "input")
        jobs[name] = (root, input_dir, [*model, *(["-l", "DEBUG"] if name == _DEBUG_CASE else [])])

    study = write_study(generate_phantom(21, "small"), base / "planted-study", series=("thin",))
    _plant(study.study_dir, planted)
    ok_root = base / "planted-ok"
    shutil.copytree(study.study_dir, ok_root / "input")
    jobs["planted-ok"] = (ok_root, ok_root / "input", [*model, "-l", "DEBUG"])
    failing_root = base / "planted-failing"
    shutil.copytree(study.study_dir, failing_root / "input")
    files = sorted(p for p in (failing_root / "input").rglob("*") if p.is_file())
    files[len(files) // 2].unlink()  # a slice missing in the middle
    jobs["planted-failing"] = (failing_root, failing_root / "input", [*model, "-l", "DEBUG"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_execute, *job) for name, job in jobs.items()}
        done = {name: future.result() for name, future in futures.items()}
    yield done
    make_removable(base)


def _assert_one_line_failure(run: Run, *words: str) -> str:
    process = run.process
    assert process.returncode == 2, _failure_details(process)
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), _failure_details(process)
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in process.stderr
    assert not run.output.exists() or os.listdir(run.output) == [], f"left in the output: {os.listdir(run.output)}"
    assert run.after == run.before, "the input was changed"
    return lines[0]


@pytest.mark.parametrize("name", CLI_CASES)
def test_bad_input_stops_the_application_in_one_line(name: str, runs: dict[str, Run]) -> None:
    from synthetic_ct.bad_input import BAD_INPUT_CASES

    case = next(c for c in BAD_INPUT_CASES if c.name == name)
    run = runs[name]
    line = _assert_one_line_failure(run, *case.expected.words)
    assert line.isprintable()
    assert find_tokens(run.process.stdout + run.process.stderr, CORPUS_TOKENS) == []
    if name == _DEBUG_CASE:
        # The user sees one line; the debug log (standard output) has the whole story.
        assert "Traceback" in run.process.stdout
    else:
        assert "Traceback" not in run.process.stdout


def _png_text(path: Path) -> str:
    """The text chunks of a PNG (tEXt, zTXt, iTXt), decompressed."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    texts, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        if kind == b"tEXt":
            texts.append(body.decode("latin-1"))
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            texts.append(key.decode("latin-1") + " " + zlib.decompress(rest[1:]).decode("latin-1"))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")
            _, _, text = rest.partition(b"\0")
            texts.append(key.decode("latin-1") + " " + (zlib.decompress(text) if compressed else text).decode())
        at += 12 + length
    return "\n".join(texts)


def test_planted_identifiers_stay_out_of_logs_and_reports(runs: dict[str, Run], planted: Planted) -> None:
    run = runs["planted-ok"]
    assert run.process.returncode == 0, _failure_details(run.process)
    assert run.process.stderr == ""
    tokens = planted.tokens
    assert find_tokens(run.process.stdout, tokens) == [], "patient data in the log"
    for name in (REPORT_FILE, SUMMARY_FILE, OVERVIEW_FILE):
        assert find_tokens((run.output / name).read_bytes(), tokens) == [], name
    assert find_tokens(_png_text(run.output / OVERVIEW_FILE), tokens) == []
    # The SEG and the SR carry the identity, as DICOM requires.
    for name in (SEG_FILE, SR_FILE):
        data = (run.output / name).read_bytes()
        for token in (planted.name, planted.given, planted.patient_id, planted.accession, planted.birth_date):
            assert token.encode() in data, f"{token} not carried into {name}"
    assert run.after == run.before, "the input was changed"


def test_outputs_stay_in_the_output_folder_whatever_the_tag_values(runs: dict[str, Run]) -> None:
    run = runs["planted-ok"]
    assert run.process.returncode == 0, _failure_details(run.process)
    assert sorted(os.listdir(run.output)) == sorted([SEG_FILE, SR_FILE, REPORT_FILE, SUMMARY_FILE, OVERVIEW_FILE])
    # Nothing beside the input and the output folder (a name from "../../../etc/passwd" would be).
    assert sorted(os.listdir(run.root)) == ["input", "out"]
    assert not (run.root.parent / "etc").exists()


def test_a_failing_run_names_no_patient(runs: dict[str, Run], planted: Planted) -> None:
    run = runs["planted-failing"]
    line = _assert_one_line_failure(run, "missing about 1 slice")
    assert find_tokens(run.process.stdout + line, planted.tokens) == [], "patient data in the log or the error"
