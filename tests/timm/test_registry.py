"""The <arch>_era names in timm's registry: listing, pretrained tags, local weight files and hub-style folders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import load_checkpoint, save_for_hf

import timm_era


def test_every_architecture_has_an_era_twin_in_its_own_module() -> None:
    plain = timm.list_models(exclude_filters="*_era")
    era = timm.list_models(module="era_models")
    assert len(plain) > 1000
    assert set(era) == {name + "_era" for name in plain}
    assert sorted(timm.list_models()) == sorted(plain + era)


def test_pretrained_tags_are_mirrored() -> None:
    assert timm.list_pretrained("resnet50_era*") == [
        timm_era.era_model_name(n) for n in timm.list_pretrained("resnet50.*")
    ]
    assert len(timm.list_pretrained("*_era")) == len(timm.list_pretrained(exclude_filters="*_era"))
    cfg = timm.models.get_pretrained_cfg("resnet50_era.a1_in1k")
    plain = timm.models.get_pretrained_cfg("resnet50.a1_in1k")
    assert cfg.architecture == "resnet50_era" and cfg.tag == "a1_in1k"
    assert cfg.hf_hub_id == plain.hf_hub_id == "timm/resnet50.a1_in1k"  # the weights are the plain model's
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("resnet50_era.not_a_tag")


def test_register_era_models_is_idempotent() -> None:
    assert timm_era.register_era_models() == []


def test_names_convert_both_ways() -> None:
    assert timm_era.era_model_name("resnet50.a1_in1k") == "resnet50_era.a1_in1k"
    assert timm_era.plain_model_name("resnet50_era.a1_in1k") == "resnet50.a1_in1k"
    assert timm_era.plain_model_name("resnet50") == "resnet50"


def test_pretrained_tag_loads_a_local_safetensors_file(tmp_path, images) -> None:
    source = timm.create_model("resnet10t", num_classes=10).eval()
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    model = timm.create_model(
        "resnet10t_era.c3_in1k",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "weights.safetensors"), num_classes=10),
        num_classes=10,
        min_entropy=0.6,
    ).eval()
    assert (
        model.pretrained_cfg["architecture"] == "resnet10t_era" and model.pretrained_cfg["tag"] == "c3_in1k"
    )
    torch.testing.assert_close(model(images), model.era(source(images)))


def test_pretrained_weights_with_a_new_class_count_keep_the_backbone(tmp_path) -> None:
    source = timm.create_model("resnet10t")  # 1000 ImageNet classes
    save_file(source.state_dict(), tmp_path / "in1k.safetensors")
    model = timm.create_model(
        "resnet10t_era.c3_in1k",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "in1k.safetensors")),
        num_classes=10,
    )
    torch.testing.assert_close(model.conv1[0].weight, source.conv1[0].weight)
    assert model.fc.out_features == 10 and model.era.num_classes == 10


def test_era_checkpoint_loads_into_plain_model_and_back(tmp_path, images) -> None:
    era = timm.create_model("resnet10t_era", num_classes=10).eval()
    torch.save(era.state_dict(), tmp_path / "era.pth")
    plain = timm.create_model("resnet10t", num_classes=10, checkpoint_path=str(tmp_path / "era.pth")).eval()
    torch.testing.assert_close(era(images), era.era(plain(images)))
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    again = timm.create_model("resnet10t_era", num_classes=10)
    load_checkpoint(again, str(tmp_path / "plain.pth"))
    torch.testing.assert_close(again.eval()(images), era(images))


def test_save_for_hf_round_trip_through_local_dir(tmp_path, images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=5, min_entropy=0.9, era_inverse="newton").eval()
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    assert timm_era.has_era(loaded)
    assert (loaded.era.num_classes, loaded.era.min_entropy, loaded.era.inverse) == (5, 0.9, "newton")
    torch.testing.assert_close(loaded(images), model(images))


def test_applied_head_exports_as_an_era_model(tmp_path, images) -> None:
    model = timm_era.apply_era(timm.create_model("convnext_atto", num_classes=4), min_entropy=0.5).eval()
    save_for_hf(model, tmp_path / "export")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    assert timm_era.has_era(loaded) and loaded.era.min_entropy == 0.5
    torch.testing.assert_close(loaded(images), model(images))


def test_import_without_registering() -> None:
    code = "import timm, timm_era; print(len(timm.list_models('*_era')))"
    env = dict(os.environ, TIMM_ERA_REGISTER="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


REGISTER_LATER = """
import math
import timm, torch
from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import BasicBlock, ResNet
import timm_era

@register_model
def my_tiny_resnet(pretrained=False, **kwargs):
    return build_model_with_cfg(ResNet, "my_tiny_resnet", pretrained, block=BasicBlock, layers=[1, 1, 1, 1], **kwargs)

assert not timm.is_model("my_tiny_resnet_era")
assert timm_era.register_era_models("my_tiny_*") == ["my_tiny_resnet_era"]
assert timm_era.register_era_models("my_tiny_*") == []
model = timm.create_model("my_tiny_resnet_era", num_classes=4, min_entropy=1.0).eval()
assert timm_era.has_era(model) and timm.list_models(module="era_models", filter="my_tiny_*") == ["my_tiny_resnet_era"]
logp = model(torch.randn(8, 3, 32, 32) * 100).log_softmax(-1)
print(float(-(logp.exp() * logp).sum(-1).min()))
"""


def test_models_registered_after_the_import_get_era_twins_on_request() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", REGISTER_LATER],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert float(result.stdout.split()[-1]) >= 1.0  # the twin's entropy floor holds
