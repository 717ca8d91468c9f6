"""Demo: a synthetic lower-body CT study through the MONAI Deploy application, checked against its truth.

1. Generates a study as a PACS would send it (a thin bone-kernel series, a thick soft-tissue series and
   a localizer) with ground truth beside it.
2. Runs the application exactly as a MAP runs it (``python -m app -i STUDY -o OUT -m MODEL``): the loader
   picks the thin series, the splitter cuts out the femurs, the nnU-Net model in ``model/`` segments the
   lytic lesions, and the writers produce DICOM-SEG, DICOM SR, report.json, summary.txt and overview.png.
3. Reads the SEG back and prints, per femur, the findings, the Dice of the femur and of the lesions
   against the generator's truth, the time of each stage and where the outputs are.

Without a model in ``model/`` it runs the input half only (loader and femur splitter) and says so.

Usage: ``python scripts/demo.py --out demo-output [--preset standard|small] [--seed 7] [--fast]``
(``make demo`` runs it with the defaults).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import highdicom as hd  # noqa: E402
import numpy as np  # noqa: E402

from operators.dicom_seg import read_segment_masks  # noqa: E402
from operators.errors import FemurSegError  # noqa: E402
from operators.lesion_segmentation import resolve_model_path  # noqa: E402
from operators.series_volume import load_study  # noqa: E402
from synthetic_ct import generate_phantom, write_study  # noqa: E402

MODEL_DIR = REPO_ROOT / "model"
SIDES = ("right", "left")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; NaN when both are empty (a true negative)."""
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _fmt(value: float) -> str:
    return "NaN (TN)" if np.isnan(value) else f"{value:.3f}"


def _find_model() -> Path | None:
    try:
        return resolve_model_path(MODEL_DIR)
    except FemurSegError:
        return None


def _truth_on(grid: hd.Volume, phantom, mask: np.ndarray) -> np.ndarray:
    """A truth mask of the phantom's grid brought onto the loaded grid (permutation and flips only)."""
    return hd.Volume(mask.astype(np.uint8), phantom.labels.affine, "PATIENT").match_geometry(grid).array > 0


def run_app(study_dir: Path, out_dir: Path, model: Path, *, fast: bool) -> float:
    env = dict(os.environ)
    if fast:
        env["FEMUR_LESION_MIRRORING"] = "0"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "app", "-i", str(study_dir), "-o", str(out_dir), "-m", str(model)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    (out_dir.parent / "app.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"error: the application failed ({result.stderr.strip() or 'see app.log'})")
    for line in result.stdout.splitlines():
        if "stage timings:" in line:
            print("  application stages: " + line.split("stage timings:", 1)[1].strip())
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--preset", default="standard", help="synthetic study preset (small, standard)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic study")
    parser.add_argument("--fast", action="store_true", help="no test-time mirroring (much faster on a CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    print(f"Synthetic study: preset {args.preset!r}, seed {args.seed}", flush=True)

    start = time.perf_counter()
    phantom = generate_phantom(args.seed, preset=args.preset)
    study = write_study(phantom, out / "study", overwrite=True)
    seconds["generate and write study"] = time.perf_counter() - start
    print(f"- study written ({seconds['generate and write study']:.0f} s): {study.study_dir}", flush=True)

    model = _find_model()
    app_out = out / "app-output"
    loaded = load_study(study.study_dir)  # the same loader the app uses: the grid the SEG is on
    grid = loaded.volume
    if model is not None:
        print(f"- running the application with the model in {model.relative_to(REPO_ROOT)} ...", flush=True)
        seconds["application (end to end)"] = run_app(study.study_dir, app_out, model, fast=args.fast)
        masks = read_segment_masks(app_out / "seg.dcm", grid) if (app_out / "seg.dcm").exists() else {}
        report = json.loads((app_out / "report.json").read_text())
    else:
        print("- no model in model/: running the input half only (loader and femur splitter)", flush=True)
        from operators.femur_splitter import split_femurs

        start = time.perf_counter()
        split = split_femurs(grid)
        seconds["split femurs"] = time.perf_counter() - start
        masks = {f"{side.capitalize()} femur": crop.full_mask() for side, crop in split.femurs.items()}
        report = None

    truth_lesion = phantom.labels.array == 3
    print("\nFemur   femur Dice   lesion Dice   lesions (truth)   findings")
    summary_lines = (report or {}).get("summary", []) if report else []
    for side in SIDES:
        femur_truth = _truth_on(grid, phantom, phantom.femur_mask(side))
        lesion_truth = _truth_on(grid, phantom, truth_lesion & phantom.femur_mask(side))
        femur_pred = masks.get(f"{side.capitalize()} femur", np.zeros(grid.spatial_shape, bool))
        lesion_pred = masks.get(f"Lytic lesion, {side} femur", np.zeros(grid.spatial_shape, bool))
        n_truth = sum(1 for lesion in phantom.truth.get("lesions", []) if lesion["side"] == side)
        line = next((s for s in summary_lines if s.lower().startswith(f"{side} femur")), "")
        lesion_dice = _fmt(dice(lesion_pred, lesion_truth)) if model is not None else "-"
        print(f"{side:<7} {_fmt(dice(femur_pred, femur_truth)):>10}   {lesion_dice:>11}   {n_truth:>15}   {line}")

    print("\nStage                               time (s)")
    for name, sec in seconds.items():
        print(f"{name:<35} {sec:>8.1f}")
    if model is not None:
        print(f"\nOutputs in {app_out}: seg.dcm, sr.dcm, report.json, summary.txt, overview.png (app.log beside)")
    print(f"Study and truth in {out / 'study'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
