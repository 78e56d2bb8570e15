"""Starting from trained detectors: --weights (a singleshot checkpoint or torchvision's COCO weights through
its weights API, from a seeded TORCH_HOME; nothing is downloaded), the class head remapped by name."""

from __future__ import annotations

import json
import os

import pytest
import torch

from singleshot.engine.config import TrainConfig
from singleshot.errors import UserError
from singleshot.models import build_model, read_checkpoint, save_checkpoint
from singleshot.models.sources import load_source
from singleshot.models.transfer import class_mapping, transfer_weights
from tests.test_engine import make_tiny_voc

SSDLITE = "ssdlite320_mobilenet_v3_large"


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


def _small(names, seed, **kw):
    torch.manual_seed(seed)
    return build_model("ssd_small", len(names) + 1, class_names=names, image_size=64, width=8, **kw)


def _class_convs(model):
    return [layer if isinstance(layer, torch.nn.Conv2d) else layer[-1] for layer in model.head.classification]


def test_class_mapping_matches_names_case_insensitively():
    assert class_mapping(["a", "B", "c"], ["C", "x", "b"]) == [0, 3, None, 2]


def test_class_head_rows_follow_the_names_and_new_classes_keep_a_fresh_init():
    source = _small(["a", "b", "c"], seed=0)
    target = _small(["c", "x", "a"], seed=1)
    fresh = _small(["c", "x", "a"], seed=1)
    carried, new = transfer_weights(source, target)
    assert (carried, new) == (["c", "a"], ["x"])
    for src, dst, ini in zip(_class_convs(source), _class_convs(target), _class_convs(fresh)):
        boxes = dst.out_channels // 4
        assert boxes >= 2 and src.out_channels == boxes * 4
        for b in range(boxes):
            for t, s in ((0, 0), (1, 3), (3, 1)):  # background, c, a
                assert torch.equal(dst.weight[b * 4 + t], src.weight[b * 4 + s])
                assert torch.equal(dst.bias[b * 4 + t], src.bias[b * 4 + s])
            assert torch.equal(dst.weight[b * 4 + 2], ini.weight[b * 4 + 2])  # x: as a fresh head
            assert torch.equal(dst.bias[b * 4 + 2], ini.bias[b * 4 + 2])
    # the background prior of a fresh head stays where a class is new; every other layer is the source's
    skip = {k for k in target.state_dict() if k.startswith("head.classification.")}
    for key, value in target.state_dict().items():
        if key not in skip:
            assert torch.equal(value, source.state_dict()[key]), key


def _config(data, out, **kw):
    base = {
        "data": str(data),
        "out": str(out),
        "epochs": 1,
        "batch_size": 8,
        "workers": 0,
        "train_split": "train",
        "val_split": "none",
        "lr": 0.01,
        "warmup_epochs": 0.5,
    }
    return TrainConfig(**{**base, **kw})


def _trainer(config, messages):
    from singleshot.engine import Trainer

    trainer = Trainer(config, progress=False)
    trainer._say = messages.append
    return trainer


def _data_names(data):
    from singleshot.data.policy import open_training_data

    return list(open_training_data(data=str(data), train_split="train", val_split="none").train.class_names)


def test_fine_tuning_from_a_checkpoint_keeps_its_model_and_boxes_and_records_the_source(tmp_path, tiny_voc):
    names = _data_names(tiny_voc)
    source = _small([names[1].upper(), "zebra", names[0]], seed=3)
    path = save_checkpoint(tmp_path / "src.pt", source)
    messages = []
    trainer = _trainer(_config(tiny_voc, tmp_path / "run", weights=str(path)), messages)
    result = trainer.fit()
    assert any(f"classes carried over: {names[0]}, {names[1]}; new: {names[2]}" in m for m in messages), (
        messages
    )
    assert not any("fitted to the training objects" in m for m in messages)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["weights"] == str(path) and saved["model"] == "ssd_small" and saved["image_size"] == 64
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["config"]["weights"] == str(path)
    assert last["class_names"] == names and last["arch_args"] == source.arch_args
    assert torch.equal(last["priors"], source.priors_for(source.image_size))
    assert result.config.epochs == last["epoch"] == 1  # a fresh schedule: 17 images, full batches of 8
    assert last["schedule"]["last_step"] == 17 // 8


