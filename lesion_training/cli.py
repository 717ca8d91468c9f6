"""Command line of the training pipeline: ``python -m lesion_training build-dataset|synthetic-dataset|train|fine-tune|export ...``.

Examples
--------
Build an nnU-Net dataset (one case per femur) from CT studies and lesion references, listed in a CSV
with columns ``patient,ct,reference`` (a DICOM folder or NIfTI/NRRD CT; a label volume or DICOM-SEG)::

    python -m lesion_training build-dataset --cases cases.csv --out ~/femur-nnunet/nnUNet_raw \
        --name Dataset501_FemurLesion --cysts separate --test-fraction 0.2

A synthetic cohort, generated in memory and built the same way::

    python -m lesion_training synthetic-dataset --seeds 1000-1039 --out ~/femur-nnunet/nnUNet_raw \
        --name Dataset601_SyntheticFemurLesion --workers 2

Train the CPU configuration on fold 0 and export the model::

    python -m lesion_training train --dataset /data/Dataset501_FemurLesion --config small --folds 0 \\
        --device cpu --workspace ~/femur-nnunet

The paper's five-fold cross-validation on a GPU, with folds grouped by patient::

    python -m lesion_training train --dataset 501 --config paper --folds 0 1 2 3 4 --device cuda \\
        --workspace ~/femur-nnunet --splits splits_by_patient.json

A learning curve like the paper's (24 / 64 / 80 training femurs, all validated on the same held-out
patients), in a workspace of its own::

    python -m lesion_training learning-curve --dataset /data/Dataset501_FemurLesion --sizes 24 64 80 \\
        --config paper --device cuda --workspace ~/femur-nnunet-curve

Continue training an exported model (the shipped one, or your own) on your own cases; the network and
its plans stay the base model's, nnU-Net transfers every weight but the output layer::

    python -m lesion_training fine-tune --dataset /data/Dataset501_FemurLesion \\
        --base-model model/femur_lesion_nnunet --epochs 50 --workspace ~/femur-nnunet-tuned \\
        --output ~/models/femur_lesion_tuned

Check an installation end to end on a toy dataset (a few minutes on a laptop)::

    python -m lesion_training toy --output toy/Dataset999_Toy
    python -m lesion_training train --dataset toy/Dataset999_Toy --config small --folds 0 --workspace toy/ws

Problems with the input print one line and exit non-zero; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from operators.errors import FemurSegError
from lesion_training.configurations import CONFIGURATIONS, FineTuneSchedule, get_configuration

if TYPE_CHECKING:
    from lesion_training.dataset_builder import BuiltDataset

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m lesion_training``."""
    parser = argparse.ArgumentParser(
        prog="python -m lesion_training",
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

    train.add_argument("--epochs", type=int,
                       help="train this many epochs instead of the configuration's (recorded in the plans)")
    train.add_argument("--time-budget-min", type=float,
                       help="wall-clock minutes each fold's training loop may take (the epochs are fitted to it); "
                            "default: the configuration's (small_gpu: 7.5, others: none)")
    train.add_argument("--no-dice-smoothing", dest="dice_smoothing", action="store_false",
                       help="soft Dice without nnU-Net's smoothing term (an absent class earns nothing; recorded "
                            "in the plans); for cohorts where training collapses to predicting no lesion")

    tune = commands.add_parser("fine-tune", help="continue training an exported model on a dataset, keeping its plans")
    tune.add_argument("--dataset", required=True,
                      help="raw dataset folder DatasetXXX_Name (or its id/name in the workspace), with the base "
                           "model's labels")
    tune.add_argument("--base-model", required=True, type=Path,
                      help="exported model folder to start from (plans.json, dataset.json, fold_*/checkpoint_final.pth)")
    tune.add_argument("--workspace", required=True, type=Path, help="folder for nnU-Net's raw/preprocessed/results")
    tune.add_argument("--output", required=True, type=Path, help="folder the fine-tuned model is exported to")
    tune.add_argument("--epochs", type=int, default=FineTuneSchedule.num_epochs,
                      help=f"epochs (default: {FineTuneSchedule.num_epochs})")
    tune.add_argument("--iterations-per-epoch", type=int, default=FineTuneSchedule.iterations_per_epoch,
                      help=f"training batches per epoch (default: {FineTuneSchedule.iterations_per_epoch})")
    tune.add_argument("--no-dice-smoothing", dest="dice_smoothing", action="store_false",
                      help="soft Dice without nnU-Net's smoothing term (recorded in the plans), as for train")
    tune.add_argument("--reinitialise-output-layer", dest="keep_output_layer", action="store_false",
                      help="start the output layer afresh, as nnU-Net's -pretrained_weights does (default: keep the "
                           "base model's, whose labels the dataset has)")
    tune.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="training device (default: auto = CUDA if available)")
    tune.add_argument("--num-processes", type=int, default=1,
                      help="worker processes for fingerprinting and preprocessing (default: 1)")
    tune.add_argument("--model-name", help="model name for model.json (default: the base model's)")
    tune.add_argument("--model-version", default="0.1.0", help="model version for model.json")

    curve = commands.add_parser("learning-curve",
                                help="train on growing subsets of the femurs, validate all on the same held-out ones")
    curve.add_argument("--dataset", required=True,
                       help="raw dataset folder DatasetXXX_Name, or its id/name in the workspace")
    curve.add_argument("--sizes", required=True, type=int, nargs="+",
                       help="training femurs of each model, increasing (the paper: 24 64 80)")
    curve.add_argument("--workspace", required=True, type=Path,
                       help="nnU-Net folders of this curve (its own: the dataset's splits_final.json there is replaced)")
    curve.add_argument("--config", default="small", choices=sorted(CONFIGURATIONS),
                       help="training configuration (default: small)")
    curve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="training device (default: auto = CUDA if available)")
    curve.add_argument("--validation-fraction", type=float, default=0.2,
                       help="share of the patients held out for validation (default: 0.2)")
    curve.add_argument("--seed", type=int, default=12345, help="seed of the shuffle of the patients")
    curve.add_argument("--epochs", type=int, help="train this many epochs instead of the configuration's")
    curve.add_argument("--num-processes", type=int, help="worker processes for preprocessing and validation")
    curve.add_argument("--out", type=Path, help="folder of learning_curve.md/.csv (default: WORKSPACE/learning_curve)")

    build = commands.add_parser("build-dataset", help="build an nnU-Net dataset of femur cases from CT studies")
    build.add_argument("--cases", required=True, type=Path, help="CSV with columns patient,ct,reference")
    _add_dataset_output(build)
    build.add_argument("--test-fraction", type=float, default=0.2,
                       help="fraction of patients held out as imagesTs/labelsTs (default: 0.2)")
    build.add_argument("--lesion-values", type=int, nargs="+", default=[1],
                       help="label-volume values of lytic lesions (default: 1)")
    build.add_argument("--cyst-values", type=int, nargs="+", default=[2],
                       help="label-volume values of cysts (default: 2)")
    build.add_argument("--lesion-segments", nargs="+", default=["lesion"],
                       help="DICOM-SEG segment labels containing one of these words are lesions (default: lesion)")
    build.add_argument("--cyst-segments", nargs="+", default=["cyst"],
                       help="DICOM-SEG segment labels containing one of these words are cysts (default: cyst)")
    build.add_argument("--femur-model", type=Path,
                       help="split the femurs with this learned femur model (an nnU-Net model folder or a "
                            "femur_model.json, as the application's FEMUR_SPLITTER_MODEL) instead of the "
                            "weight-free splitter")
    build.add_argument("--device", default="auto", help="where the femur model runs: auto, cpu, cuda, cuda:N")

    synthetic = commands.add_parser("synthetic-dataset",
                                    help="build an nnU-Net dataset from synthetic phantoms generated in memory")
    synthetic.add_argument("--seeds", required=True, help="patient seeds, e.g. 1000-1039 or 1,2,3")
    _add_dataset_output(synthetic)
    synthetic.add_argument("--test-fraction", type=float, default=0.0,
                           help="fraction of patients held out as imagesTs/labelsTs (default: 0)")
    synthetic.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")

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


