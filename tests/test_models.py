"""The SSD module, the zoo, ImageNet backbone loading and the `singleshot models` command."""

from __future__ import annotations

import inspect
import json
import math
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from singleshot.boxes import cxcywh_to_xyxy
from singleshot.cli import main
from singleshot.errors import UserError
from singleshot.models import DEFAULT_MODEL, SSD, SSDHead, build_model, list_models, zoo
from singleshot.models.ssd import count_flops, count_parameters
from singleshot.models.vgg import L2Norm, subsample_fc6, subsample_fc7
from singleshot.priors import SSD300_VOC, SSD512_VOC, default_boxes

# Small non-square inputs that keep every source map non-empty (VGG's valid 3x3 extras need >= ~270 px).
TEST_SIZES = {
    "ssd300_vgg16": (272, 304),
    "ssd512_vgg16": (272, 288),
    "ssdlite320_mobilenet_v3_large": (128, 160),
    "ssd_small": (96, 128),
}


def test_zoo_lists_every_model_and_default():
    names = list_models()
    assert DEFAULT_MODEL == "ssd_small"
    assert set(TEST_SIZES) <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_forward_loss_backward_on_a_non_square_input(name, rng):
    size = TEST_SIZES.get(name, (256, 288))
    model = build_model(name, 4, image_size=size)
    assert model.image_size == size and model.arch == name
    h, w = size
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=rng)
    cls_logits, box_deltas = model(model.normalize(images))
    p = len(model.priors)
    assert cls_logits.shape == (2, p, 4) and box_deltas.shape == (2, p, 4)
    # The priors follow the real feature maps of this (non-square) input.
    maps = model.feature_sizes(size)
    assert p == sum(fh * fw * n for (fh, fw), n in zip(maps, model.head.boxes_per_cell))
    assert any(fh != fw for fh, fw in maps)
    targets = [
        {"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.4, 0.1, 0.9, 0.8]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model.loss_fn()(cls_logits, box_deltas, targets)
    assert losses["num_pos"] >= 2 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_reference_default_boxes_at_the_default_sizes():
    with torch.device("meta"):  # shapes only: no weights are allocated
        ssd300 = build_model("ssd300_vgg16", 21)
        ssd512 = build_model("ssd512_vgg16", 21)
        lite = build_model("ssdlite320_mobilenet_v3_large", 91)
    assert (len(ssd300.priors), len(ssd512.priors), len(lite.priors)) == (8732, 24564, 3234)
    assert ssd300.feature_sizes(300) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert ssd512.feature_sizes(512) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    vgg = build_model("ssd300_vgg16", 21)
    torch.testing.assert_close(vgg.priors, default_boxes(**SSD300_VOC, clip=None), rtol=0, atol=0)
    assert ssd512.steps == SSD512_VOC["steps"] and ssd512.scales == pytest.approx(SSD512_VOC["scales"])


def test_priors_of_another_size_spread_evenly_over_the_real_maps():
    model = build_model("ssd300_vgg16", 3, image_size=(300, 500))
    # 500 px: 250, 125, 63 (ceil-mode pool3) = conv4_3, 31 = fc7 (pool4), then 16, 8, 6, 4.
    maps = [(38, 63), (19, 31), (10, 16), (5, 8), (3, 6), (1, 4)]
    assert model.feature_sizes((300, 500)) == maps
    want = default_boxes(maps, SSD300_VOC["aspect_ratios"], scales=SSD300_VOC["scales"], clip=None)
    torch.testing.assert_close(model.priors, want, rtol=0, atol=0)
    assert model.steps is None  # the reference strides belong to 300x300
    # priors_for on the 300x300 model: reference steps at 300, even spread at other sizes.
    square = build_model("ssd300_vgg16", 3)
    torch.testing.assert_close(square.priors_for((300, 500)), want, rtol=0, atol=0)
    torch.testing.assert_close(square.priors_for(300), square.priors)


def test_too_small_input_is_a_user_error():
    with pytest.raises(UserError, match="too small"):
        build_model("ssd300_vgg16", 3, image_size=160)


def test_vgg_structure_follows_the_paper():
    with torch.device("meta"):
        model = build_model("ssd512_vgg16", 21)
    backbone = model.backbone
    pools = [m for m in [*backbone.conv4, *backbone.conv5] if isinstance(m, nn.MaxPool2d)]
    assert [p.ceil_mode for p in pools] == [False, False, True, False]
    assert (backbone.pool5.kernel_size, backbone.pool5.stride, backbone.pool5.padding) == (3, 1, 1)
    assert (
        backbone.fc6.dilation == (6, 6)
        and backbone.fc6.kernel_size == (3, 3)
        and backbone.fc6.out_channels == 1024
    )
    assert backbone.fc7.kernel_size == (1, 1) and backbone.fc7.out_channels == 1024
    last = backbone.extras[-1][2]
    assert last.kernel_size == (4, 4) and last.padding == (1, 1)
    assert all(conv.kernel_size == (3, 3) for conv in [*model.head.classification, *model.head.regression])
    real = build_model("ssd300_vgg16", 21)
    assert torch.equal(real.backbone.l2norm.weight, torch.full((512,), 20.0))
    assert count_parameters(real) == 26_285_486  # the paper's SSD300 for VOC (ssd.pytorch: 26.3 M)


def test_l2norm_scales_unit_vectors_and_survives_half_precision():
    norm = L2Norm(3, scale=20.0)
    x = torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x).flatten(), torch.tensor([12.0, 16.0, 0.0]))
    big = torch.full((1, 512, 2, 2), 300.0, dtype=torch.float16)  # sum of squares overflows float16
    out = L2Norm(512)(big)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(
        out.float(), torch.full((1, 512, 2, 2), 20 / math.sqrt(512)), rtol=1e-3, atol=1e-3
    )


