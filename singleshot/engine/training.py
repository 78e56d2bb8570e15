"""The training loop of SSD, read top to bottom in :meth:`Trainer.fit`.

    singleshot train --data data/shapes --out runs/a                      # one process
    torchrun --nproc_per_node 2 -m singleshot train --data data/shapes --out runs/a   # DDP, 2 processes

One epoch: a permutation of the training images drawn from ``(seed, epoch)``, this rank's share of it
(``DistributedDataParallel``: every ``world.size``-th image, padded so all ranks take the same number of
steps), batches of ``batch_size`` images augmented by ``TrainTransform`` and matched to the priors in the
data-loader workers, SGD steps with the learning rate of :class:`WarmupSchedule`, then validation every
``val_every`` epochs. Rank 0 writes ``RUN/last.pt`` after every epoch, ``RUN/best.pt`` whenever the
validation mAP improves, ``RUN/metrics.csv``, ``RUN/curves.png`` and ``RUN/config.json``.

Ctrl-C (SIGINT, or SIGTERM as torchrun sends it) asks the loop to stop after the current step: it saves
``last.pt`` at that step and says how to resume; a second Ctrl-C quits at once. Resuming restores the
model, optimizer, schedule, gradient scaler, the position in the epoch and the random states, and
gives the same weights as a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from singleshot.engine import distributed
from singleshot.engine.config import TrainConfig, default_lr, option_name
from singleshot.engine.distributed import World
from singleshot.engine.evaluation import StopEvaluation, predict_dataset, score
from singleshot.engine.schedule import WarmupSchedule
from singleshot.engine.state import (
    capture_rng,
    epoch_seed,
    restore_rng,
    seed_everything,
    seed_host,
    write_csv,
    write_json,
)
from singleshot.errors import UserError
from singleshot.metrics import format_map

EPOCH_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "loss",
    "loc",
    "conf",
    "images_per_s",
    "epoch_time_s",
    "val_map",
    "val_time_s",
)


# --------------------------------------------------------------------------------------------- data


class _Augmented(Dataset):
    """Training samples: ``(image uint8 Tensor[3, S, S], target with "boxes" relative xyxy and "labels")``.

    Keys are ``(epoch, index)`` pairs; every random choice of the augmentation is seeded by
    ``epoch_seed(seed, epoch, index)``, so a sample does not depend on which worker made it or on where
    an earlier run stopped.
    """

    def __init__(self, dataset, transform, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed_host(epoch_seed(self.seed, epoch, index))
        image, target = self.transform(*self.dataset[index])
        return image, {"boxes": target["boxes"], "labels": target["labels"]}


class _MatchingCollate:
    """Batches of ``(images uint8 Tensor[B, 3, S, S], labels Tensor[B, P], offsets Tensor[B, P, 4])``.

    Matching the ground truth to the priors happens here, in the data-loader workers, once per batch
    (batched matching costs a fraction of per-image calls) and off the training process.
    """

    def __init__(self, encoder) -> None:
        self.encoder = encoder  # a MultiBoxLoss on the CPU: its match() gives the targets of every prior

    def __call__(self, batch):
        images, targets = zip(*batch)
        with torch.no_grad():
            labels, offsets = self.encoder.match(list(targets))
        return torch.stack(images), labels, offsets


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


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C goes to the whole process group: workers keep serving batches while the training process
    # finishes its step and saves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------- loop


@dataclass
class _Step:
    """What one training step needs, built once per run by :meth:`Trainer.fit` for :meth:`Trainer._run_epoch`.

    ``model`` is what the step calls (DistributedDataParallel around ``core`` when distributed), ``core`` the
    SSD itself (normalisation, checkpoints)."""

    model: torch.nn.Module
    core: torch.nn.Module
    loader: DataLoader
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupSchedule
    scaler: torch.amp.GradScaler
    steps_per_epoch: int


@dataclass
class TrainResult:
    """What a call of :meth:`Trainer.fit` did."""

    out: Path
    epochs_done: int
    best_map: float | None
    last_map: float | None
    interrupted: bool
    model: torch.nn.Module
    config: TrainConfig


class Trainer:
    """One training run; build it, then call :meth:`fit`.

    Args:
        config: the run's configuration (see :class:`TrainConfig`); unresolved values are derived here.
        resume: a ``last.pt`` to continue from (its configuration should be the base of ``config``); the
            model is rebuilt from the checkpoint alone, and a model option that contradicts it is refused.
        world: this process's place among DDP ranks (default: one process on ``config.device``).
        on_step: optional ``callable(trainer)`` called after every optimizer step (e.g. to call :meth:`stop`).
        progress: draw progress bars (rank 0 only in any case).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: str | None = None,
        world: World | None = None,
        on_step=None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.resume = resume
        self.world = world or World(device=distributed.resolve_device(config.device))
        self.on_step = on_step
        self.progress = progress and self.world.is_main
        self.stop_requested = False
        self.global_step = 0

    def stop(self) -> None:
        """Ask the loop to save ``last.pt`` and return after the current step."""
        self.stop_requested = True

    # -- setting up --------------------------------------------------------------------------------
    def _open_data(self):
        from singleshot.data import describe_drops, list_splits, open_dataset

        config = self.config
        # Problems stop the run here, before the first step, with the first few of them and a pointer to
        # check-data (open_dataset's message), unless --skip-invalid leaves the broken images out.
        options = {"format": config.format, "skip_invalid": config.skip_invalid, "check_images": "header"}
        val_split = config.val_split
        other_val_data = bool(config.val_data) and val_split != "none"  # not a split of config.data
        if other_val_data:  # a wrong path fails at once, not after reading the training data
            _check_readable(config.val_data, "--val-data")
        train_set = open_dataset(config.data, split=config.train_split, **options)
        val_set = None
        if other_val_data:
            val_set = self._open_val_data(train_set, options)
            val_split = val_set.split
        else:
            if val_split is None:  # the data set's test or val split (or val2017 ...); none: no validation
                splits = [s for s in list_splits(config.data, train_set.format) if s != train_set.split]
                val_split = _evaluation_split(splits) or ""
                if not val_split:
                    self._say(
                        f"{config.data} has no test or val split: training without validation (no best.pt)"
                    )
            if val_split and val_split != "none":
                val_set = open_dataset(config.data, split=val_split, classes=train_set.class_names, **options)
            val_split = val_split or "none"
        self.config = dataclasses.replace(
            config, format=train_set.format, train_split=train_set.split, val_split=val_split
        )
        for dataset in (train_set, val_set):
            note = dataset is not None and describe_drops(dataset)
            if note:
                self._say(note)
        return train_set, val_set

    def _open_val_data(self, train_set, options: dict):
        """The data set ``val_data`` names (its ``val_split``, else its test or val split, else all of it);
        its format is detected (``--format`` is ``data``'s), and its classes must be ``train_set``'s."""
        from singleshot.data import detect_format, list_splits, open_dataset

        config = self.config
        path = Path(config.val_data)
        try:
            format = detect_format(path)
        except UserError:
            raise UserError(
                f"cannot tell the format of --val-data {path}: expected a VOC root (Annotations/, JPEGImages/), "
                "a COCO instances JSON or a YOLO folder (images/, labels/, data.yaml)"
            ) from None
        split = config.val_split
        if split is None:
            splits = list_splits(path, format)
            split = _evaluation_split(splits)
            if splits and split is None:
                raise UserError(
                    f"--val-data {path} has no test or val split (it has: {', '.join(splits)}); "
                    "give --val-split with one of them"
                )
        val_set = open_dataset(path, split=split, **{**options, "format": format})
        _check_same_classes(train_set, val_set, config.data, config.val_data)
        self._say(
            f"validating on {_plural(len(val_set), 'image')} of {path}"
            + (f" (split {split})" if split else "")
        )
        return val_set

    def _resolve(self, model) -> TrainConfig:
        """The configuration with every derived value filled in (what ``config.json`` records)."""
        config = self.config
        device = self.world.device
        cuda = device.type == "cuda"
        global_batch = config.batch_size * self.world.size
        metric = config.metric or ("coco" if config.format == "coco" else "voc07")
        return dataclasses.replace(
            config,
            image_size=config.image_size or int(model.image_size[0]),
            lr=config.lr or default_lr(config.model, global_batch),
            device=str(device),
            amp=cuda if config.amp is None else config.amp and cuda,
            channels_last=True if config.channels_last is None else config.channels_last,
            sync_bn=(cuda and self.world.distributed) if config.sync_bn is None else config.sync_bn,
            metric=metric,
        )

    def _build_model(self, class_names, checkpoint: dict | None):
        """A new model for the configuration, or the model of the checkpoint being resumed.

        A resumed model is rebuilt from the checkpoint alone, as :func:`load_checkpoint` does: from its
        resolved builder arguments (not this version's defaults), its default boxes checked against the
        stored ones, its weights and settings loaded; so a run continues with exactly the model it had.
        """
        from singleshot.models import build_model
        from singleshot.models.checkpoint import model_from_checkpoint

        config = self.config
        if checkpoint is not None:
            if checkpoint["class_names"] != list(class_names):
                raise UserError(
                    f"{self.resume} was trained on other classes than the {len(class_names)} of {config.data}; "
                    "resume with the data the run was started with"
                )
            return model_from_checkpoint(checkpoint, f"checkpoint {self.resume}")
        overrides = dict(config.model_options)
        if config.image_size:
            overrides["image_size"] = config.image_size
        return build_model(config.model, len(class_names) + 1, class_names=list(class_names), **overrides)

    def _check_resume(self, checkpoint: dict) -> None:
        """UserError unless ``checkpoint`` is a run's ``last.pt`` holding the model the configuration asks for."""
        if "optimizer" not in checkpoint or "config" not in checkpoint:
            raise UserError(
                f"{self.resume} holds weights but no training state (best.pt and exported checkpoints do not); "
                "resume from the run's last.pt"
            )
        config, saved = self.config, checkpoint["config"]
        size = checkpoint["preprocessing"]["image_size"]
        options = saved.get("model_options", {})
        contradictions = [
            ("model", config.model != checkpoint["arch"], checkpoint["arch"]),
            ("image_size", config.image_size is not None and [config.image_size] * 2 != size, size[0]),
            ("model_options", config.model_options != options, options),
        ]
        for key, differs, value in contradictions:
            if differs:
                raise UserError(
                    f"{option_name(key)} {getattr(config, key)!r} contradicts {self.resume}, which holds "
                    f"{value!r}; resume without it, or start a new run to change the model"
                )

    # -- the run -----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        from singleshot.data import TrainTransform
        from singleshot.models import DEFAULT_MODEL, read_checkpoint, save_checkpoint

        world = self.world
        device = world.device
        config = self.config
        config.validate()
        checkpoint = read_checkpoint(self.resume) if self.resume else None
        if not config.model:
            model_name = checkpoint["arch"] if checkpoint is not None else DEFAULT_MODEL
            config = self.config = dataclasses.replace(config, model=model_name)
        if checkpoint is not None:
            self._check_resume(checkpoint)
        if config.workers is None:
            config = self.config = dataclasses.replace(config, workers=default_workers())
        out = Path(config.out)

        seed_everything(config.seed)  # the model's initial weights (a resumed model loads its own)
        train_set, val_set = self._open_data()
        class_names = list(train_set.class_names)
        model = self._build_model(class_names, checkpoint)
        config = self.config = self._resolve(model)

        if config.sync_bn and device.type != "cuda" and world.distributed:
            raise UserError(
                "config key 'sync_bn' needs CUDA devices (PyTorch has no SyncBatchNorm on the CPU); "
                "set it to false"
            )
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        encoder = model.loss_fn()  # stays on the CPU, in the workers
        model.winograd = (
            config.winograd
        )  # CPU float32 only: Winograd's 3x3 convolutions (more memory, faster)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        loss_fn = model.loss_fn().to(device)
        core = model
        if world.distributed:
            if config.sync_bn:
                model = core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )

        sampler = EpochBatches(len(train_set), config.batch_size, config.seed, world)
        steps_per_epoch = sampler.steps
        total_steps = steps_per_epoch * config.epochs
        optimizer = torch.optim.SGD(
            _param_groups(core, config.weight_decay), lr=config.lr, momentum=config.momentum
        )
        schedule = WarmupSchedule(
            optimizer,
            config.lr,
            total_steps,
            schedule=config.schedule,
            warmup_steps=min(round(config.warmup_epochs * steps_per_epoch), total_steps),
            warmup_factor=config.warmup_factor,
            milestones=[round(m * total_steps) for m in config.milestones],
            gamma=config.gamma,
            final_factor=config.final_lr_factor,
        )
        scaler = torch.amp.GradScaler(device.type, enabled=config.amp)

        # Where to start, and what the run already recorded.
        start_epoch, start_step = 0, 0
        history = {"epochs": [], "steps": []}
        best_map, partial = None, None
        if checkpoint is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            schedule.load_state_dict(checkpoint["schedule"])
            scaler.load_state_dict(checkpoint["scaler"])
            start_epoch, start_step = checkpoint["epoch"], checkpoint["step"]
            history = checkpoint["history"]
            best_map = checkpoint.get("best_map")
            partial = checkpoint.get("partial")
            restore_rng(checkpoint["rng"])
            if start_epoch >= config.epochs:
                raise UserError(
                    f"{self.resume} already finished {_plural(start_epoch, 'epoch')}; "
                    "give --epochs larger than that "
                    "to train further"
                )
        self.global_step = schedule.last_step

        loader = DataLoader(
            _Augmented(
                train_set, TrainTransform(config.image_size, mean=core.mean, **config.augment), config.seed
            ),
            batch_sampler=sampler,
            collate_fn=_MatchingCollate(encoder),
            num_workers=config.workers,
            pin_memory=device.type == "cuda",
            worker_init_fn=_ignore_sigint,
            persistent_workers=config.workers > 0,
        )

        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", config.to_dict())
            self._say(
                f"training {config.model} ({sum(p.numel() for p in core.parameters()) / 1e6:.2f} M "
                f"parameters) on {_plural(len(train_set), 'image')} of {len(class_names)} "
                f"class{'es' if len(class_names) != 1 else ''} for "
                f"{_plural(config.epochs, 'epoch')} of {_plural(steps_per_epoch, 'step')}, "
                f"{world.size} x batch {config.batch_size}, lr {config.lr:g}, "
                f"{device}{', AMP' if config.amp else ''}; writing to {out}"
            )
            if len(train_set) < config.batch_size * world.size:  # warm-up is counted in steps
                warm = schedule.kwargs["warmup_steps"]
                self._say(
                    f"{_plural(len(train_set), 'training image')} < batch {config.batch_size * world.size}: "
                    f"an epoch is one step, so warm-up covers the first {_plural(warm, 'epoch')}"
                )

        def save_last(epoch: int, step: int, partial_state=None) -> None:
            self._stopped_at = (epoch, step)
            if not world.is_main:
                return
            save_checkpoint(
                out / "last.pt",
                core,
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                scaler=scaler.state_dict(),
                epoch=epoch,
                step=step,
                partial=partial_state,
                rng=capture_rng(),
                history=history,
                best_map=best_map,
                config=config.to_dict(),
            )

        run = _Step(model, core, loader, loss_fn, optimizer, schedule, scaler, steps_per_epoch)
        last_map = None
        interrupted = False
        with _stop_on_signals(self), _workers_stopped_after(loader):
            for epoch in range(start_epoch, config.epochs):
                skip = start_step if epoch == start_epoch else 0
                sums = torch.zeros(3, device=device)  # loss, loc, conf of this epoch, summed over steps
                seconds = 0.0
                if partial is not None and epoch == start_epoch:
                    sums += torch.tensor(partial["sums"], device=device)
                    seconds = partial["seconds"]
                steps_done, stopped = skip, False
                if skip < steps_per_epoch:
                    sampler.set_epoch(epoch, skip)
                    model.train()
                    steps_done, seconds, stopped = self._run_epoch(
                        run, sums, history, epoch=epoch, skip=skip, seconds=seconds
                    )
                if stopped:
                    interrupted = True
                    save_last(epoch, steps_done, {"sums": sums.tolist(), "seconds": seconds})
                    break

                # The end of an epoch: validation, records, checkpoints.
                distributed.average_batch_norm_statistics(core, world)
                val_map, val_seconds = None, None
                if val_set is not None and (
                    (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
                ):
                    began = time.perf_counter()
                    try:
                        val_map = self._validate(core, val_set, class_names)
                    except StopEvaluation:
                        interrupted = True
                        save_last(epoch, steps_done, {"sums": sums.tolist(), "seconds": seconds})
                        break
                    val_seconds = time.perf_counter() - began
                    last_map = val_map
                means = (sums / steps_per_epoch).tolist()
                images = steps_per_epoch * config.batch_size * world.size
                history["epochs"].append(
                    {
                        "epoch": epoch + 1,
                        "step": schedule.last_step,
                        "lr": optimizer.param_groups[0]["lr"],
                        "loss": means[0],
                        "loc": means[1],
                        "conf": means[2],
                        "images_per_s": images / max(seconds, 1e-9),
                        "epoch_time_s": seconds,
                        "val_map": val_map,
                        "val_time_s": val_seconds,
                    }
                )
                improved = val_map is not None and (best_map is None or val_map > best_map)
                if improved:
                    best_map = val_map
                save_last(epoch + 1, 0)
                if world.is_main:
                    if improved:
                        save_checkpoint(
                            out / "best.pt",
                            core,
                            epoch=epoch + 1,
                            val_map=val_map,
                            metric=config.metric,
                            config=config.to_dict(),
                        )
                    self._write_records(out, history, config)
                    if val_map is not None:
                        self._say(
                            f"epoch {epoch + 1}/{config.epochs}: validation mAP ({config.metric}) "
                            f"{format_map(val_map)}, best {format_map(best_map)}"
                        )
                if self._should_stop(True) and epoch + 1 < config.epochs:
                    interrupted = True
                    break

        if world.is_main:
            self._write_records(out, history, config)
            if interrupted:
                self._say(
                    f"stopped in epoch {self._stopped_at[0] + 1}/{config.epochs} after step "
                    f"{self._stopped_at[1]}/{steps_per_epoch}; saved {out / 'last.pt'}; continue with: "
                    f"singleshot train --resume {out / 'last.pt'}"
                )
        distributed.barrier(world)
        epochs_done = len(history["epochs"])
        return TrainResult(out, epochs_done, best_map, last_map, interrupted, core, config)

    def _run_epoch(
        self, run: _Step, sums: torch.Tensor, history: dict, *, epoch: int, skip: int, seconds: float
    ):
        """Train one epoch (from batch ``skip``), adding the loss terms to ``sums`` and the logged steps to
        ``history``; returns ``(steps done, seconds spent, stopped early)``."""
        config, world, device = self.config, self.world, self.world.device
        model, core, loss_fn, optimizer, schedule, scaler = (
            run.model,
            run.core,
            run.loss_fn,
            run.optimizer,
            run.schedule,
            run.scaler,
        )
        steps_per_epoch = run.steps_per_epoch
        bar = tqdm(
            total=steps_per_epoch,
            initial=skip,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
            file=sys.stderr,
        )
        window = torch.zeros(3, device=device)  # sums since the last read of the losses
        window_steps, window_began = 0, time.perf_counter()
        began = time.perf_counter()
        step, stopped = skip, False
        try:
            for images, labels, offsets in run.loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                offsets = offsets.to(device, non_blocking=True)
                lr = schedule.step()
                with torch.autocast(device.type, dtype=torch.float16, enabled=config.amp):
                    x = core.normalize(images)
                    if config.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    cls_logits, box_deltas = model(x)
                losses = loss_fn.from_matched(cls_logits, box_deltas, labels, offsets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()

                terms = torch.stack([losses["loss"], losses["loc"], losses["conf"]]).detach()
                sums += terms
                window += terms
                window_steps += 1
                step += 1
                self.global_step += 1
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self)
                read = window_steps >= config.log_every or step == steps_per_epoch
                if read:  # the one host-device synchronisation every log_every steps
                    loss, loc, conf = (window / window_steps).tolist()
                    if not math.isfinite(loss):
                        raise UserError(
                            f"training diverged: the loss became {loss} at epoch {epoch + 1}, step {step}; "
                            f"lower the learning rate (--lr, now {config.lr:g})"
                        )
                    now = time.perf_counter()
                    speed = window_steps * images.shape[0] * world.size / max(now - window_began, 1e-9)
                    history["steps"].append(
                        {
                            "epoch": epoch + step / steps_per_epoch,
                            "loss": loss,
                            "loc": loc,
                            "conf": conf,
                            "lr": lr,
                        }
                    )
                    bar.set_postfix_str(
                        f"loss {loss:.3f} (loc {loc:.3f}, conf {conf:.3f}) lr {lr:.2e} {speed:.1f} img/s",
                        refresh=False,
                    )
                    window.zero_()
                    window_steps, window_began = 0, now
                if self._should_stop(read):
                    stopped = True
                    break
        finally:
            bar.close()
        return step, seconds + time.perf_counter() - began, stopped

    def _should_stop(self, synchronised_point: bool) -> bool:
        """All ranks agree to stop at the same step: they compare their flags when they synchronise anyway."""
        if not self.world.distributed:
            return self.stop_requested
        if not synchronised_point:
            return False
        flag = torch.tensor([float(self.stop_requested)], device=self.world.device)
        self.stop_requested = bool(distributed.all_reduce_mean(flag, self.world).item() > 0)
        return self.stop_requested

    def _validate(self, core, val_set, class_names) -> float | None:
        config, world = self.config, self.world
        predictions, targets = predict_dataset(
            core,
            val_set,
            batch_size=config.batch_size,
            workers=config.workers,
            world=world,
            amp=config.amp,
            channels_last=config.channels_last,
            progress=self.progress,
            desc="validate",
            should_stop=None if world.distributed else (lambda: self.stop_requested),
        )
        if not world.is_main:
            return None
        value = float(score(predictions, targets, val_set, config.metric, class_names)["map"])
        return None if math.isnan(value) else value  # NaN: the split has no ground truth to score

    def _write_records(self, out: Path, history: dict, config: TrainConfig) -> None:
        from singleshot.curves import plot_training_curves

        write_csv(out / "metrics.csv", history["epochs"], EPOCH_COLUMNS)
        plot_training_curves(
            out / "curves.png",
            history["steps"],
            history["epochs"],
            title=f"{config.model} on {'/'.join(Path(config.data).parts[-2:])}",
        )

    def _say(self, text: str) -> None:
        if self.world.is_main:
            tqdm.write(text, file=sys.stderr)


def _evaluation_split(splits: list[str]) -> str | None:
    """The split to validate on: the first of ``splits`` starting with test, then val ... (val2017 counts)."""
    from singleshot.data.dataset import EVAL_SPLITS

    return next((s for name in EVAL_SPLITS for s in splits if s.startswith(name)), None)


def _check_readable(path: str, option: str) -> None:
    """UserError naming ``option`` unless ``path`` (a data set's folder or annotation file) can be read."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{option} {p} does not exist; give a VOC root, COCO instances JSON or YOLO folder")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise UserError(f"{option} {p} cannot be read (permission denied); make it readable or give another")


def _check_same_classes(train_set, val_set, data: str, val_data: str) -> None:
    """UserError unless ``val_set`` has ``train_set``'s classes: the same names in the same order and, when
    both are COCO data, the same category ids."""
    train, val = list(train_set.class_names), list(val_set.class_names)
    extra = [n for n in val if n not in train]
    missing = [n for n in train if n not in val]
    if extra and missing:
        what = f"it has {_listed(extra)} but not {_listed(missing)}"
    elif extra:
        what = f"it also has {_listed(extra)}"
    elif missing:
        what = f"it lacks {_listed(missing)}"
    elif val != train:
        what = f"it lists them in another order ({', '.join(val)} instead of {', '.join(train)})"
    elif (
        train_set.format == val_set.format == "coco"
        and train_set.coco_category_ids != val_set.coco_category_ids
    ):
        name, val_id, train_id = next(
            (n, v, t)
            for n, v, t in zip(train, val_set.coco_category_ids, train_set.coco_category_ids)
            if v != t
        )
        what = f"it gives {name!r} category id {val_id}, --data gives it {train_id}"
    else:
        return
    hint = (
        " (a VOC root without classes.txt takes its classes from its annotations)"
        if val_set.format == "voc"
        else ""
    )
    raise UserError(
        f"--val-data {val_data} does not have the classes of --data {data}: {what}; validate on data with "
        f"the same classes{hint}"
    )


def _listed(names: list[str], shown: int = 5) -> str:
    """``class 'a'`` or ``classes 'a', 'b'`` (the first ``shown`` names, then how many more)."""
    text = ", ".join(repr(n) for n in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"class{'es' if len(names) > 1 else ''} {text}{more}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only; biases and normalisation parameters (1-d) get none, as in Caffe's SSD."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_workers() -> int:
    """Data-loader workers when not given: one per spare core, at most 4 (0 on a single core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


@contextlib.contextmanager
def _workers_stopped_after(loader: DataLoader):
    """Stop ``loader``'s persistent worker processes on leaving, error or not, rather than whenever the
    loader is garbage-collected (a traceback that holds the training frame would keep them alive)."""
    try:
        yield
    finally:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """While training, the first SIGINT/SIGTERM asks ``trainer`` to stop; the next one acts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, _frame):
        signal.signal(signum, previous[signum])
        trainer.stop()
        trainer._say("stopping after this step to save last.pt (Ctrl-C again to quit at once)")

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, previous[s])
