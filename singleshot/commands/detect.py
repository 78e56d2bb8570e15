"""``singleshot detect``: run a checkpoint on image files, write annotated copies and detections.json.

Inputs are image files and directories. A directory contributes the image files directly inside it
(by extension, hidden files skipped); ``--recursive`` also walks its subdirectories, except ``--out``.
A file named on the command line is always tried, whatever its extension. Images are read upright (EXIF
orientation applied), run through ``model.predict`` in batches of ``--batch-size`` and drawn with their
detections; threads decode the next batch and encode the pictures while the model runs.

Outputs in ``--out``: one annotated picture per image, named after the input's stem (``photo.jpg`` ->
``photo.jpg``; formats other than JPEG become PNG; a stem seen twice gets ``-2``, ``-3``, ...), and
``detections.json``::

    {"checkpoint": ..., "class_names": [...], "score_threshold": 0.3,
     "images": [{"file": "photos/a.jpg", "output": "a.jpg", "width": 640, "height": 480,
                 "detections": [{"box": [x1, y1, x2, y2], "score": 0.93, "label": 12, "class": "dog"}]}],
     "failed": [{"file": "photos/b.jpg", "error": "..."}]}

Boxes are xyxy in the pixels of the upright image. A file that is missing, unreadable or not an image is
named in one line on stderr, the others are still processed, and the exit status is then 1.

Video files named on the command line and a ``--source`` camera are handled by :mod:`singleshot.video`
(``clip.mp4`` -> ``clip.mp4`` annotated and ``clip.jsonl``, one line per frame; listed under ``"videos"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from singleshot.commands.evaluate import add_runtime_argument
from singleshot.errors import UserError
from singleshot.files import atomic_write, write_text_atomic

if TYPE_CHECKING:
    import torch

HELP = "Detect objects in images and videos: annotated copies and one detections.json in --out."
EXAMPLES = """\
examples:
  singleshot detect runs/a/best.pt photo.jpg --out detections/
  singleshot detect runs/a/best.pt photos/ more/*.png --out detections/ --score-threshold 0.5
  singleshot detect runs/a/best.pt dataset/ --recursive --device cuda --batch-size 32 --out det/
  singleshot detect runs/a/best.pt clip.mp4 --out det/     # det/clip.mp4 and det/clip.jsonl
  singleshot detect runs/a/best.pt --source 0 --out det/   # the first camera, until Ctrl-C

A directory gives the images directly inside it; --recursive walks its subdirectories too. The exit
status is 1 when some input could not be read (each is named on stderr), 2 for a bad option or checkpoint.
Videos and cameras need PyAV: pip install "singleshot[video]".
"""

JSON_NAME = "detections.json"
JPEG_SUFFIXES = (".jpg", ".jpeg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a checkpoint written by 'singleshot train', torchvision:NAME (COCO), or an .onnx file "
        "written by 'singleshot export'",
    )
    parser.add_argument(
        "inputs", metavar="INPUT", nargs="*", help="image files, directories of images and/or video files"
    )
    parser.add_argument(
        "--source",
        metavar="CAMERA",
        help="also read a camera: its index (0 is the first) or device path (/dev/video0); Ctrl-C stops it",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="detections",
        help="directory for the annotated images and detections.json (default: detections)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        metavar="T",
        help="keep detections scoring above this (default: 0.3)",
    )
    parser.add_argument(
        "--recursive", "-r", action="store_true", help="also scan subdirectories of directories"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default: 8)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto, cpu, cuda or cuda:N (default: auto: cuda if available)",
    )
    add_runtime_argument(parser)
    parser.add_argument(
        "--no-draw", dest="draw", action="store_false", help="write detections.json only, no annotated images"
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; anything else must be a usable torch device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices.")
    elif device.type != "cpu" and device.type != "mps":
        raise UserError(f"--device {name}: use auto, cpu, cuda or cuda:N.")
    return device


def find_images(
    inputs: list[str], recursive: bool = False, skip: Path | None = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files to process, in command-line order (directories sorted), and the failed inputs.

    A recursive scan does not enter ``skip`` (the output directory, so that a second run does not
    pick up the annotated copies of the first).

    Returns:
        (files, failures) with failures as ``(input, one-sentence reason)``.
    """
    from singleshot.data.images import is_image_file

    files: list[Path] = []
    failures: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(_scan(path, recursive, is_image_file, skip))
            if not found:
                where = "in it or its subdirectories" if recursive else "directly in it (try --recursive)"
                failures.append((name, f"directory {name} has no image files {where}."))
            for file in found:
                add(file)
        elif path.is_file():
            add(path)
        elif path.exists():
            failures.append((name, f"{name} is not a regular file."))
        else:
            failures.append((name, f"{name} does not exist."))
    return files, failures


def _scan(directory: Path, recursive: bool, is_image_file, skip: Path | None) -> Iterator[Path]:
    if recursive:
        skip = skip.resolve() if skip is not None else None
        for root, dirs, names in os.walk(directory):
            dirs[:] = [d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip]
            for name in names:
                if not name.startswith(".") and is_image_file(name):
                    yield Path(root) / name
    else:
        for entry in directory.iterdir():
            if not entry.name.startswith(".") and entry.is_file() and is_image_file(entry.name):
                yield entry


def output_names(files: list[Path]) -> list[str]:
    """Annotated-image file names: the input's stem, JPEG kept, others PNG; repeated names get -2, -3, ...."""
    names, taken = [], set()
    for file in files:
        suffix = ".jpg" if file.suffix.lower() in JPEG_SUFFIXES else ".png"
        stem = file.stem
        name, n = stem + suffix, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}{suffix}"
        taken.add(name.lower())
        names.append(name)
    return names


def _make_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the output directory {out} ({exc.strerror or exc}); choose another --out."
        ) from None
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write into the output directory {out}; choose another --out.")


def _video_sources(files: list[Path], camera: str | None) -> tuple[list, list[Path]]:
    """(the video files among ``files`` and the ``--source`` camera as ``singleshot.video`` sources,
    the other files)."""
    from singleshot.video import camera_source, file_source, import_av, split_videos

    videos, others = split_videos(files)
    sources = [file_source(f) for f in videos] + ([camera_source(camera)] if camera is not None else [])
    if sources:
        import_av()
    return sources, others


def _detections_json(det: dict, class_names: list[str]) -> list[dict]:
    rows = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        rows.append(
            {
                "box": [round(v, 2) for v in box],
                "score": round(score, 5),
                "label": int(label),
                "class": class_names[label - 1] if 1 <= label <= len(class_names) else f"class{label}",
            }
        )
    return rows


def format_json(value, indent: int = 0) -> str:
    """JSON, indented, but with every "flat" value (scalars, lists of scalars, dicts of those) on one
    line: one line per detection."""

    def flat(v) -> bool:
        if isinstance(v, dict):
            return all(
                not isinstance(x, (dict, list)) or (isinstance(x, list) and flat(x)) for x in v.values()
            )
        if isinstance(v, list):
            return all(not isinstance(x, (dict, list)) for x in v)
        return True

    if flat(value):
        return json.dumps(value, separators=(", ", ": "))
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {format_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{format_json(v, indent + 2)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, format_json(payload) + "\n")


def _load(file: Path) -> tuple[torch.Tensor | None, str | None]:
    """(image, None) or (None, the reason it could not be read)."""
    from singleshot.data import load_image

    try:
        return load_image(file), None
    except UserError as exc:
        return None, str(exc)


def _loaded_batches(files: list[Path], batch_size: int, pool: ThreadPoolExecutor) -> Iterator[list]:
    """Batches of ``(image or None, error or None)``, decoded in ``pool`` one batch ahead of the caller."""
    starts = range(0, len(files), batch_size)
    pending = None
    for start in starts:
        current = pending or [pool.submit(_load, f) for f in files[start : start + batch_size]]
        following = files[start + batch_size : start + 2 * batch_size]
        pending = [pool.submit(_load, f) for f in following] if following else None
        yield [future.result() for future in current]


def _draw_and_save(image, det, class_names, score_threshold: float, path: Path) -> None:
    from singleshot.render.draw import draw_detections

    picture = draw_detections(image, det, class_names, score_threshold=score_threshold)
    try:
        if path.suffix == ".jpg":
            atomic_write(path, lambda f: picture.save(f, format="JPEG", quality=92))
        else:
            atomic_write(path, lambda f: picture.save(f, format="PNG"))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another --out.") from None


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from singleshot import runtime

    if not 0.0 <= args.score_threshold < 1.0:
        raise UserError(f"--score-threshold {args.score_threshold} is outside [0, 1); try 0.3.")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1.")
    if not args.inputs and args.source is None:
        raise UserError("name the images, directories or videos to detect in, or a camera with --source 0.")
    device = resolve_device(args.device)
    out = Path(args.out)
    files, failures = find_images(args.inputs, recursive=args.recursive, skip=out)
    videos, files = _video_sources(files, args.source)  # checks that PyAV is there before the model loads
    # NMS never lets a lower score suppress a higher one, so thresholding before NMS gives the same
    # detections above the threshold as thresholding after it, and is faster.
    engine = runtime.load(
        args.checkpoint,
        runtime=args.runtime,
        device=device,
        score_threshold=args.score_threshold,
        batch=args.batch_size,
    )
    class_names = list(engine.class_names)
    _make_out_dir(out)
    choice = runtime.describe_choice(engine)
    if choice:
        print(f"singleshot detect: {choice}", file=sys.stderr)

    def report(name: str, reason: str) -> None:
        tqdm.write(f"singleshot detect: skipped {name}: {reason}", file=sys.stderr)

    for name, reason in failures:
        report(name, reason)

    names = output_names(files)
    results, saves = [], []
    bar = tqdm(total=len(files), unit="image", desc="detect", disable=None)
    # Threads decode the next batch and encode the annotated pictures while the model runs.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start, loaded in zip(
            range(0, len(files), args.batch_size), _loaded_batches(files, args.batch_size, pool)
        ):
            batch = []
            for file, name, (image, error) in zip(files[start:], names[start:], loaded):
                if image is None:
                    failures.append((str(file), error))
                    report(str(file), error)
                    bar.update(1)
                else:
                    batch.append((file, name, image))
            if not batch:
                continue
            with torch.inference_mode():
                detections = engine.predict([image for _, _, image in batch])
            for (file, name, image), det in zip(batch, detections):
                det = {k: v.cpu() for k, v in det.items()}
                if args.draw:
                    saves.append(
                        pool.submit(_draw_and_save, image, det, class_names, args.score_threshold, out / name)
                    )
                results.append(
                    {
                        "file": str(file),
                        "output": name if args.draw else None,
                        "width": int(image.shape[-1]),
                        "height": int(image.shape[-2]),
                        "detections": _detections_json(det, class_names),
                    }
                )
                bar.update(1)
        for future in saves:
            future.result()
    bar.close()
    if videos:
        from singleshot.video import detect_videos

        video_results, video_failures = detect_videos(
            engine,
            videos,
            out,
            describe=lambda det: _detections_json(det, class_names),
            score_threshold=args.score_threshold,
            batch_size=args.batch_size,
            draw=args.draw,
            report=report,
        )
        failures += video_failures

    _write_json(
        out / JSON_NAME,
        {
            "checkpoint": str(args.checkpoint),
            "class_names": class_names,
            "score_threshold": args.score_threshold,
            "images": results,
            **({"videos": video_results} if videos else {}),
            "failed": [{"file": name, "error": reason} for name, reason in failures],
        },
    )
    found = sum(len(r["detections"]) for r in results)
    failed = (
        f"; {len(failures)} input{'s' if len(failures) > 1 else ''} failed (named above)" if failures else ""
    )
    if results or not videos:
        print(
            f"{len(results)} image{'s' if len(results) != 1 else ''}, {found} detection{'s' if found != 1 else ''} -> {out / JSON_NAME}{failed}"
        )
    return 1 if failures else 0
