"""Tests of video input to ``singleshot detect`` (singleshot.video): a generated clip round trip through
PyAV, JSON lines per frame, the message without PyAV and the camera names of --source."""

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from singleshot.cli import main
from singleshot.errors import UserError
from singleshot.models import build_model, load_checkpoint, save_checkpoint
from singleshot.video import camera_source, import_av, output_stems

CLASSES = ["square", "disc"]
FRAMES, HEIGHT, WIDTH, FPS = 12, 96, 128, 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random ssd_small whose class scores are spread out, so that it detects things."""
    torch.manual_seed(0)
    model = build_model("ssd_small", num_classes=len(CLASSES) + 1, class_names=CLASSES)
    with torch.no_grad():
        for conv in model.head.classification.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.bias.normal_(0.0, 1.5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model)


def _frames() -> list[np.ndarray]:
    """A light square moving right over a dark gradient, (HEIGHT, WIDTH, 3) uint8 each."""
    frames = []
    for k in range(FRAMES):
        pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        pixels[..., 2] = np.linspace(0, 120, WIDTH, dtype=np.uint8)[None, :]
        pixels[30:62, 8 + 8 * k : 40 + 8 * k] = (230, 200, 40)
        frames.append(pixels)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k, pixels in enumerate(_frames()):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_on_a_clip_writes_the_annotated_video_and_one_json_line_per_frame(checkpoint, clip, tmp_path):
    out = tmp_path / "out"
    args = ["detect", str(checkpoint), str(clip), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--batch-size", "5", "--score-threshold", "0.2"]) == 0

    drawn = _decode(out / "clip.mp4")
    assert len(drawn) == FRAMES and all(frame.shape == (HEIGHT, WIDTH, 3) for frame in drawn)
    lines = _lines(out / "clip.jsonl")
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([k / FPS for k in range(FRAMES)])

    # The same detections as the model gives on the decoded frames, in batches of 5 as detect ran them.
    model = load_checkpoint(checkpoint).eval()
    model.score_threshold = 0.2
    frames = [torch.from_numpy(f).permute(2, 0, 1) for f in _decode(clip)]
    want = [d for start in range(0, FRAMES, 5) for d in model.predict(frames[start : start + 5])]
    total = 0
    for line, det in zip(lines, want):
        got = line["detections"]
        total += len(got)
        assert [d["label"] for d in got] == det["labels"].tolist()
        assert [d["class"] for d in got] == [CLASSES[k - 1] for k in det["labels"].tolist()]
        assert [d["score"] for d in got] == pytest.approx(det["scores"].tolist(), abs=1e-5)
        assert np.allclose([d["box"] for d in got], det["boxes"].reshape(-1, 4).tolist(), atol=0.006)
        assert all(d["score"] >= 0.2 for d in got)
    assert total > 0
    # Boxes were drawn: the annotated frames differ from the input well beyond the codec's loss.
    source = _decode(clip)
    loss = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(source, _frames())])
    change = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(drawn, source)])
    assert change > 3 * loss

    report = json.loads((out / "detections.json").read_text())
    assert report["images"] == [] and report["failed"] == []
    (video,) = report["videos"]
    assert (
        video["file"] == str(clip) and video["output"] == "clip.mp4" and video["detections"] == "clip.jsonl"
    )
    assert (video["frames"], video["found"], video["width"], video["height"]) == (
        FRAMES,
        total,
        WIDTH,
        HEIGHT,
    )
    assert video["fps"] == FPS


def test_images_and_videos_in_one_run_and_no_draw(checkpoint, clip, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "clip.png"  # the same stem as the video
    Image.fromarray(_frames()[3]).save(photo)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    out = tmp_path / "out"
    args = ["detect", str(checkpoint), str(photo), str(broken), str(clip), "--out", str(out), "--no-draw"]
    assert main([*args, "--device", "cpu"]) == 1  # one input failed
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (skipped,) = [line for line in captured.err.splitlines() if "skipped" in line]
    assert str(broken) in skipped and "cannot read" in skipped
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "detections.json"]
    assert len(_lines(out / "clip.jsonl")) == FRAMES
    report = json.loads((out / "detections.json").read_text())
    assert [e["file"] for e in report["images"]] == [str(photo)]
    assert [v["file"] for v in report["videos"]] == [str(clip)] and report["videos"][0]["output"] is None
    assert [f["file"] for f in report["failed"]] == [str(broken)]
    assert f"{clip}: {FRAMES} frames" in captured.out


def test_a_missing_pyav_is_one_sentence_naming_the_extra(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(UserError, match=r'pip install "singleshot\[video\]"'):
        import_av()
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)
    assert main(["detect", str(checkpoint), str(video), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "singleshot[video]"' in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_detect_needs_an_input_or_a_camera(checkpoint, tmp_path, capsys):
    assert main(["detect", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    assert "--source 0" in capsys.readouterr().err


def test_camera_sources_and_output_stems(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    camera = camera_source("0")
    assert (camera.url, camera.format, camera.stem, camera.live) == ("/dev/video0", "v4l2", "camera0", True)
    device = camera_source("/dev/video2")
    assert (device.url, device.format, device.stem, device.live) == ("/dev/video2", "v4l2", "video2", True)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert camera_source("1").format == "avfoundation"
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(UserError, match="Linux and macOS"):
        camera_source("0")
    with pytest.raises(UserError, match="neither a camera index"):
        camera_source(str(tmp_path / "nothing.mp4"))
    file = tmp_path / "a.mkv"
    file.write_bytes(b"")
    assert camera_source(str(file)).live is False
    sources = [camera_source(str(file)), camera_source(str(file)), camera_source(str(file))]
    assert output_stems(sources) == ["a", "a-2", "a-3"]


def test_an_odd_sized_clip_is_encoded_one_row_and_column_smaller(checkpoint, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "odd.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(5))  # lossless, any frame size
        stream.width, stream.height, stream.pix_fmt = 45, 33, "yuv444p"
        for k, pixels in enumerate(_frames()[:4]):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[:33, k : k + 45]), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    out = tmp_path / "out"
    assert main(["detect", str(checkpoint), str(path), "--out", str(out), "--device", "cpu"]) == 0
    drawn = _decode(out / "odd.mp4")
    assert len(drawn) == 4 and drawn[0].shape == (32, 44, 3)
    assert len(_lines(out / "odd.jsonl")) == 4
    report = json.loads((out / "detections.json").read_text())
    assert (report["videos"][0]["width"], report["videos"][0]["height"]) == (44, 32)


def test_ctrl_c_ends_a_camera_normally_and_aborts_a_file(checkpoint, clip, tmp_path):
    from singleshot.commands.detect import _detections_json
    from singleshot.video import VideoSource, detect_videos, file_source

    class StopsAtSecondBatch:  # what Ctrl-C during the second forward pass does
        def __init__(self):
            self.model, self.calls = load_checkpoint(checkpoint).eval(), 0
            self.class_names = self.model.class_names

        def predict(self, images):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self.model.predict(images)

    def run(source, out):
        out.mkdir()
        describe = lambda det: _detections_json(det, CLASSES)  # noqa: E731
        return detect_videos(
            StopsAtSecondBatch(), [source], out, describe=describe, score_threshold=0.3, batch_size=4
        )

    camera = VideoSource(name="camera", url=str(clip), stem="camera0", live=True)
    (summary,), failures = run(camera, tmp_path / "live")
    assert failures == [] and summary["frames"] == 4
    assert (
        len(_lines(tmp_path / "live" / "camera0.jsonl")) == 4
        and len(_decode(tmp_path / "live" / "camera0.mp4")) == 4
    )
    with pytest.raises(KeyboardInterrupt):
        run(file_source(clip), tmp_path / "file")
    assert list((tmp_path / "file").iterdir()) == []  # no half-written file, no temporary left
