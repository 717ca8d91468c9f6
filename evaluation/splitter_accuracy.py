"""Accuracy of the femur splitter against the synthetic generator's truth.

``python -m evaluation.splitter_accuracy --seeds 2000-2009 --positions HFS FFS --out DIR`` generates each
study in memory (preset ``standard`` unless ``--preset`` says otherwise; with ``--scanner cohort`` the
scanner, field of view, knees and femurs in view drawn per seed as for the lesion model's training cohort,
:func:`lesion_training.synthetic_cohort.cohort_overrides`: 1.2-1.9 mm pixels, 1.5-3 mm slices, noise up to
45 HU, one femur in view now and then; with ``--femur-top-mm N`` cut to N mm of femur below the top of the
femoral heads and the pelvis above, as an abdomen-pelvis CT sees the hips), runs the application's femur
splitter (:func:`operators.femur_splitter.split_femurs`, default classical segmenter) on its thin series and
compares every femur with the generator's femur mask (:meth:`synthetic_ct.phantom.SyntheticPhantom.femur_mask`:
cortex, marrow and the lesions and cysts inside). It writes

* ``splitter_accuracy.md``: per study and femur the Dice, the volumes, whether the sides are right, how much of
  the lesion and cyst truth lies inside the femur masks, and a summary against the target Dice;
* ``splitter_accuracy.csv``: the same per femur, one row each (NaN as empty cells);
* with ``--pictures``, ``<seed>_<position>.png`` for each study with a femur under the target: a coronal
  projection of the voxels both agree on, the femur voxels missed and the voxels added.

A femur is "correct-sided" when the predicted femur of that side overlaps its own truth more than the other
side's. A femur in the truth that the splitter misses scores Dice 0; a femur found where the truth has none
scores 0 too. The exit status is 0, or 1 with ``--fail-under D`` when a femur's Dice is under ``D`` or a side
is wrong.

Arrays are (z, y, x) on the generated CT's grid; sides are the patient's (from the DICOM geometry).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import highdicom as hd
import numpy as np

from evaluation.cli import _OneLineErrorParser
from evaluation.overlap import dice
from evaluation.tables import csv_text, markdown_table
from operators.atomic_files import write_text_atomic
from operators.femur_splitter import SIDES, FemurSplit, split_femurs
from synthetic_ct.config import PRESETS

logger = logging.getLogger(__name__)

#: Femur Dice the splitter is held to on standard studies.
DEFAULT_TARGET_DICE = 0.97
POSITIONS = ("HFS", "FFS")

# Label values of the error picture (render_overview draws higher priority on top).
_AGREE, _MISSED, _ADDED = 1, 2, 3


@dataclass(frozen=True)
class FemurAccuracy:
    """One femur of one study (volumes in ml, time in s; fractions in [0, 1], NaN when there is nothing to count)."""

    seed: int
    position: str
    side: str
    truth_ml: float
    predicted_ml: float
    dice: float
    side_correct: bool | None
    lesion_inside: float
    cyst_inside: float
    split_s: float

    @property
    def in_view(self) -> bool:
        """Whether the truth or the splitter has this femur."""
        return self.truth_ml > 0 or self.predicted_ml > 0


def femur_accuracy(
    split: FemurSplit,
    truth_masks: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    voxel_ml: float,
    seed: int,
    position: str,
    split_s: float,
    lesion_label: int = 3,
    cyst_label: int = 4,
) -> list[FemurAccuracy]:
    """Score one split against the truth.

    Parameters
    ----------
    split:
        The splitter's result on the study's CT.
    truth_masks:
        Per side, bool (z, y, x) truth femur mask on the CT's grid (all False when not in view).
    labels:
        The truth label map (z, y, x): lesion and cyst voxels are counted inside the predicted femurs.
    voxel_ml:
        Volume of one voxel, ml.
    """
    predicted = {side: (split.femurs[side].full_mask() if side in split.femurs else np.zeros(labels.shape, bool))
                 for side in SIDES}
    any_femur = predicted["left"] | predicted["right"]

    def inside(label: int, side: str) -> float:
        # Lesion / cyst voxels of this femur's truth that lie inside a predicted femur (either side).
        target = (labels == label) & truth_masks[side]
        n = int(target.sum())
        return float("nan") if n == 0 else float((target & any_femur).sum()) / n

    rows = []
    for side in SIDES:
        other = "right" if side == "left" else "left"
        truth, pred = truth_masks[side], predicted[side]
        score = dice(pred, truth)
        if math.isnan(score):  # in neither the truth nor the prediction
            correct = None
        else:
            own = int(np.logical_and(pred, truth).sum())
            swapped = int(np.logical_and(pred, truth_masks[other]).sum())
            # None: nothing predicted, or a prediction touching no true femur (scored by its Dice of 0).
            correct = None if own == swapped == 0 else own >= swapped
        rows.append(FemurAccuracy(
            seed=seed, position=position, side=side,
            truth_ml=float(truth.sum()) * voxel_ml, predicted_ml=float(pred.sum()) * voxel_ml,
            dice=score, side_correct=correct,
            lesion_inside=inside(lesion_label, side), cyst_inside=inside(cyst_label, side), split_s=split_s,
        ))
    return rows


def _error_map(split: FemurSplit, truth_masks: dict[str, np.ndarray]) -> np.ndarray:
    pred = split.label_map() > 0
    truth = truth_masks["left"] | truth_masks["right"]
    out = np.zeros(split.full_shape, dtype=np.uint8)
    out[pred & truth] = _AGREE
    out[truth & ~pred] = _MISSED
    out[pred & ~truth] = _ADDED
    return out


#: ``--scanner`` choices: the preset's own scanner ranges, or the training cohort's wide draws.
SCANNERS = ("preset", "cohort")


def study_overrides(seed: int, scanner: str) -> dict[str, object]:
    """The generator overrides of study ``seed`` under ``scanner`` (see :data:`SCANNERS`)."""
    if scanner == "preset":
        return {}
    if scanner == "cohort":
        from lesion_training.synthetic_cohort import cohort_overrides

        return cohort_overrides(seed)
    raise ValueError(f"scanner must be one of {', '.join(SCANNERS)}, got {scanner!r}")


def top_of_the_femurs(
    ct: hd.Volume, truth_masks: dict[str, np.ndarray], labels: np.ndarray, length_mm: float
) -> tuple[hd.Volume, dict[str, np.ndarray], np.ndarray]:
    """A study cut to the slices within ``length_mm`` below the top of its femoral heads, and all above them.

    This is the view of the hips an abdomen-pelvis CT gives: the pelvis, and the femurs down to where the
    scan ends (about 100-130 mm from the top of the head at the lesser trochanters).

    Parameters
    ----------
    ct:
        The study's CT, array (z, y, x), affine index -> LPS mm, slices along the array's first axis.
    truth_masks:
        Per side, bool (z, y, x) truth femur mask on the CT's grid.
    labels:
        The truth label map (z, y, x) on the CT's grid.
    length_mm:
        How far below the highest femur voxel (LPS z, towards the head) the cut volume reaches.

    Returns
    -------
    tuple
        The cut CT (affine moved to its first slice) and the truth masks and labels on its grid.
    """
    if not length_mm > 0:
        raise ValueError(f"length_mm must be positive, got {length_mm!r}")
    affine = np.asarray(ct.affine)
    array = np.asarray(ct.array)
    z_mm = affine[2, 3] + affine[2, 0] * np.arange(array.shape[0])  # LPS z of each slice
    femur_slices = np.zeros(array.shape[0], dtype=bool)
    for mask in truth_masks.values():
        femur_slices |= mask.any(axis=(1, 2))
    if not femur_slices.any():
        raise ValueError("the study has no femur to cut below")
    kept = np.flatnonzero(z_mm >= z_mm[femur_slices].max() - length_mm)
    start, stop = int(kept.min()), int(kept.max()) + 1
    cut_affine = affine.copy()
    cut_affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * start
    cut = hd.Volume(array=array[start:stop], affine=cut_affine, coordinate_system="PATIENT",
                    frame_of_reference_uid=ct.frame_of_reference_uid)
    return cut, {side: mask[start:stop] for side, mask in truth_masks.items()}, labels[start:stop]


def evaluate_study(
    seed: int, position: str, *, preset: str, target: float, pictures: Path | None, scanner: str = "preset",
    femur_top_mm: float | None = None,
) -> list[FemurAccuracy]:
    """Generate one study, split it, score it (and draw it when a femur is under ``target``).

    With ``femur_top_mm`` the study is first cut to that much femur below the top of the heads
    (:func:`top_of_the_femurs`).
    """
    from synthetic_ct.phantom import generate_phantom

    phantom = generate_phantom(seed, preset, patient_position=position, **study_overrides(seed, scanner))
    ct = phantom.ct
    truth_masks = {side: phantom.femur_mask(side) for side in SIDES}
    labels = np.asarray(phantom.labels.array)
    if femur_top_mm is not None:
        ct, truth_masks, labels = top_of_the_femurs(ct, truth_masks, labels, femur_top_mm)
    start = time.perf_counter()
    split = split_femurs(ct)
    split_s = time.perf_counter() - start
    rows = femur_accuracy(
        split, truth_masks, labels, voxel_ml=float(np.prod(ct.spacing)) / 1000.0,
        seed=seed, position=position, split_s=split_s,
    )
    if pictures is not None and any(_below(r, target) for r in rows):
        from operators.overview import LabelStyle, render_overview

        styles = {
            _AGREE: LabelStyle("femur, both agree", "#1f77b4", 0),
            _MISSED: LabelStyle("femur missed by the splitter", "#ffbf00", 1),
            _ADDED: LabelStyle("added by the splitter", "#d62728", 2),
        }
        worst = min(r.dice for r in rows if not math.isnan(r.dice))
        render_overview(ct, _error_map(split, truth_masks), pictures / f"{seed}_{position}.png", styles=styles,
                        title=f"seed {seed} {position}: lowest femur Dice {worst:.3f}")
    return rows


def _below(row: FemurAccuracy, target: float) -> bool:
    return (not math.isnan(row.dice) and row.dice < target) or row.side_correct is False


# -------------------------------------------------------------------------------------------- report

def _fraction(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def report_markdown(
    rows: Sequence[FemurAccuracy], *, target: float, preset: str, scanner: str = "preset",
    femur_top_mm: float | None = None,
) -> str:
    """The Markdown report: summary, then one row per femur in view."""
    scored = [r for r in rows if not math.isnan(r.dice)]
    dices = [r.dice for r in scored]
    studies = sorted({(r.seed, r.position) for r in rows})
    lesion = [r.lesion_inside for r in rows if not math.isnan(r.lesion_inside)]
    cyst = [r.cyst_inside for r in rows if not math.isnan(r.cyst_inside)]
    wrong_side = [r for r in rows if r.side_correct is False]
    lines = [
        "# Femur splitter against the generator's truth",
        "",
        f"{len(studies)} synthetic `{preset}` studies (seeds {min(s for s, _ in studies)}-{max(s for s, _ in studies)}, "
        f"positions {', '.join(sorted({p for _, p in studies}))}), {len(scored)} femurs in view.",
        "",
        *(["Scanner, field of view, knees and femurs in view drawn per seed as for the lesion model's training "
           "cohort (`--scanner cohort`: 1.2-1.9 mm pixels, 1.5-3 mm slices, noise 5-45 HU).", ""]
          if scanner == "cohort" else []),
        *([f"Each study cut to {femur_top_mm:g} mm of femur below the top of the femoral heads, and the pelvis "
           "above (`--femur-top-mm`), as an abdomen-pelvis CT sees the hips.", ""]
          if femur_top_mm is not None else []),
        markdown_table(["measure", "value"], [
            ["femur Dice, median", f"{statistics.median(dices):.4f}" if dices else "n/a"],
            ["femur Dice, mean", f"{statistics.fmean(dices):.4f}" if dices else "n/a"],
            ["femur Dice, lowest", f"{min(dices):.4f}" if dices else "n/a"],
            [f"femurs with Dice >= {target:g}", f"{sum(d >= target for d in dices)} of {len(dices)}"],
            ["femurs on the wrong side", str(len(wrong_side))],
            ["lesion voxels inside the femur masks (lowest femur)", _fraction(min(lesion)) if lesion else "n/a"],
            ["cyst voxels inside the femur masks (lowest femur)", _fraction(min(cyst)) if cyst else "n/a"],
            ["split time per study, median (s)", f"{statistics.median(r.split_s for r in rows):.1f}"],
        ]),
        "Dice: predicted femur of a side against the generator's femur of that side (lesions and cysts included); "
        "a femur missed or invented scores 0. Lesion/cyst inside: the share of that femur's true lesion (cyst) "
        "voxels that lie inside the splitter's femur masks.",
        "",
        markdown_table(
            ["seed", "position", "side", "Dice", "truth ml", "predicted ml", "side right", "lesion inside",
             "cyst inside", "split s"],
            [[str(r.seed), r.position, r.side, f"{r.dice:.4f}" + (" **below**" if _below(r, target) else ""),
              f"{r.truth_ml:.0f}", f"{r.predicted_ml:.0f}",
              "n/a" if r.side_correct is None else ("yes" if r.side_correct else "**no**"),
              _fraction(r.lesion_inside), _fraction(r.cyst_inside), f"{r.split_s:.1f}"]
             for r in rows if r.in_view],
            text_columns=3,
        ),
    ]
    return "\n".join(lines)


def report_csv(rows: Iterable[FemurAccuracy]) -> str:
    """One row per femur (also femurs in neither truth nor prediction, with empty Dice)."""
    return csv_text([f.name for f in fields(FemurAccuracy)], (astuple(r) for r in rows))


# ----------------------------------------------------------------------------------------------- CLI

def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds must look like 2000-2009 or 1,5,9, got {text!r}") from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"bad seed range {part!r}")
        out.extend(range(first, last + 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="python -m evaluation.splitter_accuracy",
        description="Femur Dice of the femur splitter on generated synthetic studies, against the generator's truth.",
    )
    parser.add_argument("--seeds", type=_seeds, required=True, metavar="A-B", help="seeds, e.g. 2000-2009 or 1,5,9")
    parser.add_argument("--positions", nargs="+", choices=POSITIONS, default=list(POSITIONS),
                        help="patient positions to generate each seed in (default both)")
    parser.add_argument("--preset", default="standard", choices=sorted(PRESETS),
                        help="generator preset (default standard)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET_DICE, metavar="D",
                        help=f"femur Dice marked as below target (default {DEFAULT_TARGET_DICE:g})")
    parser.add_argument("--fail-under", type=float, default=None, metavar="D",
                        help="exit 1 when a femur scores under D or lands on the wrong side")
    parser.add_argument("--pictures", action="store_true", help="a PNG of the errors for studies under the target")
    parser.add_argument("--scanner", choices=SCANNERS, default="preset",
                        help="the preset's scanner ranges (default), or the training cohort's wide draws per seed")
    parser.add_argument("--femur-top-mm", type=float, default=None, metavar="MM",
                        help="cut each study to this much femur below the top of the femoral heads (and the pelvis "
                             "above), as an abdomen-pelvis CT sees the hips")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="studies evaluated at once (each needs ~3 GB for a standard study)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("operators", "synthetic_ct"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.femur_top_mm is not None and not args.femur_top_mm > 0:
        print("error: --femur-top-mm must be a positive length in mm", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = args.out if args.pictures else None
    jobs = [(seed, position) for seed in args.seeds for position in args.positions]
    rows: list[FemurAccuracy] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(evaluate_study, seed, position, preset=args.preset, target=args.target,
                               pictures=pictures, scanner=args.scanner, femur_top_mm=args.femur_top_mm)
                   for seed, position in jobs]
        for done, ((seed, position), future) in enumerate(zip(jobs, futures), start=1):
            study_rows = future.result()
            rows.extend(study_rows)
            logger.info("[%d/%d] seed %d %s: %s (split %.1f s)", done, len(jobs), seed, position,
                        ", ".join(f"{r.side} {r.dice:.4f}" for r in study_rows if r.in_view) or "no femur",
                        study_rows[0].split_s)
    report = report_markdown(rows, target=args.target, preset=args.preset, scanner=args.scanner,
                             femur_top_mm=args.femur_top_mm)
    write_text_atomic(args.out / "splitter_accuracy.md", report)
    write_text_atomic(args.out / "splitter_accuracy.csv", report_csv(rows))
    dices = [r.dice for r in rows if not math.isnan(r.dice)]
    below = [r for r in rows if _below(r, args.target)]
    print(f"{len(dices)} femurs: median Dice {statistics.median(dices):.4f}, lowest {min(dices):.4f}, "
          f"{len(dices) - len(below)} of {len(dices)} >= {args.target:g}; report in {args.out}" if dices
          else f"no femur in view in any study; report in {args.out}")
    if args.fail_under is not None and any(_below(r, args.fail_under) for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
