"""``era_construction``: the tight softmax ERA constructions through every timm path (build, reset, export, CLI)."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import timm
import torch
from timm.models import save_for_hf
from timm_era_cases import entropy

import timm_era
from timm_era import train

TIGHT = ["mixture", "calibrated"]


def _saturated(model: torch.nn.Module) -> torch.nn.Module:
    """Make the classifier output one-hot logits whatever the input (class 0 wins by 1e4)."""
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[0] = 1e4
    return model


@pytest.mark.parametrize("construction", TIGHT)
def test_tight_floor_is_reached_by_a_saturated_model(construction, images) -> None:
    """A saturated classifier's outputs sit exactly on the floor (the paper's head would stay at 0.98)."""
    model = _saturated(
        timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.6, era_construction=construction)
    )
    torch.testing.assert_close(
        entropy(model.eval()(images)), torch.full((4,), 0.6, dtype=torch.float64), atol=1e-5, rtol=0
    )
    paper = _saturated(timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.6))
    assert entropy(paper.eval()(images)).min().item() > 0.98


def test_construction_survives_reset_classifier_and_is_revalidated(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.65, era_construction="mixture")
    model.reset_classifier(
        2
    )  # 0.65 nats: feasible for a 2-class mixture (< ln 2), not for the paper's map (> 0.633)
    assert (model.era.num_classes, model.era.construction) == (2, "mixture")
    with pytest.raises(ValueError, match=r"feasible interval is \(0.0000, 0.6931\)"):
        timm.create_model("resnet10t_era", num_classes=2, min_entropy=0.7, era_construction="mixture")


def test_bad_construction_arguments_raise_at_creation() -> None:
    with pytest.raises(ValueError, match="construction must be one of"):
        timm.create_model("resnet10t_era", num_classes=10, era_construction="exact")
    with pytest.raises(ValueError, match="construction='mixture' has neither"):
        timm.create_model("resnet10t_era", num_classes=10, era_construction="mixture", era_tau=5.0)


@pytest.mark.parametrize("construction", TIGHT)
def test_construction_round_trips_through_save_for_hf(construction, tmp_path, images) -> None:
    model = timm.create_model(
        "resnet10t_era", num_classes=5, min_entropy=0.9, era_construction=construction
    ).eval()
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    assert (loaded.era.min_entropy, loaded.era.construction) == (0.9, construction)
    torch.testing.assert_close(loaded(images), model(images))


def test_state_dict_keys_are_the_plain_model_keys(images) -> None:
    """Checkpoint interchange is unchanged: the constructions add no parameters or buffers."""
    mixture = timm.create_model("resnet10t_era", num_classes=10, era_construction="mixture").eval()
    plain = timm.create_model("resnet10t", num_classes=10).eval()
    assert list(mixture.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(mixture.state_dict())
    torch.testing.assert_close(mixture(images), mixture.era(plain(images)))


def test_apply_and_remove_era_with_a_construction(images) -> None:
    model = timm.create_model("convnext_atto", num_classes=4)
    model_args = dict(model._model_args)
    timm_era.apply_era(model, min_entropy=0.5, construction="calibrated")
    assert model._model_args["era_construction"] == "calibrated" and model.era.construction == "calibrated"
    timm_era.remove_era(model)
    assert not hasattr(model, "era_construction") and model._model_args == model_args


@pytest.mark.parametrize("construction", TIGHT)
def test_torchscript_and_onnx_export_match_eager(construction, tmp_path, images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, era_construction=construction).eval()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # torch.jit.script is deprecated in favour of torch.compile
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(images), model(images))
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (images,), path, input_names=["x"], output_names=["logits"], dynamo=True)
    (logits,) = ReferenceEvaluator(onnx.load(str(path))).run(None, {"x": images.numpy()})
    np.testing.assert_allclose(logits, model(images).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_training_cli_takes_the_construction(tmp_path) -> None:
    flags = [
        "--dataset",
        "digits",
        "--img-size",
        "16",
        "--batch-size",
        "64",
        "--no-progress",
        "--epochs",
        "1",
    ]
    results = train.main(
        [*flags, "--output", str(tmp_path), "--model", "resnet10t_era", "--min-entropy", "0.6",
         "--era-construction", "mixture"]
    )  # fmt: skip
    assert results["era_construction"] == "mixture" and results["min_entropy"] == 0.6
    assert results["eval"]["entropy_min"] >= 0.6 - 1e-5
    with pytest.raises(SystemExit):
        train.main(
            [*flags, "--output", str(tmp_path), "--model", "resnet10t", "--era-construction", "mixture"]
        )


def test_construction_survives_pickle_and_deepcopy(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, era_construction="mixture").eval()
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert copied.era_construction == "mixture" and copied.era.construction == "mixture"
        torch.testing.assert_close(copied(images), model(images))
