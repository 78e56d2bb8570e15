"""What feeds the training steps: augmented samples keyed by ``(epoch, index)``, the epoch's batches of
this rank, matching to the priors in the workers, and the ``DataLoader`` that puts them together.

Every random choice of a sample is seeded by ``epoch_seed(seed, epoch, index)`` and the order of an epoch by
``epoch_seed(seed, epoch)`` (see :mod:`singleshot.engine.state`), so the batches of a run depend neither on
the number of workers nor on where an earlier run stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from singleshot.engine import distributed
from singleshot.engine.distributed import World
from singleshot.engine.state import epoch_seed, seed_host
from singleshot.errors import UserError


class AugmentedSamples(Dataset):
    """Training samples: ``(image uint8 Tensor[3, S, S], target with "boxes" relative xyxy and "labels")``.

    Keys are ``(epoch, index)`` pairs; every random choice of the augmentation is seeded by
    ``epoch_seed(seed, epoch, index)``, so a sample does not depend on which worker made it or on where
    an earlier run stopped.

    With ``skip_invalid``, an image that fails to decode (a UserError; the header check when the data set
    opened passed) is replaced by the next index that decodes, augmented as that index would be; the
    target's ``"skipped"`` lists the errors, for the training process to report.
    """

    def __init__(self, dataset, transform, seed: int, skip_invalid: bool = False) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.skip_invalid = skip_invalid

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        skipped = []
        for _ in range(len(self.dataset)):
            try:
                seed_host(epoch_seed(self.seed, epoch, index))
                image, target = self.transform(*self.dataset[index])
                break
            except UserError as error:
                if not self.skip_invalid:
                    raise
                skipped.append(str(error))
                index = (index + 1) % len(self.dataset)
        else:
            raise UserError(
                f"none of the {len(self.dataset)} training images decodes; see singleshot check-data"
            )
        return image, {"boxes": target["boxes"], "labels": target["labels"], "skipped": skipped}


class MatchingCollate:
    """Batches of ``(images uint8 Tensor[B, 3, S, S], labels Tensor[B, P], offsets Tensor[B, P, 4],
    skipped)``, ``skipped`` the errors of the images replaced in the batch (see :class:`AugmentedSamples`).

    Matching the ground truth to the priors happens here, in the data-loader workers, once per batch
    (batched matching costs a fraction of per-image calls) and off the training process.
    """

    def __init__(self, encoder) -> None:
        self.encoder = encoder  # a MultiBoxLoss on the CPU: its match() gives the targets of every prior

    def __call__(self, batch):
        images, targets = zip(*batch)
        with torch.no_grad():
            labels, offsets = self.encoder.match(list(targets))
        skipped = [error for target in targets for error in target.get("skipped", ())]
        return torch.stack(images), labels, offsets, skipped


class EpochBatches(Sampler):
    """This rank's batches of one epoch, as lists of ``(epoch, index)`` keys.

    The permutation comes from ``epoch_seed(seed, epoch)``; ranks share it out (:func:`distributed.shard`);
    every epoch has the same :attr:`steps` (the last incomplete batch is dropped unless it is the only one).
    :meth:`set_epoch` picks the epoch and how many of its batches were already done (resume).
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, world: World) -> None:
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.world = world
        share = len(distributed.shard(range(num_images), world, pad=True))
        self.steps = max(1, share // batch_size)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.steps - self.skip

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_images, generator=generator).tolist()
        mine = distributed.shard(order, self.world, pad=True)
        for step in range(self.skip, self.steps):
            yield [(self.epoch, i) for i in mine[step * self.batch_size : (step + 1) * self.batch_size]]


def ignore_stop_signals(_worker_id: int) -> None:
    """A ``worker_init_fn``: the worker ignores SIGINT and SIGTERM.

    Ctrl-C, ``timeout``, batch schedulers and ``kill -- -PGID`` signal the whole process group: the workers
    keep serving batches while the training process finishes its step and saves ``last.pt``; they end when
    the loader shuts them down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset,
    transform,
    encoder,
    sampler: EpochBatches,
    *,
    seed: int,
    workers: int,
    pin_memory: bool,
    skip_invalid: bool = False,
) -> DataLoader:
    """The training ``DataLoader``: ``sampler``'s batches of ``dataset`` augmented by ``transform`` and
    matched to the priors by ``encoder`` (a :class:`MultiBoxLoss` on the CPU) in ``workers`` processes,
    which keep running between epochs and ignore Ctrl-C."""
    return DataLoader(
        AugmentedSamples(dataset, transform, seed, skip_invalid),
        batch_sampler=sampler,
        collate_fn=MatchingCollate(encoder),
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals,
        persistent_workers=workers > 0,
    )


def default_workers(training_on: str | None = None) -> int:
    """Data-loader workers when not given: one per spare core, at most 4; none on a single core, and none
    when ``training_on`` is ``"cpu"`` and it has 2 cores or fewer (evaluation passes nothing).

    On 2 cores the step's two threads and one worker process contend for the cores: the trainer of
    ``ssd_small`` made 54.5 images/s with a worker and 66.7 without on 240-400 px images (decoding and
    augmenting cost 4.3 ms an image in the training process), 50.2 against 52.6 on 360-640 px ones.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if training_on == "cpu" and cores <= 2:
        return 0
    return max(0, min(4, cores - 1))


@contextlib.contextmanager
def workers_stopped_after(loader: DataLoader):
    """Stop ``loader``'s persistent worker processes on leaving, error or not, rather than whenever the
    loader is garbage-collected (a traceback that holds the training frame would keep them alive)."""
    try:
        yield
    finally:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None
