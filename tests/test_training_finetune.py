"""Fine-tuning an exported model on new cases (``python -m lesion_training fine-tune``, and the annotation
server's retraining), through nnU-Net's trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lesion_training.cli import main
from lesion_training.train import OUTPUT_LAYER_KEY, load_output_layer
from lesion_training.toy_dataset import write_toy_dataset, write_untrained_model
from operators.errors import TrainingDataError
from operators.lesion_model import LesionModel


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(next(folder.glob("fold_*/checkpoint_final.pth")), map_location="cpu",
                      weights_only=False)["network_weights"]


@pytest.mark.parametrize("keep_output_layer", [True, False], ids=["output-layer-kept", "output-layer-reinitialised"])
def test_fine_tune_command_starts_from_the_base_weights_and_records_the_base_model_and_loss(
    tmp_path: Path, keep_output_layer: bool
) -> None:
    base = write_untrained_model(tmp_path / "base")
    base_weights = _weights(base)
    dataset = write_toy_dataset(tmp_path / "raw" / "Dataset952_ToyFineTune", num_cases=2, shape=(32, 24, 24))
    workspace = tmp_path / "nnunet"
    output = tmp_path / "tuned"
    status = main(["fine-tune", "--dataset", str(dataset), "--base-model", str(base), "--workspace", str(workspace),
                   "--output", str(output), "--epochs", "1", "--iterations-per-epoch", "2", "--device", "cpu",
                   "--model-version", "0.0.0+tuned", "--no-dice-smoothing",
                   *([] if keep_output_layer else ["--reinitialise-output-layer"])])
    assert status == 0

    tuned = _weights(output)
    assert tuned.keys() == base_weights.keys()
    changed = [k for k in tuned if not torch.equal(tuned[k], base_weights[k])]
    assert changed, "two training iterations left every weight as it was"
    # Every weight starts from the base model, by default the output layers too: the network is the base's, and
    # two iterations move the output layers only a little. Re-initialised (nnU-Net's way), they are new draws.
    assert all(tuned[k].shape == base_weights[k].shape for k in tuned)
    output_layer = [k for k in tuned if OUTPUT_LAYER_KEY in k and k.endswith(".weight")]
    assert output_layer
    for key in output_layer:
        moved = float((tuned[key] - base_weights[key]).norm() / base_weights[key].norm())
        if keep_output_layer:
            assert moved < 0.2, f"{key} moved by {moved:.2f} of its norm: not started from the base model"
        else:
            assert moved > 0.8, f"{key} moved by only {moved:.2f} of its norm: not re-initialised"

    info = json.loads((output / "model.json").read_text(encoding="utf-8"))
    assert info["version"] == "0.0.0+tuned"
    assert info["schedule"]["num_epochs"] == 1 and info["schedule"]["num_iterations_per_epoch"] == 2
    # The trainer reads the loss from the plans the model was trained with (the annotation server's
    # fine-tuning keeps nnU-Net's default, smoothed Dice).
    assert info["schedule"]["dice_smoothing"] is False
    plans = json.loads(next(workspace.glob("nnUNet_results/*/*/plans.json")).read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["femur_training_schedule"]["dice_smoothing"] is False
    command = info["training"]["command"]
    assert command.startswith("python -m lesion_training fine-tune --dataset Dataset952_ToyFineTune")
    assert "--no-dice-smoothing" in command
    assert str(tmp_path) not in command, "model.json must not carry local paths"
    origin = info["training"]["fine_tuned_from"]
    base_fold = next(base.glob("fold_*")).name
    assert (origin["name"], origin["version"], origin["fold"]) == ("femur-lesion-untrained", "0.0.0", base_fold)
    assert origin["output_layer"] == ("kept" if keep_output_layer else "re-initialised")
    assert ("--reinitialise-output-layer" in command) is not keep_output_layer

    # nnU-Net's end-of-training validation of fold "all" would only predict the training cases again.
    fold = next(workspace.glob("nnUNet_results/*/*/fold_all"))
    assert (fold / "checkpoint_final.pth").is_file()
    assert not (fold / "validation").exists()
    assert LesionModel.from_folder(output, device="cpu").model_info.version == "0.0.0+tuned"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "num_epochs must be at least 1, got 0"),
        (["--iterations-per-epoch", "-3"], "iterations_per_epoch must be at least 1, got -3"),
        (["--base-model", "no_such_model"], "has no plans.json"),
    ],
)
def test_fine_tune_reports_bad_input_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    base = write_untrained_model(tmp_path / "base")
    dataset = write_toy_dataset(tmp_path / "raw" / "Dataset953_ToyBadTune", num_cases=2, shape=(16, 12, 12))
    defaults = {"--base-model": str(base)}
    options = dict(zip(arguments[::2], arguments[1::2]))
    if options.get("--base-model") == "no_such_model":
        options["--base-model"] = str(tmp_path / "no_such_model")
    merged = {**defaults, **options}
    status = main(["fine-tune", "--dataset", str(dataset), "--workspace", str(tmp_path / "ws"),
                   "--output", str(tmp_path / "out"), "--device", "cpu",
                   *[part for item in merged.items() for part in item]])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error.startswith("error: ") and message in error
    assert "\n" not in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "ws").exists()


def _network_of(model_folder: Path) -> torch.nn.Module:
    """A freshly initialised network of the model's architecture (nnU-Net's own builder)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = json.loads((model_folder / "plans.json").read_text(encoding="utf-8"))
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    labels = json.loads((model_folder / "dataset.json").read_text(encoding="utf-8"))["labels"]
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], 1, len(labels), deep_supervision=True)


def test_output_layer_is_copied_from_the_checkpoint_and_nothing_else(tmp_path: Path) -> None:
    base = write_untrained_model(tmp_path / "base")
    saved = _weights(base)
    network = _network_of(base)
    before = {k: v.clone() for k, v in network.state_dict().items()}

    loaded = load_output_layer(network, next(base.glob("fold_*/checkpoint_final.pth")))

    assert loaded and all(OUTPUT_LAYER_KEY in k for k in loaded)
    after = network.state_dict()
    for key in after:
        if key in loaded:
            assert torch.equal(after[key], saved[key])
        else:  # the rest is nnU-Net's load_pretrained_weights' business
            assert torch.equal(after[key], before[key])


def test_output_layer_of_another_label_set_is_refused(tmp_path: Path) -> None:
    base = write_untrained_model(tmp_path / "base")
    checkpoint = next(base.glob("fold_*/checkpoint_final.pth"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in [k for k in state["network_weights"] if OUTPUT_LAYER_KEY in k]:
        value = state["network_weights"][key]
        state["network_weights"][key] = torch.cat([value, value[:1]])  # one class more
    other = tmp_path / "other.pth"
    torch.save(state, other)

    with pytest.raises(TrainingDataError, match=r"output layer .*seg_layers.* has shape .*, the network's"):
        load_output_layer(_network_of(base), other)
