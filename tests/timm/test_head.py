"""The ERA head on timm models: the entropy floor on model outputs, and every timm head path kept intact."""

from __future__ import annotations

import copy
import math
import pickle
import re

import pytest
import timm
import torch
from timm_era_cases import ARCHITECTURES, entropy
from torch import nn

import timm_era
from era_core import softmax_era_feasible_range


def _saturate_classifier(model: nn.Module, scale: float) -> None:
    """Scale the classifier's weights; for ``scale > 1`` also add ``scale`` to class 0's bias (one-hot logits)."""
    classifier = model.get_classifier()
    with torch.no_grad():
        classifier.weight.mul_(scale)
        if scale > 1:
            classifier.bias[0] += scale


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("num_classes, min_entropy", [(2, 0.5), (10, 0.6), (100, None)])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_entropy_floor_holds_on_model_outputs(arch, num_classes, min_entropy, scale, images) -> None:
    model = timm.create_model(
        f"{arch}_era", num_classes=num_classes, min_entropy=min_entropy, **ARCHITECTURES[arch]
    )
    _saturate_classifier(model, scale)
    model.eval()
    with torch.no_grad():
        logits = model(images)
        plain = timm_era.remove_era(model)(images)
    floor = timm_era.resolve_min_entropy(num_classes, min_entropy)
    assert torch.isfinite(logits).all()
    assert entropy(logits).min().item() >= floor
    if scale > 1:  # the plain head is saturated below the floor there: the floor is ERA's doing
        assert entropy(plain).min().item() < floor


def test_newton_inverse_keeps_the_floor_on_saturated_outputs(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.6, era_inverse="newton").eval()
    assert model.era.inverse == "newton"
    _saturate_classifier(model, 1e4)
    with torch.no_grad():
        assert entropy(model(images)).min().item() >= 0.6


def test_floor_holds_in_bfloat16_and_gradients_are_finite(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.6)
    _saturate_classifier(model, 1e4)
    logits = model.to(torch.bfloat16)(images.to(torch.bfloat16))
    assert logits.dtype == torch.bfloat16
    assert entropy(logits).min().item() >= 0.6
    nn.functional.cross_entropy(logits.float(), torch.arange(4)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_default_min_entropy_matches_the_authors_settings_and_is_feasible() -> None:
    assert timm_era.default_min_entropy(10) == pytest.approx(0.6)
    assert timm_era.default_min_entropy(1000) == pytest.approx(1.2)
    for num_classes in (2, 3, 10, 100, 1000, 21843):
        low, high = softmax_era_feasible_range(num_classes)
        assert low < timm_era.default_min_entropy(num_classes) <= high
    model = timm.create_model("resnet10t_era", num_classes=100)
    assert model.era.min_entropy == pytest.approx(0.9)
    assert model.era_min_entropy is None


@pytest.mark.parametrize("num_classes, min_entropy", [(2, 0.64), (10, 2.3), (10, -0.1), (10, math.nan)])
def test_infeasible_min_entropy_raises_with_the_interval(num_classes, min_entropy) -> None:
    with pytest.raises(ValueError, match="feasible interval"):
        timm.create_model("resnet10t_era", num_classes=num_classes, min_entropy=min_entropy)


def test_one_class_head_is_refused_with_the_reason() -> None:
    message = re.escape(
        "ERA needs a softmax over at least 2 classes, got num_classes=1: a 1-class softmax is constant (entropy 0), "
        "so no floor can hold. Use the plain model for a single logit (e.g. sigmoid/BCE), or num_classes=0 for "
        "features."
    )
    with pytest.raises(ValueError, match=f"^{message}$"):
        timm.create_model("resnet10t_era", num_classes=1)
    with pytest.raises(ValueError, match=f"^{message}$"):
        timm_era.apply_era(timm.create_model("resnet10t", num_classes=1))


def test_unknown_inverse_raises() -> None:
    with pytest.raises(ValueError, match="era_inverse must be one of"):
        timm.create_model("resnet10t_era", num_classes=10, era_inverse="exact")


def test_zero_classes_returns_features_with_era_off(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=0).eval()
    assert isinstance(model.era, nn.Identity)
    plain = timm.create_model("resnet10t", num_classes=0).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(images), plain(images))