def test_normalize_accepts_uint8_and_float():
    model = build_model("ssd_small", 3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    want = torch.tensor([(0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(model.normalize(images), want)
    torch.testing.assert_close(model.normalize(images.float() / 255), want)


def _constant_head(model: SSD, layer: int, label: int) -> None:
    """Zero every head weight; make box 0 of each cell of source map ``layer`` score ``label`` only."""
    with torch.no_grad():
        for conv in model.head.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.zero_()
                conv.bias.zero_()
        for k, conv in enumerate(model.head.classification):
            conv.bias.view(-1, model.num_classes)[:, 0] = 10.0  # background everywhere ...
            if k == layer:
                conv.bias.view(-1, model.num_classes)[0, 0] = 0.0
                conv.bias.view(-1, model.num_classes)[0, label] = 10.0  # ... except box 0 of this map


def test_predict_returns_prior_boxes_in_each_images_pixels():
    model = build_model("ssd_small", 4, score_threshold=0.5, nms_threshold=0.99)  # NMS keeps all 9
    _constant_head(model, layer=3, label=2)  # the 3x3 map: its 9 square boxes, label 2
    maps = model.feature_sizes(model.image_size)
    first = sum(fh * fw * n for (fh, fw), n in zip(maps[:3], model.head.boxes_per_cell))
    cells = maps[3][0] * maps[3][1]
    priors = model.priors[first : first + cells * model.head.boxes_per_cell[3] : model.head.boxes_per_cell[3]]
    images = [torch.randint(0, 256, (3, 120, 200), dtype=torch.uint8), torch.rand(3, 90, 60)]
    with torch.inference_mode():
        detections = model.predict(images)
    for image, det in zip(images, detections):
        h, w = image.shape[-2:]
        want = (cxcywh_to_xyxy(priors) * torch.tensor([w, h, w, h])).clamp(min=0)
        want = torch.minimum(want, torch.tensor([w, h, w, h]))
        assert det["labels"].tolist() == [2] * cells
        got = det["boxes"][torch.argsort(det["boxes"][:, 1] * 1e4 + det["boxes"][:, 0])]
        want = want[torch.argsort(want[:, 1] * 1e4 + want[:, 0])]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    assert model.training  # predict gives the model back in the mode it had


def test_predict_settings_are_attributes():
    model = build_model("ssd_small", 4)
    _constant_head(model, layer=3, label=1)
    model.max_detections = 4
    assert len(model.predict([torch.rand(3, 64, 64)])[0]["boxes"]) == 4
    model.score_threshold = 0.9999
    assert len(model.predict([torch.rand(3, 64, 64)])[0]["boxes"]) == 0
    assert model.predict([]) == []


def test_predict_takes_pil_images_and_numpy_arrays_as_well_as_tensors(rng):
    from PIL import Image

    model = build_model("ssd_small", 4, image_size=64)
    model.score_threshold = 0.0  # an untrained model: keep its low scores, so that there is much to compare
    tensor = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8, generator=rng)
    array = tensor.permute(1, 2, 0).numpy()  # (H, W, 3)
    by_tensor, by_pil, by_numpy = model.predict([tensor, Image.fromarray(array), array])
    assert len(by_tensor["boxes"]) > 0 and by_tensor["boxes"][:, 2].max() > 64  # in the image's 80 px width
    for other in (by_pil, by_numpy):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(other[key], by_tensor[key], rtol=0, atol=0)

    gray = Image.fromarray(array[..., 0])  # mode L: its gray replicated to RGB
    (by_gray,) = model.predict([gray])
    (by_replicated,) = model.predict([tensor[:1].expand(3, -1, -1)])
    torch.testing.assert_close(by_gray["boxes"], by_replicated["boxes"], rtol=0, atol=0)
    assert len(model.predict([gray.convert("P"), Image.fromarray(array).convert("RGBA")])) == 2


@pytest.mark.parametrize(
    "image,got",
    [
        (np.zeros((32, 32, 3), dtype=np.float32), "a numpy float32 array of shape (32, 32, 3)"),
        (np.zeros((32, 32), dtype=np.uint8), "a numpy uint8 array of shape (32, 32)"),
        (torch.zeros(32, 32, 3, dtype=torch.uint8), "got shape (32, 32, 3)"),
        ("photo.jpg", "got str"),
    ],
)
def test_predict_of_something_else_is_one_sentence_naming_it(image, got):
    model = build_model("ssd_small", 4, image_size=64)
    with pytest.raises(TypeError) as exc:
        model.predict([image])
    message = str(exc.value)
    assert got in message and "[3, H, W]" in message and len(message.splitlines()) == 1


def test_background_prior_initialises_the_softmax():
    head = SSDHead([8, 8], [4, 6], 5, background_prior=0.9)
    features = [torch.zeros(1, 8, 3, 3), torch.zeros(1, 8, 2, 2)]  # zero features: the biases alone
    scores = head(features)[0].softmax(-1)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025]).expand(1, 60, 5))
    torch.manual_seed(0)  # the model's weights, and below the features: the same draw in any test order
    model = build_model("ssd_small", 3)
    # p = 0.99 over 2 other classes: b = log(0.99 * 2 / 0.01) = log(198)
    assert model.head.classification[0].bias.view(-1, 3)[:, 0].tolist() == [pytest.approx(math.log(198))] * 4
    # the small last weights keep the prior on features of unit scale, not only on zero features
    torch.manual_seed(0)
    features = [torch.randn(2, c, 6, 6).relu() for c in model.backbone.out_channels]
    background = model.head(features)[0].softmax(-1)[..., 0]
    # (over seeds 0-11 of the model: minimum 0.964-0.983, mean 0.989-0.990)
    assert 0.95 < background.min() and abs(background.mean().item() - 0.99) < 0.005
    xavier = SSDHead([8, 8], [4, 6], 5)  # without a prior: the paper's initialisation, zero biases
    assert all(float(c.bias.detach().abs().max()) == 0 for c in xavier.classification)
    assert float(xavier.classification[0].weight.detach().std()) > 0.05


