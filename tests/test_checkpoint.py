"""Checkpoints: round trip from the file alone, extra training state, atomic writes, damaged files."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from singleshot.cli import main
from singleshot.errors import UserError
from singleshot.models import build_model, load_checkpoint, read_checkpoint, save_checkpoint, zoo


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics, so that a lost tensor would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() and tensor is not getattr(model, "priors", None):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
    return model


def test_round_trip_rebuilds_model_settings_and_extra_state(tmp_path):
    model = _trained_looking(
        build_model("ssd_small", 4, image_size=(96, 128), class_names=["a", "b", "c"], width=8)
    )
    model.score_threshold, model.nms_threshold = 0.25, 0.6
    model.candidates_per_class, model.max_detections = 50, 20
    model.mean, model.std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    model.antialias = False
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(1, 3, 96, 128)).__getitem__(0).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, optimizer=optimizer.state_dict(), epoch=7)

    loaded = load_checkpoint(path)
    assert loaded.arch == "ssd_small" and loaded.arch_args == model.arch_args
    assert loaded.image_size == (96, 128) and loaded.backbone.out_channels == [32, 64, 64, 64]
    assert loaded.class_names == ["a", "b", "c"] and not loaded.training
    assert (
        loaded.score_threshold,
        loaded.nms_threshold,
        loaded.candidates_per_class,
        loaded.max_detections,
    ) == (0.25, 0.6, 50, 20)
    assert loaded.mean == (0.4, 0.5, 0.6) and loaded.std == (0.2, 0.3, 0.4) and loaded.antialias is False
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 3, 96, 128)
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)

    raw = read_checkpoint(path)
    assert raw["epoch"] == 7
    fresh = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(raw["optimizer"])
    assert fresh.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    # Plain data and tensors only: the strict loader accepts the file.
    assert torch.load(path, weights_only=True)["format"] == "singleshot.checkpoint"


def test_converted_torchvision_architecture_round_trips(tmp_path):
    model = build_model(
        "ssdlite320_mobilenet_v3_large", 3, image_size=(160, 192), scales=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    )
    loaded = load_checkpoint(save_checkpoint(tmp_path / "lite.pt", model))
    assert loaded.arch_args["reduced_tail"] is True and loaded.scales == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    )
    assert torch.equal(loaded.priors, model.priors)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build_model("ssd_small", 3, width=4)
    path = save_checkpoint(tmp_path / "best.pt", model, epoch=1)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, epoch=2)
    assert path.read_bytes() == before  # the old file is intact ...
    assert os.listdir(tmp_path) == ["best.pt"]  # ... and no temporary file is left behind
    monkeypatch.undo()
    save_checkpoint(path, model, epoch=3)
    assert read_checkpoint(path)["epoch"] == 3 and os.listdir(tmp_path) == ["best.pt"]


def test_reserved_extra_keys_and_unbuilt_models_are_refused(tmp_path):
    model = build_model("ssd_small", 3, width=4)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", model, state_dict={})
    model.arch = None
    with pytest.raises(ValueError, match="build_model"):
        save_checkpoint(tmp_path / "x.pt", model)


def _one_line_user_error(path, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_damaged_checkpoints_give_one_sentence(tmp_path):
    model = build_model("ssd_small", 3, width=4)
    good = save_checkpoint(tmp_path / "good.pt", model)
    _one_line_user_error(tmp_path / "missing.pt", "does not exist")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_user_error(truncated, "truncated")

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    _one_line_user_error(text, "not a PyTorch")

    plain = tmp_path / "plain.pt"
    torch.save({"head.classification_head.module_list.0.weight": torch.zeros(1)}, plain)
    _one_line_user_error(plain, "from_torchvision")

    data = read_checkpoint(good)
    del data["state_dict"]["head.regression.0.weight"]
    torch.save(data, tmp_path / "missing_weight.pt")
    _one_line_user_error(tmp_path / "missing_weight.pt", "do not fit")

    data = read_checkpoint(good)
    data["arch"] = "ssd_tiny"
    torch.save(data, tmp_path / "unknown_arch.pt")
    _one_line_user_error(tmp_path / "unknown_arch.pt", "unknown model 'ssd_tiny'")

    data = read_checkpoint(good)
    data["version"] = 99
    torch.save(data, tmp_path / "future.pt")
    _one_line_user_error(tmp_path / "future.pt", "newer")

    data = read_checkpoint(good)
    data["class_names"] = "abc"
    torch.save(data, tmp_path / "bad_names.pt")
    _one_line_user_error(tmp_path / "bad_names.pt", "damaged")


def test_python_objects_are_not_unpickled(tmp_path):
    model = build_model("ssd_small", 3, width=4)
    path = save_checkpoint(tmp_path / "evil.pt", model, hook=nn.ReLU())
    _one_line_user_error(path, "Python objects")


# --- the architecture is pinned: resolved builder arguments and the default boxes ----------------


def test_round_trip_keeps_the_resolved_arguments_and_the_priors(tmp_path):
    model = build_model("ssd_small", 3, image_size=(96, 128), width=4)
    path = save_checkpoint(tmp_path / "a.pt", model)
    raw = read_checkpoint(path)
    assert raw["version"] == 2
    assert raw["arch_args"] == {
        "image_size": [96, 128],
        "width": 4,
        "depth": 1,
        "scales": [0.15, 0.3, 0.5, 0.75, 0.95],
        "aspect_ratios": [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0]],
        "steps": None,
        "clip": "cxcywh",
        "densities": [1, 1, 1, 1],
    }
    assert torch.equal(raw["priors"], model.priors) and raw["priors"].dtype == torch.float32
    assert torch.equal(load_checkpoint(path).priors, model.priors)


def test_round_trip_keeps_the_densities(tmp_path):
    model = build_model("ssd_small", 3, width=4, densities=[2, 1, 1, 1])
    path = save_checkpoint(tmp_path / "dense.pt", model)
    assert read_checkpoint(path)["arch_args"]["densities"] == [2, 1, 1, 1]
    loaded = load_checkpoint(path)
    assert loaded.densities == [2, 1, 1, 1] and torch.equal(loaded.priors, model.priors)
    assert len(model.priors) == 3420 + 24 * 24 * 3  # the 576 small squares of stride 8, now 4 each


def _change_small_defaults(monkeypatch) -> None:
    """Act as a later singleshot whose ssd_small defaults to other default boxes and a wider backbone."""
    defaults = zoo.ssd_small.__kwdefaults__
    monkeypatch.setitem(defaults, "scales", (0.1, 0.25, 0.45, 0.7, 0.9))
    monkeypatch.setitem(defaults, "aspect_ratios", ((2,), (2,), (2,), (2,)))
    monkeypatch.setitem(defaults, "width", 8)


def test_changed_builder_defaults_do_not_change_a_saved_model(tmp_path, monkeypatch):
    model = _trained_looking(build_model("ssd_small", 3, width=4))
    path = save_checkpoint(tmp_path / "a.pt", model)
    _change_small_defaults(monkeypatch)
    assert len(build_model("ssd_small", 3).priors) != len(model.priors)  # the defaults did change

    loaded = load_checkpoint(path)
    assert (
        torch.equal(loaded.priors, model.priors)
        and loaded.backbone.out_channels == model.backbone.out_channels
    )
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), loaded(x)):
            assert torch.equal(a, b)


def test_other_default_boxes_than_the_stored_ones_give_one_sentence(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path / "good.pt", build_model("ssd_small", 3, width=4))
    message = "default boxes .* differ from the ones it was trained with; load it with the singleshot version"

    data = read_checkpoint(good)
    data["priors"][100, 2] += 0.01  # one box 1 % of the image wider
    torch.save(data, tmp_path / "tampered.pt")
    _one_line_user_error(tmp_path / "tampered.pt", message)

    data = read_checkpoint(good)
    data["priors"] = data["priors"][:-1]
    torch.save(data, tmp_path / "fewer.pt")
    _one_line_user_error(tmp_path / "fewer.pt", message)

    # Arguments that no longer rebuild the same boxes (here: some left out, and the defaults changed).
    data = read_checkpoint(good)
    data["arch_args"] = {"width": 4}
    torch.save(data, tmp_path / "partial_args.pt")
    _change_small_defaults(monkeypatch)
    _one_line_user_error(tmp_path / "partial_args.pt", message)

    data = read_checkpoint(good)
    data["priors"] = [0.5, 0.5, 0.1, 0.1]
    torch.save(data, tmp_path / "bad_priors.pt")
    _one_line_user_error(tmp_path / "bad_priors.pt", "'priors' entry")


def test_version_1_checkpoints_still_load(tmp_path):
    model = _trained_looking(
        build_model("ssd_small", 3, image_size=(96, 128), width=4, depth=0, class_names=["a", "b"])
    )
    data = read_checkpoint(save_checkpoint(tmp_path / "new.pt", model))
    # Version 1 (ssd_small had no depth then): only the builder arguments the user gave (and image_size), no priors.
    data.update(version=1, arch_args={"width": 4, "image_size": [96, 128]})
    del data["priors"]
    torch.save(data, tmp_path / "old.pt")

    loaded = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(loaded.priors, model.priors) and loaded.class_names == ["a", "b"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --- files that are not checkpoints ---------------------------------------------------------------


def _not_checkpoints(tmp_path) -> dict[str, os.PathLike]:
    """Files someone may pass for a checkpoint that torch.load cannot read (or warns about)."""
    (tmp_path / "notes.txt").write_text("epoch 3: loss 1.2\n")
    (tmp_path / "random.pt").write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        .numpy()
        .tobytes()
    )
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:
        archive.writestr("weights.txt", "not a tensor")
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    (tmp_path / "empty.pt").write_bytes(b"")
    files = {
        name: tmp_path / name for name in ("notes.txt", "random.pt", "archive.pt", "pickled.pt", "empty.pt")
    }
    return {**files, "README.md": Path(__file__).resolve().parents[1] / "README.md"}


def test_files_that_are_not_pytorch_checkpoints_give_one_short_sentence(tmp_path):
    for name, path in _not_checkpoints(tmp_path).items():
        with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError) as info:
            warnings.simplefilter("always")
            load_checkpoint(path)
        message = str(info.value)
        assert message == (
            f"{path} is not a PyTorch checkpoint: pass a .pt file written by 'singleshot train' "
            "or save_checkpoint"
        ), name
        assert not caught, (name, [str(w.message) for w in caught])


def test_detect_names_a_non_checkpoint_in_one_line(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (90, 120, 200)).save(image)
    plain = tmp_path / "plain.pt"
    torch.save({"head.classification_head.module_list.0.weight": torch.zeros(1)}, plain)
    cases = {
        **{path: f"{path} is not a PyTorch checkpoint" for path in _not_checkpoints(tmp_path).values()},
        tmp_path / "missing.pt": "does not exist",
        plain: "is not a singleshot checkpoint",
    }
    for path, words in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(["detect", str(path), str(image), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert words in err and "Traceback" not in err and "weights_only" not in err, err
        assert not caught, [str(w.message) for w in caught]
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_from_before_ssd_small_had_depth_rebuilds_without_the_extra_layers(tmp_path):
    old = build_model("ssd_small", 3, image_size=128, depth=0).eval()
    data = torch.load(save_checkpoint(tmp_path / "new.pt", old), weights_only=True)
    assert data["arch_args"]["depth"] == 0
    del data["arch_args"]["depth"]  # as written before the keyword existed
    torch.save(data, tmp_path / "old.pt")
    model = load_checkpoint(tmp_path / "old.pt").eval()
    assert model.arch_args["depth"] == 0
    assert build_model("ssd_small", 3).arch_args["depth"] == 1  # the default now
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model(x), old(x)):
            torch.testing.assert_close(a, b)
