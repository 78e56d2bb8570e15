"""Detections on video, from a file or a camera, decoded and encoded with PyAV (the ``video`` extra).

``singleshot detect CKPT clip.mp4 --out DIR`` writes, for each video:

- ``DIR/clip.mp4``: the video with its detections drawn (H.264 in MP4, the input's frame rate; a frame
  of odd width or height loses its last column or row, which the encoder needs even);
- ``DIR/clip.jsonl``: one JSON line per frame, in order::

      {"frame": 0, "time": 0.0, "detections": [{"box": [x1, y1, x2, y2], "score": 0.93, "label": 1,
                                                "class": "dog"}]}

  ``time`` is the frame's presentation time in seconds from the start of the video and boxes are xyxy in
  the frame's pixels, as in ``detections.json``.

Frames are streamed: decoded, run through the model ``batch_size`` at a time, drawn and encoded, so that
memory does not grow with the length of the video. Both files are written under temporary names and
renamed when the video ends. A camera (``--source 0`` or ``--source /dev/video0``; Video4Linux2 on
Linux, AVFoundation on macOS) is read until it stops or until Ctrl-C, which ends the files normally.
Rotation metadata (phone videos) is not applied: frames are read as stored.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

from singleshot.errors import UserError
from singleshot.files import atomic_write

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
)
DEFAULT_FPS = 30  # for a stream that states no frame rate (some cameras)
ENCODERS = ("libx264", "h264", "mpeg4")  # the first one this PyAV build has


class _Unreadable(Exception):
    """A source that opens but gives no frames to read."""


@dataclass(frozen=True)
class VideoSource:
    """Where frames come from: ``name`` for messages, ``url`` and ``format`` for ``av.open``,
    ``stem`` for the output names; ``live`` for a camera (stopped by Ctrl-C)."""

    name: str
    url: str
    format: str | None = None
    stem: str = "video"
    live: bool = False


def is_video_file(name: str | os.PathLike) -> bool:
    """Whether a file name has a video extension (case-insensitive)."""
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


def import_av():
    """The ``av`` module, or a UserError saying how to install it."""
    try:
        import av
    except ImportError:
        raise UserError(
            'video input needs PyAV, which is not installed; install it with: pip install "singleshot[video]".'
        ) from None
    return av


def file_source(path: str | os.PathLike) -> VideoSource:
    """A video file."""
    return VideoSource(name=str(path), url=str(path), stem=Path(path).stem or "video")


def camera_source(text: str) -> VideoSource:
    """What ``--source`` names: a camera index (``0`` is the first), a device path, or a video file.

    An index is ``/dev/videoN`` through Video4Linux2 on Linux and AVFoundation device N on macOS; a path
    under ``/dev/`` is opened with Video4Linux2.
    """
    if text.isdigit():
        if sys.platform.startswith("linux"):
            return VideoSource(text, f"/dev/video{text}", "v4l2", f"camera{text}", live=True)
        if sys.platform == "darwin":
            return VideoSource(text, f"{text}:none", "avfoundation", f"camera{text}", live=True)
        raise UserError(
            f"--source {text}: camera indices work on Linux and macOS only; name the device or a video file."
        )
    if text.startswith("/dev/"):
        return VideoSource(text, text, "v4l2", Path(text).name, live=True)
    if not Path(text).is_file():
        raise UserError(f"--source {text} is neither a camera index, a device nor a video file.")
    return file_source(text)


def split_videos(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(videos, others)``: the files with a video extension and the rest, each in the given order."""
    videos = [f for f in files if is_video_file(f)]
    return videos, [f for f in files if not is_video_file(f)]