def _add_dataset_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="nnUNet_raw folder the dataset is written into")
    parser.add_argument("--name", required=True, help="dataset folder name DatasetNNN_Name (must not exist)")
    parser.add_argument("--cysts", default="separate", choices=("separate", "background"),
                        help="cysts as label 2, or merged into background (default: separate)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the train/test split and folds")


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
        if args.command == "build-dataset":
            return _build_dataset(args)
        if args.command == "synthetic-dataset":
            return _synthetic_dataset(args)
        if args.command == "learning-curve":
            return _learning_curve(args)
        if args.command == "fine-tune":
            return _fine_tune(args)
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
    from lesion_training.train import train

    configuration = get_configuration(args.config)
    if args.epochs is not None:
        configuration = configuration.replace(
            num_epochs=args.epochs, description=f"{configuration.description}; shortened to {args.epochs} epochs")
    if not args.dice_smoothing:
        configuration = configuration.replace(
            dice_smoothing=False, description=f"{configuration.description}; Dice without smoothing")
    if args.time_budget_min is not None:
        configuration = configuration.replace(
            time_budget_minutes=args.time_budget_min,
            description=f"{configuration.description}; {args.time_budget_min:g}-minute budget")
    run = train(
        args.dataset, workspace=args.workspace, configuration=configuration, folds=args.folds,
        device=args.device, splits=args.splits, resume=args.resume, export=args.export, output=args.output,
        model_name=args.model_name, model_version=args.model_version, num_processes=args.num_processes,
        command=_recorded_command(args),
    )
    if run.exported is not None:
        print(f"model: {run.exported.folder} ({run.exported.size_bytes / 1e6:.1f} MB)")
    if run.cross_validation_dice is not None:
        print(f"cross-validation Dice (folds {' '.join(map(str, run.folds))}): {run.cross_validation_dice:.4f}")
    return 0