def test_channels_last_and_autocast_give_the_same_detections(rng):
    model = build_model("ssd_small", 4, image_size=96).eval()
    x = model.normalize(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8, generator=rng))
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        for a, b in zip(reference, model(x.contiguous(memory_format=torch.channels_last))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
            detections = model.predict([torch.rand(3, 50, 70, generator=rng)])
    assert low[0].dtype == torch.bfloat16 and low[0].shape == reference[0].shape
    torch.testing.assert_close(low[0].float(), reference[0], rtol=0.1, atol=0.1)
    assert detections[0]["boxes"].dtype == torch.float32


def test_loss_fn_uses_the_models_priors_and_variances():
    model = build_model("ssd_small", 3, variances=(0.2, 0.5))
    loss_fn = model.loss_fn(neg_pos_ratio=2.0)
    assert torch.equal(loss_fn.priors, model.priors)
    assert loss_fn.variances == (0.2, 0.5) and loss_fn.neg_pos_ratio == 2.0


def test_class_names_and_options_are_checked():
    model = build_model("ssd_small", 3, class_names=["cat", "dog"])
    assert model.class_names == ["cat", "dog"]
    assert build_model("ssd_small", 3).class_names == ["class1", "class2"]
    with pytest.raises(UserError, match="3 class names"):
        build_model("ssd_small", 3, class_names=["a", "b", "c"])
    with pytest.raises(UserError, match="did you mean ssd_small"):
        build_model("ssd_smal", 3)
    with pytest.raises(UserError, match="did you mean image_size"):
        build_model("ssd_small", 3, image_sise=300)
    with pytest.raises(UserError, match="num_classes"):
        build_model("ssd_small", 1)
    with pytest.raises(UserError, match="scales needs 5 values"):
        build_model("ssd_small", 3, scales=[0.1, 0.2])


def test_arch_args_hold_plain_types_only():
    model = build_model("ssd300_vgg16", 3, image_size=(300, 320), scales="coco", class_names=["a", "b"])
    # The "coco" preset as its scales (min sizes 21 .. 261 px of 300, then 315 px); steps="auto" at a size
    # other than 300x300 spreads the centres evenly (None); clip as the builder's default.
    assert model.arch_args == {
        "image_size": [300, 320],
        "scales": [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        "steps": None,
        "clip": None,
        "densities": [1, 1, 1, 1, 1, 1],
    }
    lite = build_model("ssdlite320_mobilenet_v3_large", 3)
    assert lite.arch_args == {
        "image_size": [320, 320],
        "scales": pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0]),
        "steps": None,
        "clip": "wh",
        "densities": [1, 1, 1, 1, 1, 1],
        "reduced_tail": True,
    }