def test_pre_logits_bypasses_era(images) -> None:
    model = timm.create_model("convnext_atto_era", num_classes=10).eval()
    plain = timm.create_model("convnext_atto", num_classes=10).eval()
    plain.load_state_dict(model.state_dict())
    features = model.forward_features(images)
    torch.testing.assert_close(
        model.forward_head(features, pre_logits=True), plain.forward_head(features, True)
    )
    torch.testing.assert_close(model.forward_head(features), model.era(plain.forward_head(features)))
    torch.testing.assert_close(model(images), model.forward_head(features))


def test_reset_classifier_revalidates_for_the_new_class_count(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=1.0)
    model.reset_classifier(5)
    assert model.era.num_classes == 5 and model.era.min_entropy == 1.0
    assert model(images).shape == (4, 5)
    with pytest.raises(ValueError, match="feasible interval"):
        model.reset_classifier(2)  # 1.0 nats is above the 2-class maximum (~0.633)
    assert model.num_classes == 5  # a refused reset leaves the model as it was
    model.reset_classifier(0)
    assert isinstance(model.era, nn.Identity) and model(images).shape == (4, 512)
    default = timm.create_model("resnet10t_era", num_classes=10)
    default.reset_classifier(1000)
    assert default.era.min_entropy == pytest.approx(1.2)  # the default follows the class count


def test_features_only_builds_timm_feature_extractor(images) -> None:
    model = timm.create_model("resnet10t_era", features_only=True, out_indices=(2, 4))
    assert [f.shape[1] for f in model(images)] == model.feature_info.channels()
    with pytest.raises(ValueError, match="features_only"):
        timm.create_model("resnet10t_era", features_only=True, min_entropy=0.6)


def test_state_dicts_interchange_with_the_plain_model(images) -> None:
    era = timm.create_model("resnet10t_era", num_classes=10).eval()
    plain = timm.create_model("resnet10t", num_classes=10).eval()
    assert list(era.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(era.state_dict())
    torch.testing.assert_close(era(images), era.era(plain(images)))
    era.load_state_dict(timm.create_model("resnet10t", num_classes=10).state_dict())


def test_apply_and_remove_era_round_trip(images) -> None:
    model = timm.create_model("convnext_atto", num_classes=10).eval()
    before = model(images)
    model_args = dict(model._model_args)
    assert timm_era.apply_era(model, min_entropy=0.8) is model
    assert timm_era.has_era(model) and isinstance(model, timm.models.ConvNeXt)
    assert model.pretrained_cfg["architecture"] == "convnext_atto_era"
    assert model._model_args["min_entropy"] == 0.8
    torch.testing.assert_close(model(images), model.era(before))
    timm_era.apply_era(model, min_entropy=1.0)  # re-applying replaces the settings
    assert model.era.min_entropy == 1.0
    timm_era.remove_era(model)
    assert type(model) is timm.models.ConvNeXt and not hasattr(model, "era")
    assert model.pretrained_cfg["architecture"] == "convnext_atto" and model._model_args == model_args
    torch.testing.assert_close(model(images), before)
    with pytest.raises(ValueError, match="no ERA head"):
        timm_era.remove_era(model)


class _HeadWithoutReset(nn.Module):
    """A timm-like head with ``num_classes`` and ``forward_head(x, pre_logits)`` but no ``reset_classifier``."""

    num_classes = 10

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x


def test_apply_era_rejects_modules_without_a_classifier() -> None:
    message = r"^apply_era needs a timm classifier \(num_classes, forward_head, reset_classifier\); got {}$"
    with pytest.raises(TypeError, match=message.format("Linear")):
        timm_era.apply_era(nn.Linear(4, 10))
    with pytest.raises(TypeError, match=message.format("FeatureListNet")):
        timm_era.apply_era(timm.create_model("resnet10t", features_only=True))
    with pytest.raises(TypeError, match=message.format("_HeadWithoutReset")):
        timm_era.apply_era(_HeadWithoutReset())


def test_era_models_pickle_and_deepcopy(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.7).eval()
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(clone) is type(model) and clone.era.min_entropy == 0.7
        torch.testing.assert_close(clone(images), model(images))


def test_era_class_is_cached_and_named_after_the_plain_class() -> None:
    cls = timm_era.era_class(timm.models.ResNet)
    assert cls is timm_era.era_class(timm.models.ResNet) and cls.__name__ == "ResNetERA"
    assert issubclass(cls, timm.models.ResNet)
    assert type(timm.create_model("resnet10t_era", num_classes=3)) is cls


# Families beyond the five above, at their default input size: checked to route forward() through forward_head.
MORE_ARCHITECTURES = [
    "resnet18", "densenet121", "dla34", "ghostnet_050", "hrnet_w18_small", "levit_128s", "mixer_s32_224",
    "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224", "efficientformer_l1", "mobilevit_xxs",
    "repvgg_a0", "tf_efficientnetv2_b0", "coat_lite_tiny", "xcit_nano_12_p16_224", "cait_xxs24_224",
    "crossvit_tiny_240", "poolformer_s12", "pvt_v2_b0", "vgg11", "inception_v3", "rexnet_100", "fastvit_t8",
    "edgenext_xx_small", "efficientvit_b0", "hgnetv2_b0", "mambaout_femto", "regnetx_002", "convnextv2_atto",
    "eva02_tiny_patch14_224", "tiny_vit_5m_224", "nextvit_small", "davit_tiny", "focalnet_tiny_srf",
    "mobilenetv4_conv_small", "gcvit_xxtiny", "starnet_s1", "inception_next_atto",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("arch", MORE_ARCHITECTURES)
def test_forward_goes_through_the_era_head(arch) -> None:
    model = timm.create_model(f"{arch}_era", num_classes=10).eval()
    images = torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
        plain = timm_era.remove_era(copy.deepcopy(model))(images)
    torch.testing.assert_close(logits, model.era(plain))
    assert entropy(logits).min().item() >= 0.6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(tau=5.0), "era_construction='mixture' takes neither"),
        (dict(inverse="newton"), "era_construction='mixture' takes neither"),
    ],
)
def test_mixture_head_refuses_the_paper_maps_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        timm_era.build_era_head(10, 0.6, construction="mixture", **kwargs)
    assert timm_era.build_era_head(10, 0.6, construction="mixture").construction == "mixture"
    with pytest.raises(
        ValueError, match=r"era_construction must be one of \('paper', 'mixture', 'calibrated'\)"
    ):
        timm_era.build_era_head(10, 0.6, construction="exact")


