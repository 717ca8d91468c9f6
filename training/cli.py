"""Command line of the training pipeline: ``python -m training train|export ...``.

Examples
--------
Train the CPU configuration on fold 0 and export the model::

    python -m training train --dataset /data/Dataset501_FemurLesion --config small --folds 0 \\
        --device cpu --workspace ~/femur-nnunet

The paper's five-fold cross-validation on a GPU, with folds grouped by patient::

    python -m training train --dataset 501 --config paper --folds 0 1 2 3 4 --device cuda \\
        --workspace ~/femur-nnunet --splits splits_by_patient.json

Check an installation end to end on a toy dataset (a few minutes on a laptop)::

    python -m training toy --output toy/Dataset999_Toy
    python -m training train --dataset toy/Dataset999_Toy --config small --folds 0 --workspace toy/ws

Problems with the input print one line and exit non-zero; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from operators.errors import FemurSegError
from training.configurations import CONFIGURATIONS, get_configuration

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m training``."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate and export nnU-Net models of lytic lesions in femur-only CT crops.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="plan, preprocess, train, evaluate and export a lesion model")
    _add_common(train)
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="training device (default: auto = CUDA if available)")
    train.add_argument("--splits", type=Path, help="splits_final.json to use instead of nnU-Net's random folds")
    train.add_argument("--continue", dest="resume", action="store_true",
                       help="continue each fold from its latest checkpoint")
    train.add_argument("--no-export", dest="export", action="store_false", help="do not export the model")
    train.add_argument("--num-processes", type=int, help="worker processes for preprocessing and evaluation")

    export = commands.add_parser("export", help="export trained folds of a workspace as a slim model folder")
    _add_common(export)

    toy = commands.add_parser("toy", help="write a toy dataset to check the pipeline without data")
    toy.add_argument("--output", required=True, type=Path, help="dataset folder to write, named DatasetXXX_Name")
    toy.add_argument("--cases", type=int, default=10, help="number of cases (default: 10)")
    toy.add_argument("--shape", type=int, nargs=3, default=(48, 32, 32), metavar=("Z", "Y", "X"),
                     help="crop shape in voxels (default: 48 32 32)")
    toy.add_argument("--spacing", type=float, nargs=3, default=(1.5, 0.8, 0.8), metavar=("SZ", "SY", "SX"),
                     help="voxel spacing in mm (default: 1.5 0.8 0.8)")
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="raw dataset folder DatasetXXX_Name, or its id/name in the workspace")
    parser.add_argument("--config", default="small", choices=sorted(CONFIGURATIONS),
                        help="training configuration (default: small)")
    parser.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds 0-4, or 'all' (default: 0 1 2 3 4)")
    parser.add_argument("--workspace", required=True, type=Path, help="folder for nnU-Net's raw/preprocessed/results")
    parser.add_argument("--output", type=Path, help="export destination (default: WORKSPACE/export/...)")
    parser.add_argument("--model-name", help="model name for model.json (default: femur-lesion-CONFIG)")
    parser.add_argument("--model-version", default="0.1.0", help="model version for model.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "toy":
            return _toy(args)
        return _export(args)
    except FemurSegError as error:
        logger.debug("failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except ValueError as error:
        # Invalid option values found after parsing (folds, devices).
        logger.debug("failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from training.train import train

    run = train(
        args.dataset, workspace=args.workspace, configuration=args.config, folds=args.folds,
        device=args.device, splits=args.splits, resume=args.resume, export=args.export, output=args.output,
        model_name=args.model_name, model_version=args.model_version, num_processes=args.num_processes,
        command=_recorded_command(args),
    )
    if run.exported is not None:
        print(f"model: {run.exported.folder} ({run.exported.size_bytes / 1e6:.1f} MB)")
    if run.cross_validation_dice is not None:
        print(f"cross-validation Dice (folds {' '.join(map(str, run.folds))}): {run.cross_validation_dice:.4f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export_model
    from training.nnunet_workspace import NnUNetWorkspace
    from training.train import normalise_folds, resolve_dataset

    workspace = NnUNetWorkspace(args.workspace)
    dataset_name = resolve_dataset(workspace, args.dataset)
    exported = export_model(
        workspace, dataset_name, get_configuration(args.config), folds=normalise_folds(args.folds),
        output=args.output, model_name=args.model_name, model_version=args.model_version,
    )
    print(f"model: {exported.folder} ({exported.size_bytes / 1e6:.1f} MB)")
    return 0


def _toy(args: argparse.Namespace) -> int:
    from training.toy_dataset import write_toy_dataset

    if args.cases < 5:
        raise ValueError("a toy dataset needs at least 5 cases for nnU-Net's 5-fold split")
    folder = write_toy_dataset(args.output, num_cases=args.cases, shape=tuple(args.shape),
                               spacing=tuple(args.spacing))
    print(f"toy dataset: {folder}")
    return 0


def _recorded_command(args: argparse.Namespace) -> str:
    # What model.json records: the dataset by name and no local paths, so that it can be published.
    dataset = Path(str(args.dataset)).name
    parts = ["python", "-m", "training", "train", "--dataset", dataset, "--config", args.config,
             "--folds", *map(str, args.folds), "--device", args.device, "--workspace", "WORKSPACE"]
    if args.splits is not None:
        parts += ["--splits", args.splits.name]
    return shlex.join(parts)