@pytest.mark.parametrize("name", ["ssd300_vgg16", "ssd_small"])
def test_arch_args_resolve_every_builder_keyword_and_rebuild_the_same_model(name):
    model = build_model(name, 3, score_threshold=0.2, backbone_weights=None)
    builder = inspect.signature(getattr(zoo, name))
    keywords = {k for k, p in builder.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(model.arch_args) == keywords - {"backbone_weights"} | {"score_threshold"}
    assert "auto" not in model.arch_args.values() and "voc" not in model.arch_args.values()
    assert json.loads(json.dumps(model.arch_args)) == model.arch_args  # plain values
    again = build_model(name, 3, **model.arch_args)
    assert again.arch_args == model.arch_args and torch.equal(again.priors, model.priors)


# --- ImageNet backbone weights --------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = torchvision.models.vgg16().state_dict()
    state = {k: torch.randn(v.shape) for k, v in shapes.items()}
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(state, path)
    return path, state


def test_vgg_backbone_weights_subsample_fc6_and_fc7(vgg16_file):
    path, state = vgg16_file
    model = build_model("ssd300_vgg16", 3, backbone_weights=str(path))
    backbone = model.backbone
    convs = [m for m in [*backbone.conv4, *backbone.conv5] if isinstance(m, nn.Conv2d)]
    tv_convs = [i for i in range(31) if f"features.{i}.weight" in state]
    assert len(convs) == len(tv_convs) == 13
    for conv, i in zip(convs, tv_convs):
        assert torch.equal(conv.weight, state[f"features.{i}.weight"])
        assert torch.equal(conv.bias, state[f"features.{i}.bias"])
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert backbone.fc6.weight.shape == (1024, 512, 3, 3) and backbone.fc7.weight.shape == (1024, 1024, 1, 1)
    # Output o of fc6 is VGG's output 4 o; its tap (y, x) is VGG's kernel position (3 y, 3 x).
    for o, c, y, x in [(0, 0, 0, 0), (1, 7, 1, 2), (1023, 511, 2, 2), (300, 100, 2, 0)]:
        assert backbone.fc6.weight[o, c, y, x] == fc6[4 * o, c, 3 * y, 3 * x]
    assert torch.equal(backbone.fc6.bias, state["classifier.0.bias"][::4])
    fc7 = state["classifier.3.weight"]
    for o, c in [(0, 0), (5, 9), (1023, 1023)]:
        assert backbone.fc7.weight[o, c, 0, 0] == fc7[4 * o, 4 * c]
    assert torch.equal(backbone.fc7.bias, state["classifier.3.bias"][::4])
    # The extra layers and the L2Norm scale keep their initialisation.
    assert torch.equal(backbone.l2norm.weight, torch.full((512,), 20.0))


def test_subsampling_shapes():
    w6, b6 = subsample_fc6(torch.zeros(4096, 25088), torch.zeros(4096))
    w7, b7 = subsample_fc7(torch.zeros(4096, 4096), torch.zeros(4096))
    assert (w6.shape, b6.shape, w7.shape, b7.shape) == (
        (1024, 512, 3, 3),
        (1024,),
        (1024, 1024, 1, 1),
        (1024,),
    )


def test_mobilenet_backbone_weights_reproduce_torchvisions_features(tmp_path, rng):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_large(weights=None).eval()
    for m in net.modules():  # non-trivial batch-norm statistics, so that copying them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "mnv3.pth")
    model = build_model("ssdlite320_mobilenet_v3_large", 3, backbone_weights=tmp_path / "mnv3.pth").eval()
    assert model.arch_args["reduced_tail"] is False
    x = torch.randn(1, 3, 96, 96, generator=rng)
    with torch.no_grad():
        features = model.backbone(x)
        torch.testing.assert_close(features[1], net.features(x), rtol=1e-4, atol=1e-5)
        c4 = model.backbone.c4_position
        torch.testing.assert_close(
            features[0], net.features[c4].block[0](net.features[:c4](x)), rtol=1e-4, atol=1e-5
        )


def test_bad_backbone_weights_are_user_errors(tmp_path, vgg16_file):
    with pytest.raises(UserError, match="does not exist"):
        build_model("ssd300_vgg16", 3, backbone_weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a state dict")
    with pytest.raises(UserError, match="not a readable PyTorch"):
        build_model("ssd300_vgg16", 3, backbone_weights=tmp_path / "junk.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="not a torchvision vgg16 state dict"):
        build_model("ssd300_vgg16", 3, backbone_weights=tmp_path / "partial.pth")
    with pytest.raises(UserError, match="not a torchvision mobilenet_v3_large"):
        build_model("ssdlite320_mobilenet_v3_large", 3, backbone_weights=vgg16_file[0])
    with pytest.raises(UserError, match="reduced_tail=False"):
        build_model("ssdlite320_mobilenet_v3_large", 3, reduced_tail=True, backbone_weights=vgg16_file[0])
    with pytest.raises(UserError, match="no ImageNet weights"):
        build_model("ssd_small", 3, backbone_weights="torchvision")


def test_torchvision_weights_offline_is_one_sentence(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(UserError) as info:
        build_model("ssd300_vgg16", 3, backbone_weights="torchvision")
    message = str(info.value)
    # one sentence that names the file, the folder to put it in, and the way to train without it
    assert "vgg16-397923af.pth" in message and "hub/checkpoints" in message and "\n" not in message
    assert "--backbone-weights none" in message and "name resolution" in message


# --- counting and the command --------------------------------------------------------------------


def test_flops_count_the_convolutions():
    model = build_model("ssd_small", 3, image_size=64)
    expected = 0
    x = torch.zeros(1, 3, 64, 64)
    hooks = []

    def count(conv, inputs, output):
        nonlocal expected
        expected += 2 * output.numel() * conv.weight[0].numel()

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(count))
    model.eval()(model.normalize(x))
    for hook in hooks:
        hook.remove()
    assert count_flops(model) == expected


def test_models_command_lists_the_zoo(capsys):
    assert main(["models", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "8732" in out and "24564" in out and "3234" in out


def test_infer_equals_forward_and_evaluation_uses_it(monkeypatch):
    from singleshot.engine import evaluation

    torch.manual_seed(0)
    model = build_model("ssd_small", 3).eval()
    x = torch.randn(2, 3, 192, 192)
    with torch.no_grad():
        for fast, eager in zip(model.infer(x), model(x)):
            torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)
    calls = []
    monkeypatch.setattr(type(model), "infer", lambda self, x: calls.append(x.shape) or self.forward(x))
    images = torch.randint(0, 256, (2, 3, 192, 192), dtype=torch.uint8)
    evaluation.detect_batch(model, images, [(192, 192)] * 2)
    assert calls == [torch.Size([2, 3, 192, 192])]