def test_reset_classifier_keeps_the_construction_and_passes_timms_arguments(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=1.0)
    timm_era.apply_era(model, min_entropy=1.0, tau=6.0, inverse="newton", construction="calibrated")
    model.reset_classifier(5, "max")
    assert (model.era.tau, model.era.inverse, model.era.construction) == (6.0, "newton", "calibrated")
    assert model.global_pool.pool_type == "max"
    model.reset_classifier(5, global_pool="avg")
    assert model.global_pool.pool_type == "avg"


@pytest.mark.parametrize(
    ("kwargs", "recorded"),
    [
        (dict(), dict(min_entropy=0.8)),
        (dict(tau=6.0, inverse="newton"), dict(min_entropy=0.8, era_tau=6.0, era_inverse="newton")),
        (dict(construction="mixture"), dict(min_entropy=0.8, era_construction="mixture")),
    ],
)
def test_model_args_record_the_era_settings_that_differ_from_the_defaults(kwargs, recorded) -> None:
    # timm's save_for_hf exports _model_args: the ERA settings must be there to rebuild the same head.
    model = timm.create_model("resnet10t", num_classes=10)
    timm_era.apply_era(model, min_entropy=0.8, **kwargs)
    assert {k: v for k, v in model._model_args.items() if k not in ("num_classes",)} == recorded
    assert model.default_cfg["architecture"] == model.pretrained_cfg["architecture"] == "resnet10t_era"


def test_apply_and_remove_era_on_a_model_built_without_timms_factory(images) -> None:
    # A classifier instantiated directly has neither pretrained_cfg nor _model_args.
    model = timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    timm_era.apply_era(model, min_entropy=0.8)
    assert model._model_args == {"min_entropy": 0.8} and not hasattr(model, "pretrained_cfg")
    timm_era.remove_era(model)
    assert type(model) is timm.models.ResNet and model._model_args == {}
    with pytest.raises(ValueError, match=r"^ResNet has no ERA head to remove"):
        timm_era.remove_era(model)


