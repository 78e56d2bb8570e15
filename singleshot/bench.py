"""Side-by-side speed measurements against torchvision's SSD, in one process, on identical inputs.

Every row times singleshot and a reference (torchvision; pycocotools for COCO mAP) on the same inputs (and,
end to end, the same weights via ``from_torchvision``): a few warm-up calls, then the median of several timed
calls (interleaved). The speed-up is the reference's time divided by ours, so > 1 means singleshot is faster.
``singleshot bench`` prints the table and writes it into ``docs/benchmarks.md`` between markers, leaving the
hand-written notes alone.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from singleshot.files import write_text_atomic
from singleshot.priors import TORCHVISION_SSD300, default_boxes

MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"


@dataclass
class Row:
    name: str
    ours: float | None  # seconds per call (median)
    theirs: float | None
    unit: str = "s"
    goal: float | None = None  # required ratio theirs / ours
    note: str = ""
    reference: str = "torchvision"
    images: int = 1  # images per timed call

    @property
    def ratio(self) -> float | None:
        if self.ours and self.theirs:
            return self.theirs / self.ours
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_pair(
    ours: Callable, theirs: Callable, *, repeats: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """Median times of two callables, measured interleaved so that machine noise hits both alike."""
    for _ in range(warmup):
        ours()
        theirs()
    _sync(device)
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        for fn, bucket in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            fn()
            _sync(device)
            bucket.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs)


def random_targets(
    batch: int, max_objects: int, *, generator: torch.Generator, device: torch.device
) -> list[dict]:
    """Random xyxy boxes relative to the image (1..max_objects per image) with labels in 1..20."""
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 0.7
        wh = 0.05 + torch.rand(n, 2, generator=generator) * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=1)
        labels = torch.randint(1, 21, (n,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return targets


def detector_outputs(batch: int, priors: torch.Tensor, num_classes: int, *, generator: torch.Generator):
    """Raw outputs that look like a trained detector's: clusters of confident priors around 1-7 objects
    per image, mostly-background elsewhere with a noisy tail (about 1900 class scores above 0.01 per image
    for SSD300's 8732 priors and 21 classes).

    Returns cls_logits Tensor[B, P, C] and box_deltas Tensor[B, P, 4] (CPU).
    """
    from singleshot.boxes import box_iou, cxcywh_to_xyxy, encode

    p = len(priors)
    targets = random_targets(batch, 7, generator=generator, device=torch.device("cpu"))
    logits = torch.randn(batch, p, num_classes, generator=generator) * 1.2
    logits[..., 0] += 8.5
    deltas = torch.randn(batch, p, 4, generator=generator) * 0.5
    priors_xyxy = cxcywh_to_xyxy(priors)
    for b, t in enumerate(targets):
        best, which = box_iou(t["boxes"], priors_xyxy).max(dim=0)  # (P,)
        near = best > 0.3
        logits[b, near, t["labels"][which[near]]] += 9.0 + 4.0 * best[near]
        noise = torch.randn(int(near.sum()), 4, generator=generator) * 0.3
        deltas[b, near] = encode(t["boxes"][which[near]], priors[near]) + noise
    return logits, deltas


def _tv_ssd300(num_classes: int = 21):
    from torchvision.models.detection import ssd300_vgg16

    return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)


class _ShapeOnlyBackbone(torch.nn.Module):
    """Feature maps of SSD300's sizes from a 1x1 convolution and pooling: the loss and post-processing rows
    only need torchvision's ``SSD.compute_loss`` and ``SSD.postprocess_detections``, not VGG16."""

    out_channels = [4] * 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        from collections import OrderedDict

        y = self.conv(x)
        sizes = TORCHVISION_SSD300["feature_sizes"]
        maps = (torch.nn.functional.adaptive_avg_pool2d(y, s) for s in sizes)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def _tv_ssd300_losses_only(num_classes: int = 21):
    """A torchvision ``SSD`` with ``ssd300_vgg16``'s default boxes, matcher, loss and post-processing."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    cfg = TORCHVISION_SSD300
    boxes = DefaultBoxGenerator(cfg["aspect_ratios"], scales=cfg["scales"], steps=cfg["steps"])
    return SSD(_ShapeOnlyBackbone(), boxes, (300, 300), num_classes=num_classes)


def bench_loss(device: torch.device, *, batch: int = 32, repeats: int = 9, warmup: int = 2) -> Row:
    """MultiBoxLoss forward + backward vs torchvision's per-image matching + SSD.compute_loss."""
    from torchvision.ops import box_iou

    from singleshot.boxes import cxcywh_to_xyxy
    from singleshot.loss import MultiBoxLoss

    gen = torch.Generator().manual_seed(0)
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh").to(device)
    p = len(priors)
    targets = random_targets(batch, 7, generator=gen, device=device)
    tv_targets = [{"boxes": t["boxes"] * 300, "labels": t["labels"]} for t in targets]
    logits = torch.randn(batch, p, 21, generator=gen).to(device).requires_grad_()
    deltas = torch.randn(batch, p, 4, generator=gen).to(device).requires_grad_()
    loss_fn = MultiBoxLoss(priors).to(device)
    tv = _tv_ssd300_losses_only().to(device)
    anchors = [cxcywh_to_xyxy(priors) * 300] * batch

    def ours():
        out = loss_fn(logits, deltas, targets)
        out["loss"].backward()

    def theirs():
        matched = [tv.proposal_matcher(box_iou(t["boxes"], a)) for t, a in zip(tv_targets, anchors)]
        out = tv.compute_loss(tv_targets, {"cls_logits": logits, "bbox_regression": deltas}, anchors, matched)
        (out["bbox_regression"] + out["classification"]).backward()

    t_ours, t_theirs = time_pair(ours, theirs, repeats=repeats, warmup=warmup, device=device)
    return Row(f"loss fwd+bwd, batch {batch}, {p} priors, 21 classes", t_ours, t_theirs, goal=3.0)


def bench_postprocess(device: torch.device, *, batch: int = 8, repeats: int = 11, warmup: int = 2) -> Row:
    """postprocess vs SSD.postprocess_detections on the same outputs and boxes."""
    from singleshot.boxes import cxcywh_to_xyxy
    from singleshot.postprocess import postprocess

    gen = torch.Generator().manual_seed(1)
    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    p = len(priors)
    logits, deltas = detector_outputs(batch, priors, 21, generator=gen)
    logits, deltas, priors = logits.to(device), deltas.to(device), priors.to(device)
    tv = _tv_ssd300_losses_only().to(device).eval()
    anchors = [cxcywh_to_xyxy(priors) * 300] * batch
    sizes = [(300, 300)] * batch

    def ours():
        return postprocess(logits, deltas, priors, sizes)

    def theirs():
        return tv.postprocess_detections({"cls_logits": logits, "bbox_regression": deltas}, anchors, sizes)

    with torch.inference_mode():
        t_ours, t_theirs = time_pair(ours, theirs, repeats=repeats, warmup=warmup, device=device)
    return Row(f"post-processing, batch {batch}, {p} priors", t_ours, t_theirs, goal=4.0)


def _same_weights_pair(device: torch.device):
    """torchvision's SSD300-VGG16 (91 COCO classes, random weights) and singleshot's copy of it.

    Random weights give near-uniform class scores: every prior would pass the 0.01 score threshold for every
    class (~230 000 candidates per image), and both implementations would spend seconds in NMS, nothing like
    a trained detector. The classification head is therefore scaled by 1/4 and its background logits raised
    by 7.5, which leaves a trained detector's long tail of ~3600 candidates per 375x500 image (measured on
    the bench images); the box head and the backbone stay as initialised.
    """
    from singleshot.models import from_torchvision

    tv = _tv_ssd300(num_classes=91)
    with torch.no_grad():
        for conv in tv.head.classification_head.module_list:
            conv.weight.mul_(0.25)
            conv.bias.mul_(0.25).view(-1, 91)[:, 0] += 7.5
    tv = tv.to(device).eval()
    ours = from_torchvision(tv).to(device).eval()
    return ours, tv


def bench_predict(device: torch.device, *, batches=(1, 8), repeats: int = 3, warmup: int = 1) -> list[Row]:
    """End-to-end SSD300-VGG16 prediction on 375x500 uint8 images, same weights (:func:`_same_weights_pair`):
    ``model.predict(images)`` (pre-processing, the network with pre-packed oneDNN convolutions on the CPU,
    post-processing) against calling torchvision's model on the same images as floats in [0, 1]."""
    ours, tv = _same_weights_pair(device)
    gen = torch.Generator().manual_seed(2)
    rows = []
    for batch in batches:
        images = [
            torch.randint(0, 256, (3, 375, 500), generator=gen, dtype=torch.uint8).to(device)
            for _ in range(batch)
        ]
        floats = [im.float() / 255 for im in images]

        def run_ours(images=images):
            return ours.predict(images)

        def run_theirs(floats=floats):
            return tv(floats)

        with torch.inference_mode():
            t_ours, t_theirs = time_pair(run_ours, run_theirs, repeats=repeats, warmup=warmup, device=device)
        rows.append(Row(f"SSD300 predict, 375x500, batch {batch} (per batch)", t_ours, t_theirs, goal=1.5))
    return rows


def _zoo_model(name: str, num_classes: int = 21):
    """A zoo model with random weights whose class head is tamed as in :func:`_same_weights_pair` (a trained
    detector's few candidates instead of every prior passing the score threshold)."""
    from singleshot.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        for conv in model.head.classification.modules():
            if (
                isinstance(conv, torch.nn.Conv2d)
                and conv.bias is not None
                and conv.out_channels % num_classes == 0
            ):
                conv.weight.mul_(0.25)
                conv.bias.mul_(0.25).view(-1, num_classes)[:, 0] += 7.5
    return model


def bench_runtimes(
    device: torch.device, *, models=None, batches=(1, 8), threads: int = 2, repeats: int = 3, warmup: int = 1
) -> list[Row]:
    """Each zoo model's ``model.predict`` (PyTorch) against its exported graph (:mod:`singleshot.runtime`,
    decoding and NMS inside) in onnxruntime and OpenVINO when installed, on identical weights and images at
    the network size, ``threads`` CPU threads. On a GPU, ``model.predict`` runs there (under float16 autocast,
    as ``--runtime auto`` does) and the graph runtimes on the CPU."""
    from singleshot import runtime
    from singleshot.models import list_models

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for name in models or list_models():
            model = _zoo_model(name)
            torch_engine = runtime.TorchEngine(model.to(device))
            graphs = [
                (r, runtime.load(model.cpu(), runtime=r, threads=threads))
                for r in runtime.installed_runtimes()
                if r != "torch"
            ]
            model.to(device)
            for batch in batches:
                g = torch.Generator().manual_seed(batch)
                images = [
                    torch.randint(0, 256, (3, *model.image_size), generator=g, dtype=torch.uint8)
                    for _ in range(batch)
                ]
                on_device = [im.to(device) for im in images]
                graph_times = {}
                for r, engine in graphs:
                    with torch.inference_mode():
                        t_ours, graph_times[r] = time_pair(
                            lambda t=torch_engine, x=on_device: t.predict(x),
                            lambda engine=engine, x=images: engine.predict(x),
                            repeats=repeats,
                            warmup=warmup,
                            device=device,
                        )
                    label = f"{name} predict, batch {batch}, {threads} threads (per batch)"
                    rows.append(Row(label, t_ours, graph_times[r], goal=1.0, reference=r, images=batch))
                if graph_times and device.type == "cpu":
                    rows.append(
                        _auto_row(
                            model, name, batch, images, dict(graphs), graph_times, threads, repeats, warmup
                        )
                    )
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _auto_row(model, name, batch, images, graphs, graph_times, threads, repeats, warmup) -> Row:
    """The default CPU inference (``runtime.load`` with ``"auto"``: the fastest measured here) against the
    graph runtime that was the faster in this bench."""
    from singleshot import runtime

    auto = runtime.load(model, runtime="auto", threads=threads, batch=batch)
    faster = min(graph_times, key=graph_times.get)
    with torch.inference_mode():
        t_auto, t_faster = time_pair(
            lambda: auto.predict(images),
            lambda: graphs[faster].predict(images),
            repeats=repeats,
            warmup=warmup,
            device=torch.device("cpu"),
        )
    label = f"{name} predict, runtime auto ({auto.runtime}), batch {batch}, {threads} threads (per batch)"
    return Row(label, t_auto, t_faster, goal=1.0, reference=f"faster graph runtime ({faster})", images=batch)


def bench_int8(
    *, name: str = "ssd300_vgg16", threads: int = 2, calibration_images: int = 16, repeats: int = 5
) -> Row:
    """onnxruntime: the int8 graph of ``singleshot export --int8`` (calibrated here on random images, which
    serves speed, not accuracy) against its float32 graph, batch 1, ``threads`` threads. mAP is reported by
    ``export --int8`` itself on a validation split."""
    import tempfile
    from pathlib import Path

    from singleshot import runtime
    from singleshot.export import export_onnx, quantize_int8

    model = _zoo_model(name)
    g = torch.Generator().manual_seed(5)
    batches = [
        torch.randint(0, 256, (1, 3, *model.image_size), generator=g, dtype=torch.uint8).numpy()
        for _ in range(calibration_images)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(model, Path(tmp) / "float32.onnx")
        int8_path = quantize_int8(float_path, Path(tmp) / "int8.onnx", batches)
        t_float = runtime.seconds_per_batch(
            runtime.GraphEngine(float_path, "onnxruntime", threads=threads), repeats=repeats
        )
        t_int8 = runtime.seconds_per_batch(
            runtime.GraphEngine(int8_path, "onnxruntime", threads=threads), repeats=repeats
        )
    return Row(
        f"{name} int8 vs float32 graph, onnxruntime, batch 1, {threads} threads",
        t_int8,
        t_float,
        goal=1.5,
        reference="float32 graph",
    )


def bench_train_step(device: torch.device, *, batch: int = 8, repeats: int = 2, warmup: int = 1) -> Row:
    """One SGD step of SSD300 (forward, loss, backward, step) at 300x300, same starting weights; both sides
    match the targets inside the step (singleshot's trainer does it in the data-loader workers instead).
    Ours runs as its trainer does: channels-last, and on the CPU with the Winograd convolutions
    (``model.winograd``)."""
    ours, tv = _same_weights_pair(device)
    ours.train().to(memory_format=torch.channels_last)  # as singleshot's trainer runs it
    tv.train()
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (batch, 3, 300, 300), generator=gen, dtype=torch.uint8).to(device)
    targets = random_targets(batch, 7, generator=gen, device=device)
    tv_images = list(images.float() / 255)
    tv_targets = [{"boxes": t["boxes"] * 300, "labels": t["labels"]} for t in targets]
    loss_fn = ours.loss_fn().to(device)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-6, momentum=0.9)
    opt_tv = torch.optim.SGD(tv.parameters(), lr=1e-6, momentum=0.9)

    def run_ours():
        x = ours.normalize(images).contiguous(memory_format=torch.channels_last)
        cls_logits, box_deltas = ours(x)
        loss = loss_fn(cls_logits, box_deltas, targets)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def run_theirs():
        losses = tv(tv_images, tv_targets)
        loss = losses["bbox_regression"] + losses["classification"]
        opt_tv.zero_grad(set_to_none=True)
        loss.backward()
        opt_tv.step()

    t_ours, t_theirs = time_pair(run_ours, run_theirs, repeats=repeats, warmup=warmup, device=device)
    return Row(f"SSD300 train step, batch {batch}, 300x300", t_ours, t_theirs, goal=1.2, images=batch)