def _fine_tune(args: argparse.Namespace) -> int:
    from lesion_training.finetune import fine_tune

    schedule = FineTuneSchedule(num_epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                                dice_smoothing=args.dice_smoothing, keep_output_layer=args.keep_output_layer)
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {args.num_processes}")
    # Recorded in model.json: names, not local paths, so that the model can be published.
    command = shlex.join([
        "python", "-m", "lesion_training", "fine-tune", "--dataset", Path(str(args.dataset)).name,
        "--base-model", args.base_model.name, "--epochs", str(schedule.num_epochs),
        "--iterations-per-epoch", str(schedule.iterations_per_epoch),
        *([] if schedule.dice_smoothing else ["--no-dice-smoothing"]),
        *([] if schedule.keep_output_layer else ["--reinitialise-output-layer"]), "--device", args.device,
        "--workspace", "WORKSPACE", "--output", "OUTPUT",
    ])
    exported = fine_tune(
        args.dataset, base_model=args.base_model, workspace=args.workspace, output=args.output, schedule=schedule,
        device=args.device, model_name=args.model_name, model_version=args.model_version,
        num_processes=args.num_processes, command=command,
    )
    print(f"model: {exported.folder} ({exported.size_bytes / 1e6:.1f} MB)")
    return 0


def _learning_curve(args: argparse.Namespace) -> int:
    from lesion_training.learning_curve import run_learning_curve

    configuration = get_configuration(args.config)
    if args.epochs is not None:
        configuration = configuration.replace(
            num_epochs=args.epochs, description=f"{configuration.description}; {args.epochs} epochs")
    out = args.out or args.workspace / "learning_curve"
    points = run_learning_curve(
        args.dataset, workspace=args.workspace, sizes=args.sizes, configuration=configuration, device=args.device,
        validation_fraction=args.validation_fraction, seed=args.seed, num_processes=args.num_processes, out=out,
    )
    for p in points:
        print(f"{p.training_femurs} femurs ({p.training_patients} patients): lesion Dice {p.dice_mean:.3f} "
              f"over {p.n_scored} validation femurs, {p.n_true_negative} true negative(s)")
    print(f"table: {out / 'learning_curve.md'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from lesion_training.export import export_model
    from lesion_training.nnunet_workspace import NnUNetWorkspace
    from lesion_training.train import normalise_folds, resolve_dataset

    workspace = NnUNetWorkspace(args.workspace)
    dataset_name = resolve_dataset(workspace, args.dataset)
    exported = export_model(
        workspace, dataset_name, get_configuration(args.config), folds=normalise_folds(args.folds),
        output=args.output, model_name=args.model_name, model_version=args.model_version,
    )
    print(f"model: {exported.folder} ({exported.size_bytes / 1e6:.1f} MB)")
    return 0


def _build_dataset(args: argparse.Namespace) -> int:
    from lesion_training.dataset_builder import BuildOptions, ReferenceValues, build_from_csv

    references = ReferenceValues(
        lesion_values=tuple(args.lesion_values), cyst_values=tuple(args.cyst_values),
        lesion_segments=tuple(args.lesion_segments), cyst_segments=tuple(args.cyst_segments),
    )
    femur_segmenter = None
    if args.femur_model is not None:
        from operators.femur_nnunet import femur_segmenter_from_settings

        femur_segmenter = femur_segmenter_from_settings(args.femur_model, device=args.device)
    options = BuildOptions(cysts=args.cysts, references=references, femur_segmenter=femur_segmenter)
    dataset = build_from_csv(args.cases, args.out / args.name, options=options, test_fraction=args.test_fraction,
                             n_folds=args.folds, seed=args.seed)
    return _print_dataset(dataset)


def _synthetic_dataset(args: argparse.Namespace) -> int:
    from lesion_training.synthetic_cohort import build_synthetic_dataset, parse_seeds

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    dataset = build_synthetic_dataset(parse_seeds(args.seeds), args.out / args.name, cysts=args.cysts,
                                      test_fraction=args.test_fraction, n_folds=args.folds, workers=args.workers)
    return _print_dataset(dataset)


def _print_dataset(dataset: BuiltDataset) -> int:
    excluded = sorted({i.patient for i in dataset.issues if i.action == "excluded"})
    print(f"dataset: {dataset.folder} ({len(dataset.training_cases)} training, {len(dataset.test_cases)} test cases, "
          f"{len(dataset.splits)} folds)")
    print(f"report: {dataset.report.with_suffix('.md')} ({len(dataset.issues)} issue(s)"
          + (f"; excluded: {', '.join(excluded)}" if excluded else "") + ")")
    return 0


def _toy(args: argparse.Namespace) -> int:
    from lesion_training.toy_dataset import write_toy_dataset

    if args.cases < 5:
        raise ValueError("a toy dataset needs at least 5 cases for nnU-Net's 5-fold split")
    folder = write_toy_dataset(args.output, num_cases=args.cases, shape=tuple(args.shape),
                               spacing=tuple(args.spacing))
    print(f"toy dataset: {folder}")
    return 0


def _recorded_command(args: argparse.Namespace) -> str:
    # What model.json records: the dataset by name and no local paths, so that it can be published.
    dataset = Path(str(args.dataset)).name
    parts = ["python", "-m", "lesion_training", "train", "--dataset", dataset, "--config", args.config,
             "--folds", *map(str, args.folds), "--device", args.device, "--workspace", "WORKSPACE"]
    if args.splits is not None:
        parts += ["--splits", args.splits.name]
    if args.epochs is not None:
        parts += ["--epochs", str(args.epochs)]
    if args.time_budget_min is not None:
        parts += ["--time-budget-min", f"{args.time_budget_min:g}"]
    if not args.dice_smoothing:
        parts.append("--no-dice-smoothing")
    return shlex.join(parts)
