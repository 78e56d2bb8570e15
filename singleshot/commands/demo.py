"""``singleshot demo``: the whole job on an embedded default, in minutes on a laptop CPU.

Synthesise a data set of shapes, train the small model on its train split (validating on val), evaluate
the best checkpoint on the held-out test split, and write a gallery of detections, the training curves,
the precision-recall curves and a summary.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from singleshot.files import atomic_write, write_text_atomic

HELP = (
    "synthesise data, train the small model, evaluate and draw detections: the whole job in minutes on a CPU"
)

EXAMPLES = """\
examples:
  singleshot demo                      # about 4 minutes on 2 CPU cores; writes runs/demo/
  singleshot demo --out /tmp/demo --quick   # a smoke run in seconds (tiny data, 3 epochs): checks the set-up
  singleshot demo --epochs 40          # train longer

writes: OUT/gallery.png (test images with their detections), OUT/curves.png (loss terms, learning rate,
validation mAP), OUT/pr_curves.png, OUT/results.json, OUT/summary.md, the run OUT/run/ (best.pt, last.pt,
metrics.csv, config.json) and the data OUT/data/.
"""


@dataclass(frozen=True)
class DemoRecipe:
    """Everything the demo does, in one place: data, model input, training recipe.

    Many distinct synthetic images seen a few times each teach the small model more per second than a few
    images seen many times, so the data set is large, the augmentation light (random crops of at least
    half the image and flips) and the images are made at the network's input size (no resizing).
    """

    images: int = 6000
    splits: str = "train=0.9,val=0.02,test=0.08"
    image_side: int = 96  # the synthetic images, and the network input
    num_classes: int = 5
    min_size: float = 0.2
    max_size: float = 0.6
    max_objects: int = 3
    clutter: float = 0.2
    epochs: int = 7
    batch_size: int = 32
    lr: float = 0.03
    optimizer: str = "sgd"  # measured with SGD; the shapes need no more steps than 7 epochs give
    warmup_epochs: float = 0.2
    val_every: int = 2
    width: int = 12  # ssd_small's base width: narrower than the default, enough for these shapes
    augment: dict = field(
        default_factory=lambda: {"photometric": False, "expand": False, "crop_min_scale": 0.5}
    )


QUICK = DemoRecipe(
    images=24, splits="train=0.5,val=0.2,test=0.3", image_side=64, epochs=3, batch_size=4, val_every=1
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few tiny images and 3 epochs: a smoke test in seconds"
    )
    parser.add_argument("--epochs", type=int, metavar="E", help="training epochs (default: the recipe's)")
    parser.add_argument(
        "--images", type=int, metavar="N", help="synthetic images in all splits (default: the recipe's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default: 0)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data-loading processes (default: one per spare core, at most 4; none on a CPU of 2 cores or fewer)",
    )
    parser.add_argument("--device", default="auto", metavar="D", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from singleshot.errors import UserError

    recipe = QUICK if args.quick else DemoRecipe()
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs {args.epochs}: give at least 1")
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    if args.images is not None:
        if args.images < 10:
            raise UserError(f"--images {args.images}: give at least 10, so that every split has images")
        recipe = dataclasses.replace(recipe, images=args.images)
    began = time.perf_counter()
    out = Path(args.out)
    summary = run_demo(
        recipe, out, seed=args.seed, workers=args.workers, device=args.device, progress=not args.no_progress
    )
    total = time.perf_counter() - began
    summary["total_seconds"] = total
    text = summary_markdown(summary)
    write_text_atomic(out / "summary.md", text)
    print()
    print(text)
    return 0


def run_demo(
    recipe: DemoRecipe,
    out: Path,
    *,
    seed: int = 0,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Data, training, evaluation and pictures; returns the numbers for the summary."""
    from singleshot.commands.evaluate import results_json
    from singleshot.data import open_dataset, synthesize
    from singleshot.engine import TrainConfig, Trainer, predict_dataset
    from singleshot.engine.state import write_json
    from singleshot.metrics import format_ap_table, format_map, mean_average_precision
    from singleshot.models import DEFAULT_MODEL, load_checkpoint
    from singleshot.render.pr import plot_pr_curves

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    timings = {}

    began = time.perf_counter()
    _say(f"[1/4] synthesising {recipe.images} images of {recipe.num_classes} shapes in {data}")
    synth = synthesize(
        data,
        recipe.images,
        format="voc",
        image_size=recipe.image_side,
        seed=seed,
        splits=recipe.splits,
        num_classes=recipe.num_classes,
        min_size=recipe.min_size,
        max_size=recipe.max_size,
        max_objects=recipe.max_objects,
        clutter=recipe.clutter,
        overwrite=True,
    )
    timings["data"] = time.perf_counter() - began

    began = time.perf_counter()
    _say(
        f"[2/4] training {DEFAULT_MODEL} for {recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''} in {out / 'run'}"
    )
    config = TrainConfig(
        data=str(data),
        out=str(out / "run"),
        train_split="train",
        val_split="val",
        model=DEFAULT_MODEL,
        image_size=recipe.image_side,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        optimizer=recipe.optimizer,
        warmup_epochs=recipe.warmup_epochs,
        val_every=recipe.val_every,
        seed=seed,
        workers=workers,
        device=device,
        augment=dict(recipe.augment),
        model_options={"width": recipe.width},
    )
    from singleshot.engine import distributed

    world = distributed.World(device=distributed.resolve_device(device))
    result = Trainer(config, world=world, progress=progress, overwrite=True).fit()  # rewrites OUT/run
    if result.interrupted:
        raise KeyboardInterrupt
    timings["train"] = time.perf_counter() - began

    began = time.perf_counter()
    _say("[3/4] evaluating the best checkpoint on the held-out test split")
    model = load_checkpoint(out / "run" / "best.pt", map_location=world.device)
    test = open_dataset(data, split="test", classes=model.class_names)
    predictions, targets = predict_dataset(
        model,
        test,
        batch_size=recipe.batch_size,
        workers=result.config.workers,
        progress=progress,
        desc="test",
    )
    metrics = mean_average_precision(predictions, targets, metric="voc07", class_names=model.class_names)
    write_json(
        out / "results.json",
        results_json(
            metrics,
            checkpoint=str(out / "run" / "best.pt"),
            data=str(data),
            split="test",
            num_images=len(test),
        ),
    )
    plot_pr_curves(
        metrics, out / "pr_curves.png", title=f"held-out test split: VOC07 mAP {format_map(metrics['map'])}"
    )
    shutil.copyfile(out / "run" / "curves.png", out / "curves.png")
    timings["evaluate"] = time.perf_counter() - began

    _say("[4/4] drawing detections")
    write_gallery(out / "gallery.png", test, predictions, model.class_names)

    return {
        "out": str(out),
        "recipe": recipe,
        "synth": synth,
        "model": DEFAULT_MODEL,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(world.device),
        "best_val_map": result.best_map,
        "test_map": float(metrics["map"]),
        "table": format_ap_table(metrics),
        "test_images": len(test),
        "timings": timings,
    }


