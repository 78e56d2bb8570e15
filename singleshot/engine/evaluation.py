"""The evaluation loop: detections for every image of a data set, gathered over ranks, then mAP.

    predictions, targets = predict_dataset(model, dataset)          # in dataset order, pixels
    result = mean_average_precision(predictions, targets, metric="voc07", class_names=dataset.class_names)

Images go through ``EvalTransform`` (a resize to the model's input size) in data-loader workers, a batch at a
time through the network, and ``postprocess`` reports boxes in each image's own pixels. Under
DistributedDataParallel every rank takes every ``world.size``-th image and ``all_gather_object`` brings the
detections together.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from singleshot.engine.distributed import World, all_gather_objects, shard
from singleshot.engine.loader import ignore_stop_signals
from singleshot.engine.precision import amp_dtype
from singleshot.postprocess import postprocess

TARGET_KEYS = ("boxes", "labels", "difficult", "iscrowd", "image_id")


class EvalSet(Dataset):
    """``(resized image, target in original pixels, index)`` for each image of ``dataset``."""

    def __init__(self, dataset, transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        height, width = image.shape[-2:]
        resized, _ = self.transform(image, target)
        kept = {k: target[k] for k in TARGET_KEYS if k in target}
        kept["orig_size"] = (int(height), int(width))
        return resized, kept, index


def collate_eval(batch):
    """``(Tensor[B, 3, H, W], list of targets, list of dataset indices)`` of a batch of :class:`EvalSet` items."""
    images, targets, indices = zip(*batch)
    return torch.stack(images), list(targets), list(indices)


def detect_batch(model, images: Tensor, image_sizes, *, amp: bool = False, channels_last: bool = False):
    """Detections of a batch of equally sized images.

    Args:
        model: an SSD (not wrapped in DistributedDataParallel), in eval mode.
        images: Tensor[B, 3, S_h, S_w] uint8 (or float in [0, 1]) at the network's input size.
        image_sizes: B pairs ``(h, w)``: the pixel size each image's boxes are reported in.

    Returns:
        B dicts ``{"boxes" Tensor[K, 4] xyxy pixels, "scores", "labels"}`` on the model's device.
    """
    x = model.normalize(images)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=amp):
        cls_logits, box_deltas = model.infer(x)  # on the CPU in float32 the fast network, else model(x)
    size = tuple(images.shape[-2:])
    priors = model.priors if size == tuple(model.image_size) else model.priors_for(size)
    return postprocess(
        cls_logits.float(),
        box_deltas.float(),
        priors.to(cls_logits.device),
        image_sizes,
        **model.postprocess_settings(),
    )


@torch.inference_mode()
def predict_dataset(
    model,
    dataset,
    *,
    batch_size: int = 16,
    workers: int = 0,
    world: World | None = None,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "evaluate",
    should_stop=None,
) -> tuple[list[dict], list[dict]]:
    """Run ``model`` over every image of ``dataset``.

    Args:
        model: an SSD (unwrapped); it is put in eval mode and back to its previous mode afterwards.
        dataset: a ``DetectionDataset`` (``open_dataset``).
        world: this process's place among ranks; each rank predicts its share, all get everything.
        should_stop: optional callable polled between batches; when it returns True the loop ends early
            and :class:`StopEvaluation` is raised.

    Returns:
        ``(predictions, targets)`` in dataset order: predictions ``{"boxes" xyxy pixels, "scores",
        "labels"}`` and targets ``{"boxes", "labels", "difficult", "iscrowd", "image_id", "orig_size"}``,
        all on the CPU.
    """
    from singleshot.data import EvalTransform

    world = world or World()
    device = next(model.parameters()).device
    loader = DataLoader(
        EvalSet(dataset, EvalTransform(model.image_size)),
        batch_size=batch_size,
        sampler=shard(range(len(dataset)), world, pad=False),
        collate_fn=collate_eval,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,  # a signal to the process group stops the caller, not them
    )
    was_training = model.training
    model.eval()
    mine = []
    try:
        for images, targets, indices in tqdm(
            loader,
            desc=desc,
            unit="batch",
            leave=False,
            disable=not (progress and world.is_main),
            dynamic_ncols=True,
        ):
            if should_stop is not None and should_stop():
                raise StopEvaluation
            images = images.to(device, non_blocking=True)
            sizes = [t["orig_size"] for t in targets]
            detections = detect_batch(model, images, sizes, amp=amp, channels_last=channels_last)
            for index, det, target in zip(indices, detections, targets):
                mine.append((index, {k: v.cpu() for k, v in det.items()}, target))
    finally:
        model.train(was_training)
    everything = [item for part in all_gather_objects(mine, world) for item in part]
    everything.sort(key=lambda item: item[0])
    return [item[1] for item in everything], [item[2] for item in everything]


class StopEvaluation(Exception):
    """Evaluation was asked to stop (Ctrl-C during training's validation)."""


def score(predictions: list[dict], targets: list[dict], dataset, metric: str, class_names) -> dict:
    """``mean_average_precision`` of detections on ``dataset``; for COCO data and metric the data set's own
    annotation file supplies the ground truth (its areas, crowd regions and ids), as pycocotools would."""
    from singleshot.metrics import mean_average_precision

    coco_gt = getattr(dataset, "annotation_file", None) if metric == "coco" else None
    return mean_average_precision(
        predictions, targets, metric=metric, class_names=class_names, coco_gt=coco_gt
    )
