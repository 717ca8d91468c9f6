"""Benchmark of the input half: study scan, series choice, decode and femur split on a standard study.

Prints figures, not verdicts: wall time of each stage, the process's peak resident memory after each
stage, and the decode time of the same series by SimpleITK's series reader and highdicom's
``get_volume_from_series`` as references. Machines here are shared and noisy: read ratios, not seconds.

Usage: ``python scripts/bench_input.py [--preset standard] [--seed 11] [--workdir bench-output]``
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path, default=Path("bench-output"))
    args = parser.parse_args(argv)

    from synthetic_ct import generate_phantom, write_study

    study_dir = args.workdir / f"{args.preset}-seed{args.seed}"
    if not (study_dir / "study").exists():
        print(f"generating a {args.preset} study (seed {args.seed}) ...", flush=True)
        phantom = generate_phantom(args.seed, preset=args.preset)
        write_study(phantom, study_dir / "study")
        del phantom

    from operators.dicom_scan import scan_dicom_folder
    from operators.femur_splitter import split_femurs
    from operators.series_selection import select_series
    from operators.series_volume import load_series_volume

    rows: list[tuple[str, float, float]] = []

    def timed(name, fn, *a, **kw):
        start = time.perf_counter()
        result = fn(*a, **kw)
        rows.append((name, time.perf_counter() - start, peak_rss_mb()))
        return result

    index = timed("scan headers", scan_dicom_folder, study_dir / "study")
    selection = timed("select series", select_series, index)
    series = selection.series if hasattr(selection, "series") else selection
    loaded = timed("decode + volume", load_series_volume, series)
    split = timed("split femurs", split_femurs, loaded.volume)

    files = sorted(str(p) for p in getattr(series, "files", []) or [i.path for i in series.instances])
    ref_rows: list[tuple[str, float]] = []
    try:
        import SimpleITK as sitk

        start = time.perf_counter()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.SetOutputPixelType(sitk.sitkFloat32)
        reader.Execute()
        ref_rows.append(("SimpleITK ImageSeriesReader (chosen series)", time.perf_counter() - start))
    except Exception as exc:  # a reference figure only: report and go on
        print(f"SimpleITK reference failed: {exc}")
    try:
        import highdicom as hd
        import pydicom

        start = time.perf_counter()
        hd.get_volume_from_series([pydicom.dcmread(f) for f in files], dtype=np.float32)
        ref_rows.append(("highdicom get_volume_from_series (chosen series)", time.perf_counter() - start))
    except Exception as exc:
        print(f"highdicom reference failed: {exc}")

    shape = loaded.volume.spatial_shape
    print(f"\nMachine: {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
          f"Python {platform.python_version()}")
    print(f"Study: {args.preset} seed {args.seed}, {len(index.all_series()) if hasattr(index, 'all_series') else '?'} series; "
          f"chosen {shape[0]} x {shape[1]} x {shape[2]} (z, y, x), {len(files)} files")
    print(f"Femurs found: {', '.join(sorted(split.femurs)) or 'none'}")
    print("\nstage                 time (s)   peak RSS so far (MiB)")
    for name, sec, rss in rows:
        print(f"{name:<20} {sec:>9.2f}   {rss:>10.0f}")
    decode = next(sec for name, sec, _ in rows if name == "decode + volume")
    ingest = sum(sec for name, sec, _ in rows if name != "split femurs")
    print(f"{'ingest total':<20} {ingest:>9.2f}")
    if ref_rows:
        print("\nreference decoders               time (s)   ours/reference (decode only)")
        for name, sec in ref_rows:
            print(f"{name:<48} {sec:>6.2f}   {decode / sec:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