def write_gallery(
    path: Path,
    dataset,
    predictions,
    class_names,
    count: int = 12,
    columns: int = 4,
    score_threshold: float = 0.5,
) -> Path:
    """A grid of the first ``count`` images of ``dataset`` with their detections scoring >= the threshold."""
    from singleshot.render.draw import draw_detections, image_grid

    pictures = []
    for i in range(min(count, len(dataset))):
        image, _ = dataset.load(i)
        pictures.append(draw_detections(image, predictions[i], class_names, score_threshold, note_empty=True))
    atomic_write(path, lambda f: image_grid(pictures, columns=columns).save(f, format="PNG"))
    return path


def summary_markdown(s: dict) -> str:
    """The summary printed at the end and written to OUT/summary.md."""
    from singleshot.metrics import format_map

    r, t, synth = s["recipe"], s["timings"], s["synth"]
    splits = ", ".join(f"{n} {c}" for n, c in synth.splits.items() if n != "trainval")
    out = Path(s["out"])
    epochs = f"{r.epochs} epoch{'s' if r.epochs != 1 else ''}"
    total = s.get("total_seconds", sum(t.values()))
    return f"""\
# singleshot demo

- data: {synth.num_images} synthetic {r.image_side} px images ({splits}) with {synth.num_objects} objects of
  {len(synth.class_names)} classes ({", ".join(synth.class_names)})
- model: {s["model"]}, {s["parameters"] / 1e6:.2f} M parameters, input {r.image_side} px, on {s["device"]}
- training: {epochs}, batch {r.batch_size}, SGD lr {r.lr:g} with warmup and cosine decay: {t["train"]:.0f} s
- **held-out test split: VOC07 mAP {format_map(s["test_map"])}** on {s["test_images"]} images
  (best validation mAP {format_map(s["best_val_map"])})
- wall time {total:.0f} s (data {t["data"]:.0f} s, training {t["train"]:.0f} s, test {t["evaluate"]:.0f} s)

```
{s["table"]}
```

Files:
- {out / "gallery.png"}: test images with the detections scoring at least 0.5
- {out / "curves.png"}: loss terms, learning rate and validation mAP over training
- {out / "pr_curves.png"}: precision-recall curves on the test split
- {out / "results.json"}: per-class AP and the mAP
- {out / "run"}/: best.pt, last.pt, metrics.csv, config.json
- {out / "data"}/: the synthetic VOC data set
"""


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)
