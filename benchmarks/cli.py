"""Command line of the benchmark: ``python -m benchmarks [options]`` (``make bench``).

Generates (once; kept in ``--workdir``) a standard synthetic study of about ``--study-slices`` slices
with its three series, runs our path, the stock MONAI Deploy path and the reference decoders on it, each
in a fresh process pinned to ``--cores`` CPUs, then the same patient at each of ``--slices`` for the
growth with the number of slices (ours in full, the SDK's ingest), and the inference settings table on
held-out studies. Writes ``benchmark.md`` and ``benchmark.json`` into ``--out`` and prints the Markdown.

``--quick`` runs the same steps on a small study (160 x 160 pixels), for tests and a first look.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks import settings_table
from benchmarks.child import ChildFailed, run_child
from benchmarks.machine import describe_machine
from benchmarks.model import ModelSettings
from benchmarks.report import compute_ratios, markdown, write_report
from benchmarks.studies import BenchStudy, ensure_study
from operators.errors import FemurSegError
from operators.lesion_model import DEFAULT_INPUT_RESAMPLING
from operators.nnunet_predictor import INPUT_RESAMPLING_CHOICES

logger = logging.getLogger("benchmarks")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO_ROOT / "model"
# Where the tests keep their tiny nnU-Net model (tests/test_app_model.py), one folder per code version.
TINY_MODEL_CACHE = REPO_ROOT / ".pytest_cache" / "d" / "femur-lesion-tiny-model"


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(" ", "").split(",") if part]


def _settings_rows(text: str) -> list[tuple[bool, float, str]]:
    """``on/0.5/plans,off/0.5/torch`` -> [(True, 0.5, "plans"), (False, 0.5, "torch")]."""
    rows = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        fields = part.split("/")
        if (len(fields) != 3 or fields[0] not in ("on", "off") or fields[2] not in INPUT_RESAMPLING_CHOICES):
            raise argparse.ArgumentTypeError(
                f"setting {part!r} is not MIRRORING/STEP/RESAMPLING (e.g. off/0.5/torch; mirroring on or off, "
                f"resampling {' or '.join(INPUT_RESAMPLING_CHOICES)})")
        try:
            step = float(fields[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"setting {part!r}: tile step {fields[1]!r} is not a number") from None
        if not 0.0 < step <= 1.0:
            raise argparse.ArgumentTypeError(f"setting {part!r}: tile step must be in (0, 1]")
        rows.append((fields[0] == "on", step, fields[2]))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("small", "standard"),
                        help="study preset (default standard; small with --quick)")
    parser.add_argument("--seed", type=int, default=11, help="patient of the studies (default %(default)s)")
    parser.add_argument("--study-slices", type=int,
                        help="thin slices of the main study (default 600 for standard, the seed's own for small)")
    parser.add_argument("--slices", type=_int_list,
                        help="slice counts for the growth with the number of slices, e.g. 200,400,800 (the default; "
                             "none with --quick); an empty string skips it")
    parser.add_argument("--skip-stock", action="store_true", help="do not run the stock MONAI Deploy path")
    parser.add_argument("--stock-ingest-only", action="store_true",
                        help="run only the stock path's ingest (loader + selector + volume) on the main study, not "
                             "its whole-volume inference (minutes on a CPU): for checking the ingest")
    parser.add_argument("--no-settings-table", action="store_true", help="skip the inference settings table")
    parser.add_argument("--settings-seeds", type=_int_list, help="held-out seeds of the settings table "
                        f"(default {','.join(map(str, settings_table.DEFAULT_SEEDS))}; one with --quick)")
    parser.add_argument("--settings", type=_settings_rows,
                        help="rows of the settings table as MIRRORING/STEP/RESAMPLING, comma-separated, e.g. "
                             "off/0.5/plans,off/0.5/torch (default: "
                             + ",".join(f"{'on' if m else 'off'}/{t:g}/{r}" for m, t, r in settings_table.DEFAULT_SETTINGS)
                             + ")")
    parser.add_argument("--quick", action="store_true", help="small study, no scaling, a short settings table")
    parser.add_argument("--model", type=Path, help="nnU-Net model folder (default: model/, else the tests' tiny model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument("--mirroring", choices=("on", "off"),
                        help="test-time mirroring on both paths (default: on with CUDA, off on CPU)")
    parser.add_argument("--tile-step", type=float, default=0.5, help="sliding-window tile step (default %(default)s)")
    parser.add_argument("--input-resampling", choices=INPUT_RESAMPLING_CHOICES, default=DEFAULT_INPUT_RESAMPLING,
                        help="resampling of the crops to the model's spacing on both paths: the model's plans "
                             "(nnU-Net's spline on the CPU) or nnU-Net's torch resampling on the device "
                             "(default %(default)s)")
    parser.add_argument("--cores", type=int, default=2,
                        help="CPU cores each measured process may use (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-output"),
                        help="studies and logs (default %(default)s)")
    parser.add_argument("--out", type=Path, help="report folder (default <workdir>/report)")
    return parser


def find_model(given: Path | None) -> tuple[Path, str]:
    """The model folder and where it comes from: ``--model``, ``model/``, else the tests' tiny model."""
    from operators.errors import ModelFolderError
    from operators.lesion_segmentation import resolve_model_path

    if given is not None:
        return resolve_model_path(given), "given with --model"
    try:
        return resolve_model_path(SHIPPED_MODEL), "the shipped model in model/"
    except ModelFolderError:
        pass
    cached = sorted((p for p in TINY_MODEL_CACHE.glob("*") if (p / "plans.json").is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True) if TINY_MODEL_CACHE.is_dir() else []
    if cached:
        return cached[0], "the tests' tiny model (model/ holds none): timings are real, its predictions meaningless"
    raise ModelFolderError("no lesion model: model/ holds none and the tests' tiny model is not built yet; "
                           "pass --model or run the application tests once")


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} but CUDA is not available here")
    return device


