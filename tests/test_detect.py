import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.cli import main
from singleshot.commands.detect import find_images, format_json, output_names, resolve_device
from singleshot.data import load_image
from singleshot.errors import UserError
from singleshot.models import DEFAULT_MODEL, build_model, load_checkpoint, save_checkpoint

CLASSES = ["cat", "dog", "bird"]


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _save_image(path: Path, height: int, width: int, seed: int, mode: str = "RGB", **save_args) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] //= 3  # some structure besides noise
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, **save_args)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random small model whose class scores are spread out, so that it detects things."""
    torch.manual_seed(0)
    model = build_model(DEFAULT_MODEL, num_classes=4, class_names=CLASSES)
    with torch.no_grad():
        for conv in model.head.classification.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.bias.normal_(0.0, 1.5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model)


# --- inputs and outputs -----------------------------------------------------------------------------


def test_find_images_scans_directories_flat_or_recursively(tmp_path):
    d = tmp_path / "d"
    for name in ["a.jpg", "B.PNG", ".hidden.jpg", "notes.txt", "sub/c.png", ".git/x.jpg"]:
        _touch(d / name)
    notes = d / "notes.txt"
    (tmp_path / "empty").mkdir()

    files, failures = find_images([str(d), str(notes), str(d / "a.jpg"), str(tmp_path / "nope.jpg")])
    assert files == [
        d / "B.PNG",
        d / "a.jpg",
        notes,
    ]  # directory sorted; a.jpg not twice; notes named, so tried
    assert failures == [(str(tmp_path / "nope.jpg"), f"{tmp_path / 'nope.jpg'} does not exist.")]

    _touch(d / "out" / "a.jpg")  # the annotated copies of an earlier run
    files, failures = find_images([str(d), str(tmp_path / "empty")], recursive=True, skip=d / "out")
    assert files == [d / "B.PNG", d / "a.jpg", d / "sub" / "c.png"]
    assert (
        len(failures) == 1
        and failures[0][0] == str(tmp_path / "empty")
        and "no image files" in failures[0][1]
    )
    _, failures = find_images([str(tmp_path / "empty")])
    assert "--recursive" in failures[0][1]


def test_output_names_keep_stems_and_never_collide():
    files = [
        Path("x/a.jpg"),
        Path("y/a.JPEG"),
        Path("z/a.png"),
        Path("w/b.gif"),
        Path("v/A.jpg"),
        Path("u/c.tif"),
    ]
    assert output_names(files) == ["a.jpg", "a-2.jpg", "a.png", "b.png", "A-3.jpg", "c.png"]


def test_format_json_is_json_with_one_line_per_detection():
    payload = {
        "images": [
            {
                "file": "a.jpg",
                "width": 3,
                "detections": [
                    {"box": [1.0, 2.5, 3.0, 4.0], "score": 0.5, "label": 1, "class": "cat"},
                    {"box": [0.0, 0.0, 1.0, 1.0], "score": 0.25, "label": 2, "class": "dog"},
                ],
            }
        ],
        "failed": [],
    }
    text = format_json(payload)
    assert json.loads(text) == payload
    lines = [line.strip() for line in text.splitlines()]
    assert '{"box": [1.0, 2.5, 3.0, 4.0], "score": 0.5, "label": 1, "class": "cat"},' in lines
    assert '"failed": []' in lines


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")


# --- the command ------------------------------------------------------------------------------------


def test_detect_writes_pictures_and_json_and_names_bad_inputs(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    _save_image(photos / "a.jpg", 60, 80, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 48 high, shown turned a quarter: 48 wide x 64 high
    _save_image(photos / "turned.jpg", 48, 64, seed=2, exif=exif)
    _save_image(photos / "gray.png", 50, 70, seed=3, mode="L")
    _save_image(photos / "deeper" / "skipped.png", 30, 30, seed=4)  # not scanned without --recursive
    _touch(photos / "broken.jpg", "not a JPEG")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out" / "run1"

    code = main(
        [
            "detect",
            str(checkpoint),
            str(photos),
            str(missing),
            "--out",
            str(out),
            "--score-threshold",
            "0.2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    skipped = [line for line in captured.err.splitlines() if line.startswith("singleshot detect: skipped")]
    assert len(skipped) == 2
    assert any(str(missing) in line for line in skipped) and any("broken.jpg" in line for line in skipped)
    assert "Traceback" not in captured.err

    report = json.loads((out / "detections.json").read_text())
    assert report["class_names"] == CLASSES and report["score_threshold"] == 0.2
    assert sorted(f["file"] for f in report["failed"]) == sorted([str(photos / "broken.jpg"), str(missing)])
    entries = {Path(e["file"]).name: e for e in report["images"]}
    assert sorted(entries) == ["a.jpg", "gray.png", "turned.jpg"]
    assert (entries["turned.jpg"]["width"], entries["turned.jpg"]["height"]) == (48, 64)  # upright
    assert (entries["a.jpg"]["width"], entries["a.jpg"]["height"]) == (80, 60)

    model = load_checkpoint(checkpoint)
    model.score_threshold = 0.2
    total = 0
    for name, entry in entries.items():
        image = load_image(photos / name)
        want = model.predict([image])[0]
        got = entry["detections"]
        total += len(got)
        assert len(got) == len(want["scores"])
        assert all(d["class"] == CLASSES[d["label"] - 1] and d["score"] > 0.2 for d in got)
        # Batched and single predictions differ in the last bits, which may swap near-equal scores:
        # pair each wanted detection with the closest written one of its class instead of by position.
        got_rows = np.array([[d["label"], *d["box"], d["score"]] for d in got]).reshape(-1, 6)
        want_rows = torch.cat([want["labels"][:, None].float(), want["boxes"], want["scores"][:, None]], 1)
        gaps = np.abs(want_rows.numpy()[:, None, :] - got_rows[None, :, :])  # (K, K, 6)
        gaps[..., 0] *= 1000  # another class is never close
        gaps[..., 5] *= 100  # scores: 1e-4 counts like 0.01 px
        nearest = gaps.max(-1).argmin(1)
        assert len(set(nearest.tolist())) == len(got)  # one to one
        assert gaps.max(-1).min(1).max() <= 0.011

        picture = Image.open(out / entry["output"])
        assert Path(entry["output"]).stem == Path(name).stem
        assert picture.format == ("JPEG" if name.endswith(".jpg") else "PNG")
        assert picture.size == (entry["width"], entry["height"])
        if got:  # something was drawn on it
            assert not np.array_equal(np.asarray(picture.convert("RGB")), image.permute(1, 2, 0).numpy())
    assert total > 0
    assert f"3 images, {total} detections" in captured.out


def test_detect_exit_zero_and_json_only(checkpoint, tmp_path, capsys, umask_022):
    image = _save_image(tmp_path / "one.png", 40, 40, seed=5)
    assert main(["detect", str(checkpoint), str(image), "--out", str(tmp_path / "out"), "--no-draw"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["detections.json"]
    assert stat.S_IMODE((tmp_path / "out" / "detections.json").stat().st_mode) == 0o644  # not mkstemp's 0600
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert report["failed"] == [] and report["images"][0]["output"] is None


def test_detect_bad_options_and_files_are_one_sentence(checkpoint, tmp_path, capsys):
    image = _save_image(tmp_path / "one.png", 40, 40, seed=6)
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(2)}, foreign)
    a_file = _touch(tmp_path / "a_file")
    cases = [
        (["--score-threshold", "1.5"], "--score-threshold"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "tpu9"], "--device"),
        (["--out", str(a_file)], "is a file"),
        (["--out", str(a_file / "sub")], "cannot create the output directory"),
    ]
    for extra, words in cases:
        assert main(["detect", str(checkpoint), str(image), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert main(["detect", str(foreign), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a singleshot checkpoint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written for a bad checkpoint