def test_the_transferred_model_holds_the_source_weights(tmp_path, tiny_voc):
    names = _data_names(tiny_voc)
    source = _small([names[2], "zebra"], seed=5)
    path = save_checkpoint(tmp_path / "src.pt", source)
    messages = []
    trainer = _trainer(_config(tiny_voc, tmp_path / "run", weights=str(path), model="ssd_small"), messages)
    trainer._prepare()
    model = trainer._build_model(type("S", (), {"class_names": names})(), None)
    assert messages == [
        f"weights: from {path}; classes carried over: {names[2]}; new: {names[0]}, {names[1]}"
    ]
    for src, dst in zip(_class_convs(source), _class_convs(model)):
        assert torch.equal(dst.weight[3], src.weight[1]) and torch.equal(dst.weight[4 + 3], src.weight[3 + 1])
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


def test_a_source_sharing_no_class_is_said(tmp_path, tiny_voc):
    path = save_checkpoint(tmp_path / "src.pt", _small(["zebra"], seed=0))
    messages = []
    trainer = _trainer(_config(tiny_voc, tmp_path / "run", weights=str(path)), messages)
    trainer._prepare()
    trainer._build_model(type("S", (), {"class_names": ["p", "q"]})(), None)
    assert messages == [
        f"weights: {path} shares no class with {tiny_voc}; every layer but the class scores is carried over, "
        "and all 2 classes start fresh"
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model": "ssd300_vgg16"}, "--model 'ssd300_vgg16' contradicts --weights"),
        ({"image_size": 96}, "--image-size 96 contradicts --weights"),
    ],
)
def test_a_model_or_size_the_source_cannot_take_is_one_sentence(tmp_path, tiny_voc, options, message):
    path = save_checkpoint(tmp_path / "src.pt", _small(["zebra"], seed=0))
    with pytest.raises(UserError, match=message) as info:
        _trainer(_config(tiny_voc, tmp_path / "run", weights=str(path), **options), [])._prepare()
    assert "\n" not in str(info.value)


def test_bad_weights_are_one_sentence_each(tmp_path, monkeypatch):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        load_source(text)
    with pytest.raises(UserError, match="did you mean torchvision:ssdlite320_mobilenet_v3_large"):
        load_source("torchvision:ssdlite320_mobilenet")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(UserError) as info:
        load_source(f"torchvision:{SSDLITE}")
    folder = os.path.join(str(tmp_path / "empty"), "hub", "checkpoints")
    assert "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in str(info.value)
    assert f"in {folder} ($TORCH_HOME/hub/checkpoints)" in str(info.value)


# ---------------------------------------------------------------------------------- torchvision weights


