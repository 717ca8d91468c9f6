"""Command line: generate a synthetic study and write it to a folder.

    python -m synthetic_ct --seed 3 --preset standard --out studies/seed3

Prints a short summary (geometry, femurs, lesions, series; never the invented patient identity)
and shows progress on stderr for long work.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import PRESETS, TRANSFER_SYNTAX_NAMES

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m synthetic_ct",
        description="Generate a synthetic lower-body CT study (DICOM + labels.nii.gz + truth.json).",
    )
    p.add_argument("--seed", type=int, required=True, help="non-negative integer; same seed, same study")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--out", type=Path, required=True, help="folder to create (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--series",
        default="thin,thick,localizer",
        help="comma-separated series to write among thin (primary), thick, localizer",
    )
    p.add_argument(
        "--transfer-syntax",
        default=None,
        help=f"one of {', '.join(TRANSFER_SYNTAX_NAMES)} for all series, or role=name pairs, e.g. thin=jpeg2000,thick=rle",
    )
    p.add_argument("--patient-position", choices=["HFS", "FFS"])
    p.add_argument("--slice-order", choices=["ascending", "descending"])
    p.add_argument("--storage", choices=["signed", "unsigned"])
    p.add_argument("--femurs", choices=["both", "left", "right", "none"], default="both", help="femurs in the field of view")
    p.add_argument("--knees", choices=["yes", "no"], default=None, help="whether the scan reaches below the knees")
    p.add_argument("--implant", choices=["left", "right"], help="intramedullary nail in that femur")
    p.add_argument("--lesions", default="auto", help="auto (drawn), none, or a number of lytic lesions")
    p.add_argument("--cysts", choices=["yes", "no"], default=None)
    p.add_argument("--noise-sd", type=float, help="noise SD of the thin series, HU")
    p.add_argument("--pixel-spacing", type=float, help="mm")
    p.add_argument("--slice-spacing", type=float, help="mm")
    p.add_argument("--slice-thickness", type=float, help="mm")
    p.add_argument("--kvp", type=float)
    p.add_argument("--joint-gap", type=float, help="mean hip joint gap, mm")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _overrides(args: argparse.Namespace) -> dict:
    o: dict = {}
    for name in ("patient_position", "slice_order", "storage", "implant", "noise_sd", "pixel_spacing", "slice_spacing", "slice_thickness", "kvp", "joint_gap"):
        v = getattr(args, name)
        if v is not None:
            o[name] = v
    o["femurs_in_view"] = {"both": ("left", "right"), "left": ("left",), "right": ("right",), "none": ()}[args.femurs]
    if args.knees is not None:
        o["knees_in_view"] = args.knees == "yes"
    if args.cysts is not None:
        o["cysts"] = args.cysts == "yes"
    les = str(args.lesions).strip().lower()
    if les == "auto":
        o["lesions"] = True
    elif les == "none":
        o["lesions"] = False
    else:
        try:
            o["lesions"] = int(les)
        except ValueError:
            raise ValueError(f"--lesions must be auto, none or a number, got {args.lesions!r}") from None
    return o


def _transfer_syntax(value: str | None):
    if value is None or "=" not in value:
        return value
    out = {}
    for item in value.split(","):
        role, _, name = item.partition("=")
        out[role.strip()] = name.strip()
    return out


class _Progress:
    """Progress on stderr: a rewritten line on a terminal, a line per stage otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_stage = None
        self.last_pct = -1

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        pct = int(round(100 * fraction))
        if self.tty:
            sys.stderr.write(f"\r{stage:<28s} {pct:3d}%")
            if fraction >= 1.0:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif stage != self.last_stage or pct >= self.last_pct + 25:
            sys.stderr.write(f"{stage}: {pct}%\n")
            self.last_pct = pct
        self.last_stage = stage


def _summary(phantom, study, t_gen: float, t_write: float) -> str:
    t = phantom.truth
    g = t["grid"]
    lines = [
        f"synthetic CT study  seed {t['seed']}  preset {t['preset']}",
        f"  grid        {' x '.join(map(str, g['shape']))} (slice, row, column); spacing "
        f"{g['slice_spacing_mm']:g} x {g['pixel_spacing_mm'][0]:.3f} x {g['pixel_spacing_mm'][1]:.3f} mm; "
        f"thickness {g['slice_thickness_mm']:g} mm; {g['patient_position']}, slices {g['slice_order']}",
        f"  scanner     {t['scanner']['manufacturer']}, {t['scanner']['kvp']:g} kVp, noise SD {t['scanner']['noise_sd_hu']:g} HU, "
        f"{t['scanner']['storage']} storage",
        f"  femurs      {', '.join(t['femurs_in_view']) or 'none in view'}" + ("" if not t["femurs_in_view"] else f"; knees {'in view' if t['knees_in_view'] else 'not in view'}"),
    ]
    if t["lesions"]:
        for les in t["lesions"]:
            flags = [f for f, on in (("subtle", les["subtle"]), ("cortical breach", les["cortical_breach"])) if on]
            lines.append(
                f"  lesion {les['id']:<4d} {les['side']:<5s} {les['region']:<12s} {les['equivalent_diameter_mm']:5.1f} mm  "
                f"{les['mean_hu']:6.1f} HU" + (f"  ({', '.join(flags)})" if flags else "")
            )
    else:
        lines.append("  lesions     none")
    for c in t["cysts"]:
        lines.append(f"  cyst {c['id']:<6d} {c['side']:<5s} {c['region']:<12s} {c['equivalent_diameter_mm']:5.1f} mm  {c['mean_hu']:6.1f} HU")
    if t["implant"]:
        lines.append(f"  implant     {t['implant']['kind']} in the {t['implant']['side']} femur")
    for s in study.series:
        lines.append(f"  series {s.number}    {s.role:<9s} {len(s.files):4d} file(s)  {s.description}  [{_ts_name(s.transfer_syntax)}]")
    lines.append(f"  written to  {study.root}")
    lines.append(f"  time        generation {t_gen:.1f} s, writing {t_write:.1f} s")
    return "\n".join(lines)


def _ts_name(uid: str) -> str:
    for name, u in TRANSFER_SYNTAX_NAMES.items():
        if u == uid:
            return name
    return uid


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    from .phantom import generate_phantom
    from .writer import write_study

    progress = _Progress(not args.quiet)
    try:
        overrides = _overrides(args)
        series = tuple(s.strip() for s in args.series.split(",") if s.strip())
        t0 = time.perf_counter()
        phantom = generate_phantom(args.seed, args.preset, progress=progress, **overrides)
        t1 = time.perf_counter()
        study = write_study(
            phantom,
            args.out,
            series=series,
            transfer_syntax=_transfer_syntax(args.transfer_syntax),
            overwrite=args.overwrite,
            progress=progress,
        )
        t2 = time.perf_counter()
    except (ValueError, FileExistsError) as exc:
        logger.debug("failed", exc_info=True)
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(_summary(phantom, study, t1 - t0, t2 - t1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
