"""Write a family of synthetic detection data sets, each hard in its own way, for measuring how well the
default training recipe generalises.

    python benchmarks/datasets.py data/family               # the tuning sets
    python benchmarks/datasets.py data/family --held-out    # ... and the held-out sets

Every set has train/val/test splits and is the same for the same script (fixed seeds). None matches the
demo's data (96 px squares, 5 classes, objects 8-50 % of the side). The ``held-out-*`` sets are
for a final check only: the recipe is never tuned on them, so they are written only with ``--held-out``.
A set whose folder is not empty is kept as it is unless ``--overwrite``. ``OUT/family.json`` lists the sets
written so far with their descriptions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from singleshot.data.synth import SHAPES, synthesize  # noqa: E402

SPLITS = "train=0.7,val=0.1,test=0.2"

# name -> (what makes it hard, synthesize() options); images: about 630 train, 90 val, 180 test
SETS = {
    "small-textured": (
        "small objects (3-60 %, under 14 px difficult) on textures, landscape and square images",
        dict(
            format="voc",
            images=900,
            seed=101,
            image_size="320-400x240-300,240x240,320x320,400x400",
            num_classes=4,
            background="texture",
            min_objects=1,
            max_objects=6,
            min_size=0.03,
            max_size=0.6,
            difficult_below=14,
        ),
    ),
    "photo-occluded": (
        "photo-like backgrounds, shaded objects, heavy occlusion and occluding blobs, 360-640 px any orientation",
        dict(
            format="voc",
            images=900,
            seed=102,
            image_size="360-640",
            shapes=("ellipse", "pentagon", "arrow", "crescent", "heart"),
            background="photo",
            shaded=True,
            occlusion=0.6,
            occluders=0.35,
            min_objects=1,
            max_objects=6,
            min_size=0.03,
            max_size=0.5,
        ),
    ),
    "clutter-many": (
        "12 classes, 1-10 objects among many non-class distractors, 320x240 and 240x320",
        dict(
            format="coco",
            images=900,
            seed=103,
            image_size="320x240,240x320",
            num_classes=12,
            background="clutter",
            min_objects=1,
            max_objects=10,
            min_size=0.06,
            max_size=0.4,
        ),
    ),
    "large-few": (
        "1-2 very large objects (30-70 %), 10 % background-only images, 256-512 px",
        dict(
            format="yolo",
            images=850,
            seed=104,
            image_size="256-512",
            shapes=("square-outline", "circle-striped", "star"),
            background="mixed",
            min_objects=1,
            max_objects=2,
            min_size=0.3,
            max_size=0.7,
            background_only=0.1,
        ),
    ),
    "tiny-dense": (
        "5-10 tiny objects (3-12 %) per image on textures, 400x400 and 480x360",
        dict(
            format="coco",
            images=800,
            seed=105,
            image_size="400x400,480x360",
            shapes=("circle", "triangle", "cross", "diamond", "l-shape", "ring"),
            background="texture",
            min_objects=5,
            max_objects=10,
            min_size=0.03,
            max_size=0.12,
        ),
    ),
    "held-out-a": (
        "20 classes by shape and style, sizes 4-50 %, texture and photo backgrounds, 5 % background-only",
        dict(
            format="voc",
            images=900,
            seed=201,
            image_size="300-500",
            num_classes=20,
            background="texture,photo",
            min_objects=1,
            max_objects=8,
            min_size=0.04,
            max_size=0.5,
            background_only=0.05,
        ),
    ),
    "held-out-b": (
        "portrait 360x480 and landscape 480x360, clutter and photo backgrounds, shaded, occluded, 3-40 %",
        dict(
            format="yolo",
            images=900,
            seed=202,
            image_size="360x480,480x360",
            shapes=SHAPES[4:12],
            background="clutter,photo",
            shaded=True,
            occlusion=0.5,
            occluders=0.25,
            min_objects=1,
            max_objects=7,
            min_size=0.03,
            max_size=0.4,
        ),
    ),
    "held-out-c": (
        "240-400 px landscape and square, textured and cluttered backgrounds, 4 classes, 3-60 %, under 14 px "
        "difficult",
        dict(
            format="voc",
            images=860,
            seed=203,
            image_size="320-400x240-300,240x240,400x400",
            shapes=("star", "ring", "diamond", "hexagon"),
            background="texture,clutter",
            min_objects=1,
            max_objects=6,
            min_size=0.03,
            max_size=0.6,
            difficult_below=14,
        ),
    ),
    "held-out-d": (
        "360-640 px portrait and landscape, photo-like backgrounds, 5 shaded classes, occlusion, 3-50 %",
        dict(
            format="coco",
            images=1150,
            seed=204,
            image_size="360-640",
            shapes=("triangle-outline", "hexagon-striped", "l-shape", "diamond-outline", "square-two-tone"),
            background="photo",
            shaded=True,
            occlusion=0.5,
            occluders=0.3,
            min_objects=1,
            max_objects=8,
            min_size=0.03,
            max_size=0.5,
        ),
    ),
    "held-out-e": (
        "260-420 px portrait, landscape and square, textured and cluttered backgrounds, 4 classes, 3-60 %, "
        "under 14 px difficult, 3 % background-only",
        dict(
            format="voc",
            images=860,
            seed=205,
            image_size="300-420x260-320,260-320x300-420,320x320",
            shapes=("cross", "pentagon", "heart", "crescent"),
            background="texture,clutter",
            min_objects=1,
            max_objects=7,
            min_size=0.03,
            max_size=0.6,
            difficult_below=14,
            background_only=0.03,
        ),
    ),
    "held-out-f": (
        "360-640 px portrait and landscape, photo-like backgrounds, 5 shaded classes, occlusion, 3-55 %",
        dict(
            format="coco",
            images=1150,
            seed=206,
            image_size="360-640",
            shapes=("circle-striped", "arrow", "square-outline", "ellipse", "triangle"),
            background="photo",
            shaded=True,
            occlusion=0.5,
            occluders=0.3,
            min_objects=1,
            max_objects=9,
            min_size=0.03,
            max_size=0.55,
        ),
    ),
    "held-out-g": (
        "240-420 px landscape, portrait and square, textured and cluttered backgrounds, 4 classes, 3-60 %, "
        "under 14 px difficult",
        dict(
            format="voc",
            images=860,
            seed=207,
            image_size="320-420x240-320,240-320x320-420,300x300",
            shapes=("circle", "triangle", "arrow", "l-shape"),
            background="texture,clutter",
            min_objects=1,
            max_objects=6,
            min_size=0.03,
            max_size=0.6,
            difficult_below=14,
        ),
    ),
    "held-out-h": (
        "240-400 px landscape and square, textured and cluttered backgrounds, 4 classes, 3-60 %, under 14 px "
        "difficult",
        dict(
            format="voc",
            images=860,
            seed=208,
            image_size="300-400x240-300,260x260,380x380",
            shapes=("hexagon-striped", "ellipse", "square-outline", "star"),
            background="texture,clutter",
            min_objects=1,
            max_objects=6,
            min_size=0.03,
            max_size=0.6,
            difficult_below=14,
        ),
    ),
    "held-out-i": (
        "360-640 px portrait and landscape, photo-like backgrounds, 5 shaded classes, occlusion, 3-55 %",
        dict(
            format="coco",
            images=1150,
            seed=209,
            image_size="360-640",
            shapes=("pentagon", "ring", "triangle-outline", "cross", "diamond"),
            background="photo",
            shaded=True,
            occlusion=0.5,
            occluders=0.3,
            min_objects=1,
            max_objects=8,
            min_size=0.03,
            max_size=0.55,
        ),
    ),
}
HELD_OUT = (
    "held-out-a",
    "held-out-b",
    "held-out-c",
    "held-out-d",
    "held-out-e",
    "held-out-f",
    "held-out-g",
    "held-out-h",
    "held-out-i",
)


def describe(name: str) -> dict:
    """A set's name, layout, classes and what makes it hard (the ``hard`` string)."""
    hard, options = SETS[name]
    classes = list(options["shapes"]) if "shapes" in options else list(SHAPES[: options["num_classes"]])
    return {
        "name": name,
        "hard": hard,
        "layout": options["format"],
        "classes": classes,
        "held_out": name in HELD_OUT,
    }