@pytest.fixture(scope="module")
def seeded_torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub/checkpoints holds randomly initialised torchvision SSDLite COCO weights under
    the file name of SSDLite320_MobileNet_V3_Large_Weights.COCO_V1 (what its weights API reads)."""
    from torchvision.models.detection import (
        SSDLite320_MobileNet_V3_Large_Weights,
        ssdlite320_mobilenet_v3_large,
    )

    home = tmp_path_factory.mktemp("torch-home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    with torch.no_grad():
        # BatchNorm statistics measured on noise images (a wrong mapping shows): with the statistics of a
        # fresh model the randomly initialised backbone's maps are nearly constant across the image, so
        # that thousands of default boxes tie in score and which of them survive is arbitrary.
        calibration = torch.rand(4, 3, 320, 320, generator=torch.Generator().manual_seed(2))
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # the plain average of the batches seen
        reference.train()
        reference.head(list(reference.backbone((calibration - 0.5) / 0.5).values()))
        reference.eval()
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.03
        for layer in reference.head.classification_head.module_list:  # decisive scores: few, clear detections
            layer[-1].weight.mul_(10.0)
            layer[-1].bias.view(-1, 91)[:, 1:] = -30.0
            layer[-1].bias.view(-1, 91)[:, 1] = -11.0  # person and dog (label 18) above 0.3 in a few places
            layer[-1].bias.view(-1, 91)[:, 18] = -11.5
    name = os.path.basename(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.url)
    torch.save(reference.state_dict(), folder / name)
    return home, reference


def test_torchvision_source_loads_through_the_weights_api_with_coco_names(seeded_torch_home, monkeypatch):
    from torchvision.models.detection import (
        SSDLite320_MobileNet_V3_Large_Weights,
        ssdlite320_mobilenet_v3_large,
    )

    home, reference = seeded_torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    model = load_source(f"torchvision:{SSDLITE}")
    categories = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"]
    assert (
        model.num_classes == 91 and model.class_names == categories[1:] and model.class_names[0] == "person"
    )
    # torchvision's own loading of the same cached file gives the same weights
    theirs = ssdlite320_mobilenet_v3_large(weights=SSDLite320_MobileNet_V3_Large_Weights.COCO_V1)
    for key, value in reference.state_dict().items():
        assert torch.equal(theirs.state_dict()[key], value)


def test_fine_tuning_from_torchvision_maps_coco_classes(seeded_torch_home, monkeypatch, tmp_path, tiny_voc):
    home, reference = seeded_torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    messages = []
    trainer = _trainer(_config(tiny_voc, tmp_path / "run", weights=f"torchvision:{SSDLITE}"), messages)
    trainer._prepare()
    assert (
        trainer.config.model == SSDLITE and trainer.config.image_size == 320 and not trainer.config.fit_boxes
    )
    source = trainer._source
    model = trainer._build_model(type("S", (), {"class_names": ["Dog", "unicorn"]})(), None)
    assert messages == [f"weights: from torchvision:{SSDLITE}; classes carried over: Dog; new: unicorn"]
    dog = source.class_names.index("dog") + 1
    for src, dst in zip(_class_convs(source), _class_convs(model)):
        boxes = dst.out_channels // 3
        for b in range(boxes):
            assert torch.equal(dst.weight[b * 3 + 1], src.weight[b * 91 + dog])
            assert torch.equal(dst.weight[b * 3], src.weight[b * 91])
    assert model.mean == source.mean and model.antialias is False
    assert torch.equal(model.priors_for(model.image_size), source.priors_for(source.image_size))


def test_detect_with_torchvision_weights_gives_torchvisions_detections(
    seeded_torch_home, monkeypatch, tmp_path
):
    from PIL import Image
    from torchvision.models.detection import (
        SSDLite320_MobileNet_V3_Large_Weights,
        ssdlite320_mobilenet_v3_large,
    )
    from torchvision.transforms.functional import pil_to_tensor

    from singleshot.cli import main

    home, _ = seeded_torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 240, 280), dtype=torch.uint8, generator=generator)
    image = tmp_path / "scene.png"
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(image)
    out = tmp_path / "out"
    argv = ["detect", f"torchvision:{SSDLITE}", str(image), "--out", str(out), "--no-draw"]
    assert main([*argv, "--score-threshold", "0.3", "--device", "cpu"]) == 0
    ours = json.loads((out / "detections.json").read_text())["images"][0]["detections"]

    weights = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1
    theirs_model = ssdlite320_mobilenet_v3_large(weights=weights, score_thresh=0.3).eval()
    with torch.no_grad():
        theirs = theirs_model([pil_to_tensor(Image.open(image)).float() / 255])[0]
    assert len(ours) == len(theirs["boxes"]) > 0
    categories = weights.meta["categories"]
    for row, box, label in zip(ours, theirs["boxes"], theirs["labels"]):
        assert row["class"] == categories[int(label)]
        assert torch.allclose(torch.tensor(row["box"]), box, atol=1.0)


# ----------------------------------------------------------------------------- ImageNet backbone weights


@pytest.fixture
def imagenet_home(tmp_path, monkeypatch):
    """TORCH_HOME whose hub/checkpoints holds a randomly initialised mobilenet_v3_large state dict under the
    file name of MobileNet_V3_Large_Weights.IMAGENET1K_V1; downloads fail (none may happen)."""
    from urllib.error import URLError

    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

    def offline(url, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(7)
    state = mobilenet_v3_large(weights=None).state_dict()
    torch.save(state, folder / os.path.basename(MobileNet_V3_Large_Weights.IMAGENET1K_V1.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return state


def _assert_imagenet_backbone(model, state):
    from singleshot.models.mobilenet import convert_mobilenet_v3_state_dict

    own = model.backbone.state_dict()
    converted = convert_mobilenet_v3_state_dict(state, model.backbone.c4_position, "seeded")
    assert len(converted) > 100 and "features.0.0.0.weight" in converted
    for key, value in converted.items():
        assert torch.equal(own[key], value), key


def test_the_training_model_starts_from_the_cached_imagenet_weights(imagenet_home, tmp_path, tiny_voc):
    messages = []
    config = _config(tiny_voc, tmp_path / "run", model=SSDLITE, backbone_weights="imagenet", image_size=96)
    trainer = _trainer(config, messages)
    model = trainer._build_model(type("S", (), {"class_names": _data_names(tiny_voc)})(), None)
    _assert_imagenet_backbone(model, imagenet_home)
    fresh = trainer._build_model(
        type("S", (), {"class_names": _data_names(tiny_voc)})(), None
    )  # the same file again: the same start
    _assert_imagenet_backbone(fresh, imagenet_home)


def test_offline_without_the_cached_file_one_sentence_names_the_file_and_folder(imagenet_home, tmp_path):
    from torchvision.models import MobileNet_V3_Large_Weights

    name = os.path.basename(MobileNet_V3_Large_Weights.IMAGENET1K_V1.url)
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    (folder / name).unlink()
    with pytest.raises(UserError) as error:
        build_model(SSDLITE, 4, backbone_weights="imagenet")
    message = str(error.value)
    assert f"the file {name} in {folder} ($TORCH_HOME/hub/checkpoints)" in message
    assert "cannot download it" in message and "\n" not in message
    assert not (folder / name).exists()


def test_imagenet_is_the_default_start_of_the_vgg_and_mobilenet_models_only_from_scratch():
    from singleshot.cli import build_parser
    from singleshot.commands.train import build_config

    def config(*argv):
        return build_config(build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv]))

    for name in ("ssd300_vgg16", "ssd512_vgg16", SSDLITE):
        assert config("--model", name).backbone_weights == "imagenet"
    assert config("--model", SSDLITE, "--backbone-weights", "none").backbone_weights == "none"
    assert config("--model", "ssd300_vgg16", "--backbone-weights", "w.pth").backbone_weights == "w.pth"
    assert config("--model", "ssd_small").backbone_weights is None and config().backbone_weights is None
    assert config("--weights", f"torchvision:{SSDLITE}", "--model", SSDLITE).backbone_weights is None
    with pytest.raises(UserError, match="leave --backbone-weights out"):
        config("--weights", f"torchvision:{SSDLITE}", "--backbone-weights", "imagenet")


# ------------------------------------------------------------------------------- --freeze and CPU AMP


def _frozen_run(tmp_path, tiny_voc, messages, **kw):
    """ssd_small fine-tuned from a checkpoint with ``kw`` (e.g. freeze); ``(the source, the result)``."""
    names = _data_names(tiny_voc)
    source = _small(names, seed=7)
    path = save_checkpoint(tmp_path / "src.pt", source)
    config = _config(tiny_voc, tmp_path / "run", weights=str(path), epochs=2, batch_size=4, **kw)
    return source, _trainer(config, messages).fit()


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics_while_the_head_trains(
    tmp_path, tiny_voc
):
    messages = []
    source, result = _frozen_run(tmp_path, tiny_voc, messages, freeze=["backbone"])
    before, after = source.state_dict(), result.model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any(k.endswith("running_mean") for k in backbone)  # ssd_small's batch norms are part of it
    for key in backbone:
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["head.regression.0.weight"], before["head.regression.0.weight"])
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    trained = sum(1 for p in result.model.parameters() if p.requires_grad)
    assert len(last["optimizer"]["state"]) == trained < len(list(result.model.parameters()))
    assert last["config"]["freeze"] == ["backbone"]
    fixed = sum(v.numel() for k, v in source.named_parameters() if k.startswith("backbone."))
    assert f"frozen: backbone ({fixed / 1e6:.2f} M parameters keep their weights)" in messages
    assert not any("stay random" in m for m in messages)  # the weights came from --weights


def test_freeze_names_are_checked_and_a_random_start_is_said(tmp_path, tiny_voc):
    from singleshot.engine.freeze import freeze

    model = _small(["a", "b"], seed=0)
    with pytest.raises(
        UserError, match=r"--freeze 'backbone.stage' names no part .* did you mean 'backbone.stages'\?"
    ):
        freeze(model, ["backbone.stage"])
    with pytest.raises(UserError, match="its parts are backbone, backbone.stages, head, head.classification"):
        freeze(model, ["zzz"])
    with pytest.raises(UserError, match="freezes every weight of the model; leave a part to train"):
        freeze(model, ["backbone", "head"])
    assert TrainConfig().updated({"freeze": "backbone, head.regression"}).freeze == [
        "backbone",
        "head.regression",
    ]
    assert TrainConfig().updated({"freeze": ["backbone"]}).freeze == ["backbone"]
    messages = []
    config = _config(
        tiny_voc, tmp_path / "run", freeze=["head.regression"], image_size=64, model_options={"width": 8}
    )
    result = _trainer(config, messages).fit()
    assert any("--freeze head.regression: the model starts from random weights" in m for m in messages)
    assert all(not p.requires_grad for p in result.model.head.regression.parameters())


def test_cpu_amp_trains_and_validates_in_bfloat16(tmp_path, tiny_voc):
    """``amp`` on the CPU: the convolutions run in bfloat16 under autocast, no gradient scaling, finite
    weights that moved; validation's detections come back in float32."""
    from singleshot.engine.evaluation import detect_batch

    messages, seen = [], set()
    source = _small(_data_names(tiny_voc), seed=2)
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, _inputs, output: (
            seen.add(output.dtype)
            if isinstance(module, torch.nn.Conv2d) and isinstance(output, torch.Tensor)
            else None
        )
    )
    try:
        path = save_checkpoint(tmp_path / "src.pt", source)
        result = _trainer(_config(tiny_voc, tmp_path / "run", weights=str(path), amp=True), messages).fit()
    finally:
        handle.remove()
    assert torch.bfloat16 in seen
    assert any(m.startswith("training ssd_small") and "cpu, AMP (bfloat16)" in m for m in messages)
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["config"]["amp"] is True and last["scaler"] == {}  # no gradient scaling in bfloat16
    after = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not torch.equal(after["head.regression.0.weight"], source.state_dict()["head.regression.0.weight"])
    model = result.model.eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mixed = detect_batch(model, images, [(64, 64)] * 2, amp=True)
    assert all(d["boxes"].dtype == d["scores"].dtype == torch.float32 for d in mixed)
    x = model.normalize(images)
    with torch.no_grad():
        full_logits = model(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed_logits = model(x)[0]
    assert mixed_logits.dtype == torch.bfloat16
    difference = (mixed_logits.float().softmax(-1) - full_logits.softmax(-1)).abs().max()
    assert 0 < difference < 0.02  # bfloat16 rounds, and only that