def bench_data(
    *,
    train_seconds_per_image: float | None = None,
    num_images: int = 256,
    batch: int = 32,
    workers: int = 2,
    repeats: int = 2,
    formats: tuple[str, ...] = ("voc", "coco", "yolo"),
) -> list[Row]:
    """Data loading with the full training augmentation, per format, against the training step it feeds.

    ``num_images`` synthetic 375x500 images per format (``singleshot.data.synthesize`` into a temporary
    folder) are read by a ``DataLoader`` with ``workers`` workers and ``TrainTransform(300)`` (photometric distortion,
    zoom out, IoU crop, flip, resize). Time per image is the median over ``repeats`` epochs, after one epoch
    that starts the (persistent) workers. There is no torchvision counterpart: the reference is the SSD300
    training step's time per image (``train_seconds_per_image``, from :func:`bench_train_step`), so the
    ratio says how many times faster the pipeline delivers images than training consumes them (goal >= 1).
    """
    import tempfile
    from pathlib import Path

    from torch.utils.data import DataLoader

    from singleshot.data import TrainTransform, collate, open_dataset, synthesize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            root = Path(tmp) / fmt
            synthesize(root, num_images, format=fmt, image_size=(375, 500), seed=0, splits=[("train", 1.0)])
            dataset = open_dataset(root, split="train", format=fmt, transform=TrainTransform(300))
            loader = DataLoader(
                dataset,
                batch_size=batch,
                shuffle=True,
                num_workers=workers,
                collate_fn=collate,
                persistent_workers=workers > 0,
            )

            def epoch(loader=loader) -> None:
                for _ in loader:
                    pass

            seconds = time_call(epoch, repeats=repeats, warmup=1, device=torch.device("cpu")) / len(dataset)
            name = f"data loading, {fmt}, TrainTransform(300), {workers} workers (per image)"
            rows.append(
                Row(
                    name,
                    seconds,
                    train_seconds_per_image,
                    goal=1.0,
                    note=f"{1 / seconds:.0f} images/s",
                    reference="SSD300 train step, ours",
                )
            )
            del loader
    return rows