def write_set(out: Path, name: str, overwrite: bool = False, workers: int | None = None) -> str:
    """Write set ``name`` into ``out/name``; returns what was done, in a few words."""
    folder = out / name
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        return "kept (exists)"
    options = dict(SETS[name][1])
    num_images = options.pop("images")
    summary = synthesize(
        folder, num_images, splits=SPLITS, overwrite=overwrite, workers=workers, progress=False, **options
    )
    splits = ", ".join(f"{k} {v}" for k, v in summary.splits.items() if k != "trainval")
    return f"wrote {summary.num_images} images, {summary.num_objects} objects ({splits})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write the sets into (one sub-folder each)")
    parser.add_argument("--held-out", action="store_true", help="also write the held-out sets")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(SETS), help="write only these")
    parser.add_argument("--overwrite", action="store_true", help="rewrite sets that exist")
    parser.add_argument("--workers", type=int, default=None, help="processes per set (default: up to 4)")
    args = parser.parse_args(argv)
    names = args.only or [n for n in SETS if args.held_out or n not in HELD_OUT]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "family.json"
    family = json.loads(listing.read_text()) if listing.exists() else {}
    for name in names:
        done = write_set(out, name, args.overwrite, args.workers)
        d = describe(name)
        family[name] = d
        tag = " [held out]" if d["held_out"] else ""
        print(f"{name} ({d['layout']}, {len(d['classes'])} classes){tag}: {d['hard']}; {done}", flush=True)
    tmp = listing.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(family, indent=2) + "\n")
    tmp.replace(listing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
