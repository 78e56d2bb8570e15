"""from_torchvision: the converted models give torchvision's raw outputs, default boxes and detections."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.image_list import ImageList

from singleshot.boxes import cxcywh_to_xyxy
from singleshot.errors import UserError
from singleshot.models import build_model, from_torchvision
from singleshot.models.torchvision_interop import convert_state_dict


def _scramble(model: nn.Module, g: torch.Generator) -> None:
    """He-scaled random weights and random batch-norm statistics and affine parameters.

    torchvision's own initialisation (normal std 0.03 in SSDLite) makes every activation vanish and
    every score tie; random statistics also make the conversion of running_mean/var matter.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def _last_convs(head: nn.Module) -> list[nn.Conv2d]:
    return [layer if isinstance(layer, nn.Conv2d) else layer[-1] for layer in head.module_list]


def _calibrate_heads(tv: nn.Module, images: list[torch.Tensor]) -> None:
    """Scale the last head convolutions so that logits have std 1.5 and offsets std 1: no saturated
    softmax (tied scores of 1.0) and no boxes clamped to the image."""
    with torch.no_grad():
        batch, _ = tv.transform(images)
        out = tv.head(list(tv.backbone(batch.tensors).values()))
        for name, head, target in [
            ("cls_logits", tv.head.classification_head, 1.5),
            ("bbox_regression", tv.head.regression_head, 1.0),
        ]:
            factor = target / out[name].std()
            for conv in _last_convs(head):
                conv.weight.mul_(factor)
                conv.bias.mul_(factor)


def _sorted(det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detections by descending score, ties by label then box: equal scores may come in either order."""
    keys = [
        (-s, lab, *box)
        for s, lab, box in zip(det["scores"].tolist(), det["labels"].tolist(), det["boxes"].tolist())
    ]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return {k: v[order] for k, v in det.items()}


def _capture(module: nn.Module, store: dict, key: str):
    return module.register_forward_hook(lambda mod, args, out: store.__setitem__(key, (args, out)))


@pytest.mark.parametrize("builder", [ssd300_vgg16, ssdlite320_mobilenet_v3_large])
def test_converted_model_matches_torchvision(builder):
    g = torch.Generator().manual_seed(0)
    tv = builder(weights=None, weights_backbone=None, num_classes=4)
    _scramble(tv, g)
    tv.eval()
    # Two sizes that are neither square nor the network's: resizing and per-image scaling matter.
    images = [torch.rand(3, 240, 330, generator=g), torch.rand(3, 310, 280, generator=g)]
    _calibrate_heads(tv, images[:1])
    model = from_torchvision(tv)
    assert not model.training and model.arch == builder.__name__

    seen: dict = {}
    hooks = [
        _capture(tv.backbone, seen, "tv_in"),
        _capture(tv.head, seen, "tv_out"),
        _capture(model, seen, "ours"),
    ]
    with torch.inference_mode():
        expected = tv(images)
        got = model.predict(images)
    for h in hooks:
        h.remove()

    # Same pre-processing (normalise, then bilinear resize without antialiasing) ...
    (tv_input,), _ = seen["tv_in"]
    (our_input,), (cls_logits, box_deltas) = seen["ours"]
    torch.testing.assert_close(our_input, tv_input, rtol=0, atol=1e-4)
    # ... same raw head outputs ...
    tv_out = seen["tv_out"][1]
    torch.testing.assert_close(cls_logits, tv_out["cls_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(box_deltas, tv_out["bbox_regression"], rtol=1e-4, atol=1e-4)
    # ... same default boxes (torchvision's are xyxy pixels of the network input) ...
    h, w = model.image_size
    maps = [torch.empty(1, 1, fh, fw) for fh, fw in model.feature_sizes(model.image_size)]
    tv_boxes = tv.anchor_generator(ImageList(tv_input, [(h, w)] * len(images)), maps)[0]
    torch.testing.assert_close(
        cxcywh_to_xyxy(model.priors) * torch.tensor([w, h, w, h]), tv_boxes, rtol=0, atol=1e-4
    )
    # ... and the same detections.
    for want, have in zip(expected, got):
        want, have = _sorted(want), _sorted(have)
        assert len(want["scores"]) == len(have["scores"]) > 10
        assert torch.equal(have["labels"], want["labels"])
        torch.testing.assert_close(have["scores"], want["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(have["boxes"], want["boxes"], rtol=0, atol=1e-3)


def test_settings_are_torchvisions():
    with torch.device("meta"):
        vgg = from_torchvision(ssd300_vgg16(weights=None, weights_backbone=None, num_classes=3))
        lite = from_torchvision(
            ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
        )
    assert vgg.num_classes == 3 and len(vgg.priors) == 8732 and vgg.clip == "wh"
    assert vgg.mean == (0.48235, 0.45882, 0.40784) and vgg.std == pytest.approx((1 / 255,) * 3)
    assert (vgg.score_threshold, vgg.nms_threshold, vgg.candidates_per_class, vgg.max_detections) == (
        0.01,
        0.45,
        400,
        200,
    )
    assert vgg.scales == [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05] and vgg.steps == [8, 16, 32, 64, 100, 300]
    assert lite.num_classes == 5 and len(lite.priors) == 3234 and lite.steps is None
    assert lite.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    assert (lite.score_threshold, lite.nms_threshold, lite.candidates_per_class, lite.max_detections) == (
        0.001,
        0.55,
        300,
        300,
    )
    assert lite.mean == (0.5, 0.5, 0.5) and lite.arch_args["reduced_tail"] is True
    assert lite.variances == vgg.variances == (0.1, 0.2)
    assert not vgg.antialias and not lite.antialias and build_model("ssd_small", 3).antialias


def test_state_dict_converts_with_default_settings():
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    model = from_torchvision(tv.state_dict(), arch="ssdlite320_mobilenet_v3_large")
    assert model.score_threshold == 0.001 and not model.training
    for key, value in convert_state_dict(tv.state_dict(), model.arch).items():
        assert torch.equal(model.state_dict()[key], value)
    with pytest.raises(UserError, match="not ssd300_vgg16"):
        from_torchvision(tv.state_dict(), arch="ssd300_vgg16")
    with pytest.raises(UserError, match="not those of torchvision"):
        from_torchvision(build_model("ssd_small", 3).state_dict())