def output_stems(sources: Sequence[VideoSource]) -> list[str]:
    """One output stem per source: its own, or ``stem-2``, ``stem-3``, ... when an earlier source has it
    (case-insensitive)."""
    used, stems = set(), []
    for source in sources:
        stem, n = source.stem, 1
        while stem.lower() in used:
            n += 1
            stem = f"{source.stem}-{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def detect_videos(
    model,
    sources: Sequence[VideoSource],
    out: Path,
    *,
    describe: Callable[[dict], list[dict]],
    score_threshold: float,
    batch_size: int,
    draw: bool = True,
    report: Callable[[str, str], None] | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Run ``model`` on every frame of each source and write ``out/STEM.mp4`` and ``out/STEM.jsonl``;
    print one line per video written (frames, detections, files).

    Args:
        model: has ``predict(list of Tensor[3, H, W] uint8) -> list of detection dicts`` and ``class_names``.
        describe: turns one detection dict into its JSON rows (``detect``'s format).
        draw: also write the annotated video; otherwise only the JSON lines.
        report: called with ``(source name, one-sentence reason)`` for a video that cannot be read.

    Returns:
        ``(videos, failures)``: one summary dict per video written (``file``, ``output`` (None without
        ``draw``), ``detections`` (the JSON-lines file), ``frames``, ``found`` (detections in all frames),
        ``fps``, ``width``, ``height``) and ``(source name, reason)`` for the others.
    """
    av = import_av()
    results, failures = [], []
    for source, stem in zip(sources, output_stems(sources)):
        try:
            summary = _detect_one(av, model, source, out, stem, describe, score_threshold, batch_size, draw)
        except (av.error.FFmpegError, _Unreadable) as exc:
            reason = f"cannot read or encode the video {source.name} ({_reason(exc)})."
            failures.append((source.name, reason))
            if report is not None:
                report(source.name, reason)
            continue
        results.append(summary)
        written = ", ".join(str(out / name) for name in (summary["output"], summary["detections"]) if name)
        print(f"{source.name}: {summary['frames']} frames, {summary['found']} detections -> {written}")
    return results, failures


def _reason(exc) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _detect_one(av, model, source, out, stem, describe, score_threshold, batch_size, draw) -> dict:
    from tqdm import tqdm

    container = av.open(source.url, format=source.format)
    try:
        stream = container.streams.video[0] if container.streams.video else None
        if stream is None:
            raise _Unreadable("it has no video stream")
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
        fps = Fraction(rate).limit_denominator(1001)
        width, height = stream.codec_context.width, stream.codec_context.height
        bar = tqdm(total=stream.frames or None, unit="frame", desc=stem, disable=None)
        summary = {
            "file": source.name,
            "output": f"{stem}.mp4" if draw else None,
            "detections": f"{stem}.jsonl",
            "frames": 0,
            "found": 0,
            "fps": round(float(fps), 3),
            "width": width - width % 2 if draw else width,
            "height": height - height % 2 if draw else height,
        }
        frames = _decoded(container, stream, width, height)

        def write_lines(lines: IO[bytes], video: IO[bytes] | None) -> None:
            encoder = _Encoder(av, video, summary["width"], summary["height"], fps) if video else None
            try:
                for batch in _batches(frames, batch_size):
                    detections = _predict(model, [image for _, _, image in batch])
                    for (index, time, image), det in zip(batch, detections):
                        row = {"frame": index, "time": round(time, 4), "detections": describe(det)}
                        summary["found"] += len(row["detections"])
                        lines.write((json.dumps(row, separators=(", ", ": ")) + "\n").encode())
                        if encoder is not None:
                            encoder.add(_drawn(image, det, model.class_names, score_threshold))
                        summary["frames"] += 1
                        bar.update(1)
            except KeyboardInterrupt:  # how a camera is stopped: end both files normally
                if not source.live:
                    raise
            if encoder is not None:
                encoder.close()

        try:
            if draw:
                atomic_write(
                    out / f"{stem}.jsonl",
                    lambda lines: atomic_write(out / f"{stem}.mp4", lambda video: write_lines(lines, video)),
                )
            else:
                atomic_write(out / f"{stem}.jsonl", lambda lines: write_lines(lines, None))
        except OSError as exc:
            if isinstance(exc, av.error.FFmpegError):
                raise
            raise UserError(
                f"cannot write into {out} ({exc.strerror or exc}); choose another --out."
            ) from None
        finally:
            bar.close()
    finally:
        container.close()
    return summary


def _decoded(container, stream, width: int, height: int) -> Iterator[tuple[int, float, object]]:
    """``(index, time in s from the first frame, Tensor[3, height, width] uint8)`` per frame."""
    import torch

    start = None
    size = {"width": width, "height": height} if width and height else {}  # one size for the whole video
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index / float(stream.average_rate or DEFAULT_FPS)
        start = time if start is None else start
        pixels = frame.to_ndarray(format="rgb24", **size)  # (H, W, 3) uint8
        yield index, time - start, torch.from_numpy(pixels).permute(2, 0, 1)


def _batches(frames: Iterator, size: int) -> Iterator[list]:
    while batch := list(itertools.islice(frames, size)):
        yield batch


def _predict(model, images: list) -> list[dict]:
    import torch

    with torch.inference_mode():
        return [{k: v.cpu() for k, v in det.items()} for det in model.predict(images)]


def _drawn(image, det, class_names, score_threshold):
    """The frame with its detections, as a (H, W, 3) uint8 array cropped to an even width and height."""
    import numpy as np

    from singleshot.render.draw import draw_detections

    pixels = np.asarray(draw_detections(image, det, class_names, score_threshold=score_threshold))
    height, width = pixels.shape[:2]
    return pixels[: height - height % 2, : width - width % 2]


class _Encoder:
    """Frames (H, W, 3) uint8 RGB into an MP4 file object, at a constant ``fps``."""

    def __init__(self, av, file: IO[bytes], width: int, height: int, fps: Fraction):
        self.av = av
        self.container = av.open(file, mode="w", format="mp4")
        codec = next((name for name in ENCODERS if _has_encoder(av, name)), None)
        if codec is None:
            raise UserError("this PyAV build has no H.264 or MPEG-4 encoder; reinstall PyAV from its wheels.")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            self.stream.options = {"preset": "veryfast", "crf": "23"}
        self.count = 0

    def add(self, pixels) -> None:
        frame = self.av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the frames the encoder holds back
            self.container.mux(packet)
        self.container.close()


def _has_encoder(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError, LookupError):
        return False
    return True