def _new_resnet_class() -> type[timm.models.ResNet]:
    """A ResNet subclass made afresh on every call, so that ``era_class`` builds its ERA class (it caches per class):
    its ``forward_head`` has a default, a keyword-only default, annotations and a closure (``super()``)."""

    class FreshResNet(timm.models.ResNet):
        def forward_head(
            self, x: torch.Tensor, pre_logits: bool = False, *, scale: float = 2.0
        ) -> torch.Tensor:
            return super().forward_head(x, pre_logits) * scale

    return FreshResNet


def test_era_class_builds_a_new_class_around_its_plain_head(images) -> None:
    plain_class = _new_resnet_class()
    cls = timm_era.era_class(plain_class)
    assert cls.__name__ == cls.__qualname__ == "FreshResNetERA" and cls.__module__ == "timm_era.head"
    assert cls.__doc__.startswith("FreshResNet whose ``forward_head`` ends in ERA")
    assert cls._plain_class is plain_class and cls.__mro__[1:3] == (
        timm_era.head.ERAClassifierMixin,
        plain_class,
    )
    assert timm_era.era_class(plain_class) is cls and timm_era.era_class(cls) is cls
    # The plain head under its own name (TorchScript compiles a method under the function's __name__), with the
    # original's defaults, keyword-only defaults, annotations and closure.
    head = cls._plain_forward_head
    original = plain_class.forward_head
    assert head.__name__ == "_plain_forward_head" and head.__code__ is original.__code__
    assert head.__qualname__ == original.__qualname__.rsplit(".", 1)[0] + "._plain_forward_head"
    assert head.__qualname__.endswith(".<locals>.FreshResNet._plain_forward_head")
    assert head.__defaults__ == (False,) and head.__kwdefaults__ == {"scale": 2.0}
    assert head.__annotations__ == original.__annotations__
    assert head.__annotations__ is not original.__annotations__

    model = plain_class(timm.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    features = model.forward_features(images)
    plain_logits = model.forward_head(features)
    timm_era.apply_era(model, min_entropy=0.8)
    assert type(model) is cls
    torch.testing.assert_close(model._plain_forward_head(features), plain_logits)
    torch.testing.assert_close(model.forward_head(features), model.era(plain_logits))
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), 2.0 * features.mean((2, 3)))


def test_era_class_refuses_classes_without_a_timm_classifier_head() -> None:
    message = (
        r"^{} has no timm classifier head \(forward_head\(x, pre_logits\)\); ERA needs one\. Feature extractors "
        r"\(features_only=True\) and encoders without a classifier cannot take ERA\.$"
    )

    class NoHead(nn.Module):
        pass

    class HeadWithoutPreLogits(nn.Module):
        def forward_head(self, x: torch.Tensor) -> torch.Tensor:
            return x

    for plain_class in (NoHead, HeadWithoutPreLogits):
        with pytest.raises(TypeError, match=message.format(plain_class.__name__)):
            timm_era.era_class(plain_class)


@pytest.mark.parametrize("construction", ["mixture", "calibrated"])
def test_the_floor_is_checked_against_the_interval_of_the_construction_in_use(construction) -> None:
    # 10 classes: the paper's map allows (-0.06, 2.243], the tight constructions (0, ln 10 = 2.303).
    above_the_papers = 2.25
    assert timm_era.resolve_min_entropy(10, above_the_papers, construction=construction) == above_the_papers
    with pytest.raises(ValueError, match="feasible interval"):
        timm_era.resolve_min_entropy(10, above_the_papers)
    with pytest.raises(ValueError, match="feasible interval"):
        timm_era.resolve_min_entropy(10, 0.0, construction=construction)
    assert timm_era.resolve_min_entropy(10, 0.0) == 0.0
    head = timm_era.build_era_head(10, above_the_papers, construction=construction)
    assert (head.construction, head.min_entropy) == (construction, above_the_papers)
    with pytest.raises(ValueError, match="feasible interval"):
        timm_era.build_era_head(10, 0.0, construction=construction)
    model = timm_era.apply_era(
        timm.create_model("resnet10t", num_classes=10), above_the_papers, construction=construction
    )
    assert (model.era.construction, model.era.min_entropy) == (construction, above_the_papers)
