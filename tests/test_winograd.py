"""Winograd F(4x4, 3x3) convolutions against torch's direct convolution (float64 as the reference)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import singleshot.models.winograd as winograd
from singleshot.models import build_model
from singleshot.models.winograd import (
    FusedWinogradConv2d,
    WinogradConv2d,
    conv3x3_winograd,
    use_winograd,
    winograd_conv2d,
    winograd_pays,
    winograd_suits,
    winograd_weight,
)


def _reference(x, weight, bias):
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)


def _close(actual, expected, scale):
    """Float32 Winograd error: a few 1e-6 of the magnitude of the terms summed (scale)."""
    assert actual.shape == expected.shape
    err = (actual.double() - expected).abs().max().item()
    assert err <= 2e-5 * scale, (err, scale)


@pytest.fixture(params=[(1, 3, 4, 5, 7), (2, 5, 6, 9, 13), (3, 4, 2, 16, 16), (2, 1, 1, 4, 1)])
def shapes(request):
    return request.param


def test_transformed_weight_of_a_centre_tap_is_the_identity_in_the_winograd_domain():
    # g = e_centre: G g G^T = G[:, 1] G[:, 1]^T, the outer product of G's middle column.
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0
    u = winograd_weight(weight).view(6, 6)
    column = torch.tensor([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0])
    torch.testing.assert_close(u, torch.outer(column, column).float())


def test_winograd_weight_rejects_other_kernels():
    with pytest.raises(ValueError, match="C_out, C_in, 3, 3"):
        winograd_weight(torch.zeros(2, 2, 5, 5))


def test_forward_equals_the_direct_convolution(shapes):
    n, c_in, c_out, h, w = shapes
    gen = torch.Generator().manual_seed(h * w)
    x = torch.randn(n, c_in, h, w, generator=gen)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    expected = _reference(x, weight, bias)
    scale = 9 * c_in * 4.0  # |x| |w| <~ 4 per term
    out = conv3x3_winograd(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(weight), bias)
    _close(out.permute(0, 3, 1, 2), expected, scale)
    no_bias = conv3x3_winograd(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(weight))
    _close(no_bias.permute(0, 3, 1, 2), _reference(x, weight, None), scale)
    relu = conv3x3_winograd(x.permute(0, 2, 3, 1).contiguous(), winograd_weight(weight), bias, relu=True)
    _close(relu.permute(0, 3, 1, 2), expected.clamp(min=0), scale)


def test_chunks_cover_the_batch_in_order(monkeypatch):
    assert winograd._chunks(5, 100, 512) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # 7.4 MB an image
    assert winograd._chunks(5, 1, 8) == [(0, 5)]
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 2 * 36 * 4 * 3 * 4)  # two images of 4 tiles x 3 channels
    assert winograd._chunks(5, 4, 3) == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.parametrize("chunk_bytes", [1, 10**9])  # one image per chunk, and the whole batch at once
def test_forward_and_backward_equal_the_direct_convolution(shapes, chunk_bytes, monkeypatch):
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", chunk_bytes)
    n, c_in, c_out, h, w = shapes
    gen = torch.Generator().manual_seed(n + h)
    x = torch.randn(n, c_in, h, w, generator=gen, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen, requires_grad=True)
    bias = torch.randn(c_out, generator=gen, requires_grad=True)
    y = winograd_conv2d(x, weight, bias)
    assert y.is_contiguous(memory_format=torch.channels_last) or c_out == 1
    grad = torch.randn(y.shape, generator=gen)
    gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), grad)

    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ref = F.conv2d(x64, w64, b64, padding=1)
    rx, rw, rb = torch.autograd.grad(ref, (x64, w64, b64), grad.double())
    scale = 9 * c_in * 4.0
    _close(y, ref.detach(), scale)
    _close(gx, rx, 9 * c_out * 4.0)
    _close(gw, rw, n * h * w * 4.0)
    torch.testing.assert_close(gb.double(), rb, rtol=1e-5, atol=1e-4)


def test_gradient_without_bias_and_for_the_input_only():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 10, generator=gen, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    (gx,) = torch.autograd.grad(winograd_conv2d(x, weight).sum(), x)
    (rx,) = torch.autograd.grad(F.conv2d(x, weight, padding=1).sum(), x)
    _close(gx, rx.double(), 9 * 4 * 4.0)


def test_pay_off_rule():
    assert winograd_pays(512, 512, 38, 38)
    assert winograd_pays(128, 256, 75, 75)
    assert not winograd_pays(512, 512, 10, 10)  # small maps: thin products
    assert not winograd_pays(512, 16, 38, 38)  # the box head
    assert not winograd_pays(64, 64, 300, 300)
    assert not winograd_pays(128, 128, 150, 150)  # forward only: breaks even
    assert winograd_pays(128, 128, 150, 150, backward=True)


def test_suits_only_plain_same_size_3x3_convolutions():
    assert winograd_suits(nn.Conv2d(128, 128, 3, padding=1))
    assert winograd_suits(nn.Conv2d(256, 512, 3, padding=1, bias=False))
    assert not winograd_suits(nn.Conv2d(64, 128, 3, padding=1))
    assert not winograd_suits(nn.Conv2d(256, 256, 3, padding=1, stride=2))
    assert not winograd_suits(nn.Conv2d(256, 256, 3, padding=6, dilation=6))
    assert not winograd_suits(nn.Conv2d(256, 256, 3, padding=1, groups=2))
    assert not winograd_suits(nn.Conv2d(256, 256, 1))
    assert not winograd_suits(nn.Conv2d(256, 256, 3, padding=1, padding_mode="reflect"))


def _stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))


def test_use_winograd_keeps_parameters_and_state_dict_and_eval_is_exact():
    plain, swapped = _stack(), _stack()
    assert use_winograd(swapped) == 2
    assert all(type(m) is WinogradConv2d for m in (swapped[0], swapped[2]))
    assert list(swapped.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 128, 16, 20)
    with torch.no_grad():
        assert torch.equal(swapped.eval()(x), plain.eval()(x))  # eval mode: the direct kernels
        swapped.train(), plain.train()
        trained = swapped(x)
        assert not torch.equal(trained, plain(x))  # training mode: Winograd (equal to rounding)
        torch.testing.assert_close(trained, plain(x), rtol=1e-4, atol=1e-4)
        use_winograd(swapped, enabled=False)
        assert torch.equal(swapped(x), plain(x))


def test_training_falls_back_on_small_maps_and_under_autocast():
    plain, swapped = _stack(), _stack()
    use_winograd(swapped)
    with torch.no_grad():
        small = torch.randn(1, 128, 8, 8)
        assert torch.equal(swapped(small), plain(small))
        x = torch.randn(1, 128, 16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(swapped(x), plain(x))


def test_inference_module_falls_back_to_the_direct_convolution_on_small_maps():
    conv = nn.Conv2d(256, 256, 3, padding=1)
    fused = FusedWinogradConv2d(conv.weight, conv.bias, relu=True)
    with torch.no_grad():
        for size in (8, 20):
            x = torch.randn(1, 256, size, size).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(fused(x), conv(x).relu(), rtol=1e-4, atol=1e-4)
    assert fused.transformed is not None  # built on the first map that pays


def test_ssd_trains_and_predicts_the_same_with_and_without_winograd():
    torch.manual_seed(0)
    model = build_model("ssd300_vgg16", 4)
    with torch.no_grad():  # a trained-looking head: few classes above the score threshold
        for conv in model.head.classification:
            conv.bias.view(-1, 4)[:, 0] += 6.0
    convs = [m for m in model.modules() if type(m) is WinogradConv2d]
    assert len(convs) >= 9  # conv2_2 .. conv5_3 and the wide class heads
    images = [torch.randint(0, 256, (3, 80, 110), dtype=torch.uint8) for _ in range(2)]
    fast = model.predict(images)
    model.winograd = False
    assert not any(m.winograd for m in convs)
    direct = model.predict(images)
    for a, b in zip(fast, direct):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-2)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)

    model.train()
    x = torch.randn(1, 3, 300, 300)
    grads = []
    for enabled in (True, False):
        model.winograd = enabled
        model.zero_grad()
        cls_logits, box_deltas = model(x)
        (cls_logits.square().mean() + box_deltas.square().mean()).backward()
        grads.append(model.backbone.conv4[10].weight.grad.clone())  # conv3_1, 128 -> 256 at 75x75
    assert (grads[0] - grads[1]).abs().max() <= 1e-3 * grads[1].abs().max()


def test_backward_twice_with_retain_graph():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 8, 8, generator=gen, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, generator=gen, requires_grad=True)
    y = winograd_conv2d(x, weight).square().sum()
    (first,) = torch.autograd.grad(y, weight, retain_graph=True)
    (second,) = torch.autograd.grad(y, weight)
    assert torch.equal(first, second)