def _measure_study(study: BenchStudy, model: ModelSettings, args: argparse.Namespace, tag: str, *,
                   stock_model: bool) -> dict[str, Any]:
    """Our path, the stock path (in full, or its ingest alone) and the reference decoders on one study."""
    work = args.workdir / "runs" / tag
    common = {"cores": args.cores, "dicom_dir": str(study.dicom_dir)}
    entry: dict[str, Any] = {"study": study.to_dict()}
    logger.info("%s: our path", study.label)
    entry["ours"] = run_child({**common, "name": "ours", "kind": "ours", "out_dir": str(work / "ours-output"),
                               "model": model.to_dict()}, work)
    if not args.skip_stock:
        logger.info("%s: stock MONAI Deploy path%s", study.label, "" if stock_model else " (ingest)")
        key = "stock" if stock_model else "stock_ingest"
        entry[key] = run_child({**common, "name": key, "kind": "stock", "out_dir": str(work / "stock-output"),
                                "model": model.to_dict() if stock_model else None}, work)
        entry["same_series"] = entry[key]["result"]["series_uid"] == entry["ours"]["result"]["series_uid"]
    logger.info("%s: reference decoders", study.label)
    entry["references"] = run_child({**common, "name": "references", "kind": "references"}, work)
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement the arguments ask for; returns the report (see :mod:`benchmarks.report`)."""
    preset = args.preset or ("small" if args.quick else "standard")
    study_slices = args.study_slices if args.study_slices is not None else (600 if preset == "standard" else None)
    slices = args.slices if args.slices is not None else ([] if args.quick else [200, 400, 800])
    held_out = settings_table.DEFAULT_SEEDS
    seeds = args.settings_seeds or list(held_out[:1] if args.quick else held_out)
    device = _resolve_device(args.device)
    use_mirroring = (args.mirroring == "on") if args.mirroring else device.startswith("cuda")
    folder, source = find_model(args.model)
    model = ModelSettings(folder=folder, device=device, use_mirroring=use_mirroring, tile_step_size=args.tile_step,
                          input_resampling=args.input_resampling)
    args.workdir.mkdir(parents=True, exist_ok=True)

    study = ensure_study(args.workdir, preset=preset, seed=args.seed, slices=study_slices)
    main_entry = _measure_study(study, model, args, "main", stock_model=not args.stock_ingest_only)
    main_entry["ratios"] = compute_ratios(main_entry["ours"], main_entry.get("stock"), main_entry["references"],
                                          main_entry.get("stock_ingest"))

    scaling = []
    for count in slices:
        scaled = ensure_study(args.workdir, preset=preset, seed=args.seed, slices=count)
        scaling.append(_measure_study(scaled, model, args, f"slices-{count}", stock_model=False))

    table = None
    if not args.no_settings_table:
        steps = settings_table.DEFAULT_SETTINGS
        if args.settings:
            steps = tuple(args.settings)
        elif args.quick:
            steps = ((False, 0.5, "plans"), (False, 0.5, "torch"))
        logger.info("inference settings table on seeds %s", seeds)
        table = run_child({"name": "settings-table", "kind": "settings", "cores": args.cores, "model": model.to_dict(),
                           "table": {"preset": preset, "seeds": seeds, "settings": [list(s) for s in steps]}},
                          args.workdir / "runs" / "settings")

    info = main_entry["ours"]["result"].get("model", {})
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": describe_machine(device),
        "settings": {
            "preset": preset, "seed": args.seed, "cores": args.cores, "device": device,
            "use_mirroring": use_mirroring, "tile_step_size": args.tile_step, "input_resampling": args.input_resampling,
            "model_name": info.get("name"), "model_version": info.get("version"), "model_source": source,
            "memory_method": main_entry["ours"]["memory_method"], "stock_path": not args.skip_stock,
        },
        "main": main_entry,
        "scaling": scaling,
        "settings_table": table,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.cores < 1:
        print("error: --cores must be at least 1", file=sys.stderr)
        return 2
    args.out = args.out or args.workdir / "report"
    try:
        report = run(args)
    except ChildFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FemurSegError) as error:  # e.g. a slice count the synthetic studies cannot make
        print(f"error: {error}", file=sys.stderr)
        return 2
    json_path, md_path = write_report(report, args.out)
    print(markdown(report))
    print(f"report: {md_path} and {json_path}")
    return 0
