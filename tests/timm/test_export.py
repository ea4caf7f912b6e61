"""Export and training utilities of timm keep working with the ERA head."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from timm_era_cases import ARCHITECTURES


@pytest.mark.parametrize(
    "arch", ["resnet10t", "vit_tiny_patch16_224", "convnext_atto", "mobilenetv3_small_050"]
)
def test_torchscript(arch, images) -> None:
    model = timm.create_model(f"{arch}_era", num_classes=10, **ARCHITECTURES[arch]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # torch.jit.script is deprecated in favour of torch.compile
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(images), model(images))
    features = model.forward_features(images)
    torch.testing.assert_close(
        scripted.forward_head(features, pre_logits=True), model.forward_head(features, True)
    )


def test_torch_compile_forward_and_backward(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(images)
    torch.testing.assert_close(out, model(images))
    out.logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_onnx_export_matches_eager(tmp_path, images) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    model = timm.create_model("resnet10t_era", num_classes=10).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (images,), path, input_names=["x"], output_names=["logits"], dynamo=True)
    graph = onnx.load(str(path))
    assert {"Softmax", "Log", "Sqrt"} <= {node.op_type for node in graph.graph.node}  # the ERA activation
    (logits,) = ReferenceEvaluator(graph).run(None, {"x": images.numpy()})
    np.testing.assert_allclose(logits, model(images).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_model_ema_tracks_an_era_model(images) -> None:
    model = timm.create_model("resnet10t_era", num_classes=10, min_entropy=0.7)
    ema = ModelEmaV3(model, decay=0.5)
    assert type(ema.module) is type(model) and ema.module.era.min_entropy == 0.7
    start = model.fc.weight.detach().clone()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.fc.weight, start + 0.5)
    torch.testing.assert_close(
        ema.module.eval()(images),
        ema.module.era(
            ema.module.fc(ema.module.forward_head(ema.module.forward_features(images), pre_logits=True))
        ),
    )


def test_optimizer_with_layer_decay(images) -> None:
    model = timm.create_model("vit_tiny_patch16_224_era", num_classes=10, img_size=32)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({group["lr_scale"] for group in optimizer.param_groups})
    assert len(scales) > 2 and scales[-1] == 1.0
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(images), torch.arange(4)).backward()
    optimizer.step()
    assert all(
        not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True) if p.grad is not None
    )
    # timm's schedulers multiply each group's lr by its lr_scale: the ERA head at full rate, the patch
    # embedding (the deepest layer) at the smallest scale.
    scale_of = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    assert scale_of[id(model.head.weight)] == 1.0
    assert (
        scale_of[id(model.patch_embed.proj.weight)] == scales[0] == pytest.approx(0.75 ** (len(scales) - 1))
    )


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_torch_fx_symbolic_trace(arch, images) -> None:
    model = timm.create_model(f"{arch}_era", num_classes=10, **ARCHITECTURES[arch]).eval()
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(images), model(images))
    # The traced graph keeps the head's class-count check.
    with pytest.raises(ValueError, match="10 classes"):
        torch.fx.symbolic_trace(model.era)(torch.zeros(2, 7))


@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224", "convnext_atto", "efficientnet_b0"])
def test_timm_fx_feature_extraction(arch, images) -> None:
    model = timm.create_model(f"{arch}_era", num_classes=10, **ARCHITECTURES[arch]).eval()
    _, eval_nodes = timm.models.get_graph_node_names(model)
    extractor = timm.models.create_feature_extractor(model, return_nodes={eval_nodes[-1]: "logits"})
    torch.testing.assert_close(extractor(images)["logits"], model(images))
    # timm's FX feature wrapper gives the ERA model's features as it gives the plain model's.
    plain = timm.create_model(arch, num_classes=10, **ARCHITECTURES[arch]).eval()
    plain.load_state_dict(model.state_dict())
    got = timm.models.FeatureGraphNet(model, out_indices=(-2, -1))(images)
    expected = timm.models.FeatureGraphNet(plain, out_indices=(-2, -1))(images)
    torch.testing.assert_close(got, expected)