def machine_description(device: torch.device) -> str:
    from singleshot.runtime import cpu_name

    threads = torch.get_num_threads()
    flags = _cpu_flags()
    text = (
        f"{cpu_name()}, "
        + (
            "AVX-512 (VNNI), "
            if "avx512_vnni" in flags
            else "AVX-512, "
            if "avx512f" in flags
            else "no AVX-512, "
        )
        + f"torch {torch.__version__} ({threads} thread{'s' * (threads != 1)})"
        + "".join(f", {name} {version}" for name, version in _runtime_versions())
    )
    if hasattr(os, "getloadavg"):  # other work on the machine slows both sides, unevenly: say how busy it was
        text += f", load average {os.getloadavg()[0]:.1f} at the end"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _runtime_versions() -> list[tuple[str, str]]:
    import importlib.metadata

    found = []
    for name in ("onnxruntime", "openvino"):
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def format_table(rows: list[Row], device: torch.device, *, kept_freed_memory: bool = False) -> str:
    memory = (
        "malloc keeping freed memory (singleshot's command-line setting, for both sides)"
        if kept_freed_memory
        else "default malloc (as a script calling either library)"
    )
    lines = [
        f"Device: {device.type} - {machine_description(device)}; {memory}",
        "",
        "| benchmark | singleshot | reference | speed-up | goal |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:

        def fmt(t):
            return "-" if t is None else (f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s")

        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        goal = (
            "-"
            if r.goal is None
            else f">= {r.goal:g}x"
            + ("" if r.ratio is None else (" met" if r.ratio >= r.goal else " **not met**"))
        )
        name = r.name + (f" ({r.note})" if r.note else "")
        lines.append(f"| {name} | {fmt(r.ours)} | {fmt(r.theirs)} ({r.reference}) | {ratio} | {goal} |")
    return "\n".join(lines)


def write_markdown(table: str, path: str) -> None:
    """Replace the text between the bench markers of ``path`` (creating the file if needed)."""
    block = f"{MARK_START}\n{table}\n{MARK_END}"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            tail = rest.split(MARK_END, 1)[1]
            text = head + block + tail
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\nMeasured by `singleshot bench`.\n\n" + block + "\n"
    write_text_atomic(path, text)


def synthetic_detections(num_images: int, *, num_classes: int = 20, generator: torch.Generator):
    """COCO-like evaluation input: 1-7 objects per 640x480 image of every size class, and detections that
    are jittered copies of them plus false positives, with random scores."""
    predictions, targets = [], []
    scale = torch.tensor([640.0, 480.0, 640.0, 480.0])
    for _ in range(num_images):
        n = int(torch.randint(1, 8, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 0.8
        wh = 0.02 + torch.rand(n, 2, generator=generator) ** 2 * 0.5
        gt = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=1) * scale
        labels = torch.randint(1, num_classes + 1, (n,), generator=generator)
        crowd = torch.rand(n, generator=generator) < 0.05
        k = n + int(torch.randint(0, 10, (1,), generator=generator))
        pick = torch.randint(0, n, (k,), generator=generator)
        jitter = torch.randn(k, 4, generator=generator) * 0.08 * (gt[pick, 2:] - gt[pick, :2]).repeat(1, 2)
        boxes = gt[pick] + jitter
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], dim=1)
        det_labels = torch.where(
            torch.rand(k, generator=generator) < 0.8,
            labels[pick],
            torch.randint(1, num_classes + 1, (k,), generator=generator),
        )
        predictions.append(
            {"boxes": boxes, "scores": torch.rand(k, generator=generator), "labels": det_labels}
        )
        targets.append({"boxes": gt, "labels": labels, "iscrowd": crowd})
    return predictions, targets


def bench_coco(*, num_images: int = 5000, repeats: int = 2, warmup: int = 0) -> Row:
    """COCO mAP with singleshot's vectorised COCOeval vs pycocotools' COCOeval, same input, same numbers."""
    from singleshot.metrics import coco_eval_pycocotools, mean_average_precision

    predictions, targets = synthetic_detections(num_images, generator=torch.Generator().manual_seed(5))
    results = {}

    def ours():
        results["ours"] = mean_average_precision(predictions, targets, metric="coco")

    def theirs():
        results["theirs"] = coco_eval_pycocotools(predictions, targets)

    t_ours, t_theirs = time_pair(ours, theirs, repeats=repeats, warmup=warmup, device=torch.device("cpu"))
    same = results["ours"]["stats"] == results["theirs"]["stats"]
    note = "12 stats identical" if same else "STATS DIFFER"
    return Row(
        f"COCO mAP, {num_images} images", t_ours, t_theirs, goal=1.0, note=note, reference="pycocotools"
    )
