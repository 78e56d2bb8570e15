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

The batches come from :mod:`singleshot.engine.loader`; where the run stands (epoch, step, history, best mAP,
the partial sums of an epoch) is a :class:`~singleshot.engine.run_state.RunState`, saved in ``last.pt``; the
data sets are chosen by :mod:`singleshot.data.policy`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from singleshot.engine import distributed, run_lock
from singleshot.engine.config import OPTIMIZERS, TrainConfig, default_lr, default_optimizer, option_name
from singleshot.engine.distributed import World
from singleshot.engine.ema import WeightAverage, run_average
from singleshot.engine.evaluation import StopEvaluation, predict_dataset, score
from singleshot.engine.freeze import freeze, hold_norms
from singleshot.engine.loader import (
    EpochBatches,
    default_workers,
    make_loader,
    workers_stopped_after,
)
from singleshot.engine.precision import amp_dtype, cpu_has_bfloat16
from singleshot.engine.recipe import BUDGET_EPOCH, adapt_config, epochs_in_budget, validation_interval
from singleshot.engine.run_state import LossTerms, RunState
from singleshot.engine.schedule import WarmupSchedule
from singleshot.engine.state import capture_rng, restore_rng, seed_everything, write_csv, write_json
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


@dataclass
class _Run:
    """What the steps of a run need, built once by :meth:`Trainer._set_up`.

    ``model`` is what a step calls (DistributedDataParallel around ``core`` when distributed), ``core`` the
    SSD itself (normalisation, checkpoints)."""

    model: torch.nn.Module
    core: torch.nn.Module
    loader: DataLoader
    sampler: EpochBatches
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupSchedule
    scaler: torch.amp.GradScaler
    ema: WeightAverage | None = None  # --ema: what validation and best.pt use
    frozen: list = dataclasses.field(default_factory=list)  # --freeze: the parts that keep their weights

    @property
    def validated(self) -> torch.nn.Module:
        """The model validation scores and ``best.pt`` holds: the weight average with --ema, else ``core``."""
        return self.core if self.ema is None else self.ema.module

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps


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
        progress: draw progress bars when stderr is a terminal (rank 0 only in any case); without them,
            a plain line every ``log_every`` steps and one per epoch.
        overwrite: replace a run already in ``config.out`` (else refused; resuming it is not overwriting).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: str | None = None,
        world: World | None = None,
        on_step=None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self.resume = resume
        self.world = world or World(device=distributed.resolve_device(config.device))
        self.on_step = on_step
        self.progress = progress and self.world.is_main
        # Bars need a terminal; elsewhere (a file, CI, nohup), or without progress, plain log lines.
        self.bars = self.progress and sys.stderr.isatty()
        self.overwrite = overwrite
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.skipped: set[str] = set()  # the decoding errors reported
        self.global_step = 0
        self._source = None  # the model of --weights, which a new run starts from

    def stop(self) -> None:
        """Ask the loop to save ``last.pt`` and return after the current step."""
        self.stop_requested = True

    # -- the run -----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train (or continue) the run; returns what it did. See the module docstring.

        The run folder is locked while it runs (:mod:`~singleshot.engine.run_lock`); restarted by torchrun,
        the run continues from the ``last.pt`` it wrote before.
        """
        with run_lock.lock_run_folder(self.config.out, self.world):
            restart = run_lock.resume_after_restart(self.config.out, self.resume, self.world, self._say)
            if restart.resume != self.resume:  # the checkpoint holds the weights --weights gave
                self.resume, self.config = restart.resume, dataclasses.replace(self.config, weights=None)
            return self._fit(own_files=restart.own_files)

    def _fit(self, own_files: bool) -> TrainResult:
        if not (self.overwrite or own_files):  # every rank looks before any writes: all see the same folder
            _refuse_existing_run(self.config.out, self.resume)
        distributed.barrier(self.world)
        checkpoint = self._prepare()
        seed_everything(self.config.seed)  # the model's initial weights (a resumed model loads its own)
        data = self._open_data()
        if checkpoint is None:  # what the user left open, chosen from the data (a resumed run has it all)
            self.config = adapt_config(self.config, data.train, self._say)
        model = self._build_model(data.train, checkpoint)
        self.config = self._resolve(model)
        run, state = self._set_up(model, data.train, checkpoint)
        self._open_run_folder(run, data.train)

        interrupted = False
        with _stop_on_signals(self), workers_stopped_after(run.loader):
            while not interrupted and state.epoch < self.config.epochs:
                interrupted = self._train_epoch(run, state) or self._end_epoch(run, state, data)
        return self._finish(run, state, interrupted)

    # -- setting up --------------------------------------------------------------------------------
    def _prepare(self) -> dict | None:
        """Check the configuration, fill in the model and workers when not given; the checkpoint resumed."""
        from singleshot.models import DEFAULT_MODEL, read_checkpoint

        config = self.config
        config.validate()
        checkpoint = read_checkpoint(self.resume) if self.resume else None
        if config.weights:
            config = self.config = self._take_weights(config)
        if not config.model:
            model_name = checkpoint["arch"] if checkpoint is not None else DEFAULT_MODEL
            config = self.config = dataclasses.replace(config, model=model_name)
        if checkpoint is not None:
            self._check_resume(checkpoint)
            config = self.config = _left_open_from(config, checkpoint["config"])
        if config.workers is None:
            self.config = dataclasses.replace(config, workers=default_workers(self.world.device.type))
        return checkpoint

    def _open_data(self):
        """The training and validation sets (:func:`singleshot.data.policy.open_training_data`); the
        configuration records the format and splits chosen."""
        from singleshot.data.policy import open_training_data

        config = self.config
        data = open_training_data(
            data=config.data,
            format=config.format,
            train_split=config.train_split,
            val_split=config.val_split,
            val_data=config.val_data,
            skip_invalid=config.skip_invalid,
            say=self._say,
        )
        self.config = dataclasses.replace(
            config, format=data.format, train_split=data.train_split, val_split=data.val_split
        )
        return data

    def _set_up(self, model, train_set, checkpoint: dict | None) -> tuple[_Run, RunState]:
        """The model on its device (in DDP when distributed), optimizer, schedule, scaler and loader; and
        where the run stands (the checkpoint's state when resuming)."""
        from singleshot.data import TrainTransform

        config, device = self.config, self.world.device
        encoder = model.loss_fn()  # stays on the CPU, in the workers
        frozen = freeze(model, config.freeze) if config.freeze else []  # before DDP sees the parameters
        model, core, loss_fn = self._place_model(model)
        sampler = EpochBatches(len(train_set), config.batch_size, config.seed, self.world)
        optimizer, schedule = self._optimizer(core, sampler.steps)
        # float16 needs its gradients scaled; the CPU's bfloat16 has float32's range and does not
        scaler = torch.amp.GradScaler(device.type, enabled=config.amp and amp_dtype(device) == torch.float16)
        state = RunState()
        if checkpoint is not None:
            state = self._restore(checkpoint, optimizer, schedule, scaler)
        self.global_step = schedule.last_step
        loader = make_loader(
            train_set,
            TrainTransform(config.image_size, mean=core.mean, **config.augment),
            encoder,
            sampler,
            seed=config.seed,
            workers=config.workers,
            pin_memory=device.type == "cuda",
            skip_invalid=config.skip_invalid,
        )
        ema = run_average(core, config.ema, checkpoint)
        return _Run(model, core, loader, sampler, loss_fn, optimizer, schedule, scaler, ema, frozen), state

    def _place_model(self, model):
        """``(what a step calls, the SSD, its loss on the device)``: ``model`` on the device, in DDP (and
        SyncBatchNorm) when distributed."""
        config, world, device = self.config, self.world, self.world.device
        if config.sync_bn and device.type != "cuda" and world.distributed:
            raise UserError(
                "config key 'sync_bn' needs CUDA devices (PyTorch has no SyncBatchNorm on the CPU); "
                "set it to false"
            )
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
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
        return model, core, loss_fn

    def _optimizer(self, core, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, WarmupSchedule]:
        """SGD with momentum or AdamW (no weight decay on biases and norms) and its warmup schedule."""
        config = self.config
        total_steps = steps_per_epoch * config.epochs
        groups = _param_groups(core, config.weight_decay)
        if config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
        else:
            optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
        schedule = WarmupSchedule(
            optimizer,
            config.lr,
            total_steps,
            schedule=config.schedule,
            warmup_steps=min(round(config.warmup_epochs * steps_per_epoch), total_steps),
            warmup_factor=config.warmup_factor,
            milestones=_milestone_steps(config.milestones, total_steps),
            gamma=config.gamma,
            final_factor=config.final_lr_factor,
        )
        return optimizer, schedule

    def _restore(self, checkpoint: dict, optimizer, schedule, scaler) -> RunState:
        """Load the training state of ``checkpoint`` (a ``last.pt``) and the random states; where it stood."""
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = RunState.from_checkpoint(checkpoint, self.world.device)
        restore_rng(checkpoint["rng"])
        if state.epoch >= self.config.epochs:
            raise UserError(
                f"{self.resume} already finished {_plural(state.epoch, 'epoch')}; give --epochs larger than that "
                "to train further"
            )
        return state

    def _open_run_folder(self, run: _Run, train_set) -> None:
        """Rank 0 makes the run folder, writes ``config.json`` and says what the run does."""
        config, world = self.config, self.world
        if not world.is_main:
            return
        self._write_config()
        self._say(
            f"training {config.model} ({sum(p.numel() for p in run.core.parameters()) / 1e6:.2f} M "
            f"parameters) on {_plural(len(train_set), 'image')} of {len(train_set.class_names)} "
            f"class{'es' if len(train_set.class_names) != 1 else ''} for "
            f"{_plural(config.epochs, 'epoch')} of {_plural(run.steps_per_epoch, 'step')}, "
            f"{world.size} x batch {config.batch_size}, {_OPTIMIZER_NAMES.get(config.optimizer, config.optimizer)} lr {config.lr:g}, "
            f"{world.device}{_precision(config.amp, world.device)}; writing to {config.out}"
        )
        if run.frozen:
            fixed = sum(p.numel() for part in run.frozen for p in part.parameters())
            self._say(
                f"frozen: {', '.join(config.freeze)} ({fixed / 1e6:.2f} M parameters keep their weights)"
            )
            if not (self.resume or config.weights or config.backbone_weights not in (None, "none")):
                self._say(
                    f"--freeze {','.join(config.freeze)}: the model starts from random weights (no "
                    "--weights, no --backbone-weights), so the frozen parts stay random"
                )
        if config.amp and world.device.type == "cpu" and not cpu_has_bfloat16():
            self._say(
                "AMP on this CPU: it has no native bfloat16 (AVX-512 BF16 or AMX), so mixed precision runs "
                "slower than float32; leave --amp out"
            )
        if len(train_set) < config.batch_size * world.size:  # warm-up is counted in steps
            warm = run.schedule.kwargs["warmup_steps"]
            self._say(
                f"{_plural(len(train_set), 'training image')} < batch {config.batch_size * world.size}: "
                f"an epoch is one step, so warm-up covers the first {_plural(warm, 'epoch')}"
            )

    def _resolve(self, model) -> TrainConfig:
        """The configuration with every derived value filled in (what ``config.json`` records)."""
        config = self.config
        device = self.world.device
        cuda = device.type == "cuda"
        global_batch = config.batch_size * self.world.size
        metric = config.metric or ("coco" if config.format == "coco" else "voc07")
        optimizer = config.optimizer or default_optimizer(config.model)
        return dataclasses.replace(
            config,
            image_size=config.image_size or int(model.image_size[0]),
            optimizer=optimizer,
            weight_decay=OPTIMIZERS[optimizer] if config.weight_decay is None else config.weight_decay,
            lr=config.lr or default_lr(config.model, global_batch, optimizer),
            device=str(device),
            amp=cuda if config.amp is None else config.amp,  # on the CPU only when asked: bfloat16
            channels_last=True if config.channels_last is None else config.channels_last,
            sync_bn=(cuda and self.world.distributed) if config.sync_bn is None else config.sync_bn,
            metric=metric,
        )

    def _build_model(self, train_set, checkpoint: dict | None):
        """A new model for the configuration and ``train_set``'s classes, or the model of the checkpoint
        being resumed.

        A resumed model is rebuilt from the checkpoint alone, as :func:`load_checkpoint` does: from its
        resolved builder arguments (not this version's defaults), its default boxes checked against the
        stored ones, its weights and settings loaded; so a run continues with exactly the model it had.
        """
        from singleshot.models import build_model
        from singleshot.models.checkpoint import model_from_checkpoint

        config = self.config
        class_names = list(train_set.class_names)
        if checkpoint is not None:
            if checkpoint["class_names"] != list(class_names):
                raise UserError(
                    f"{self.resume} was trained on other classes than the {len(class_names)} of {config.data_name}; "
                    "resume with the data the run was started with"
                )
            return model_from_checkpoint(checkpoint, f"checkpoint {self.resume}")
        if self._source is not None:
            return self._fine_tuned(class_names)
        overrides = dict(config.model_options)
        if config.image_size:
            overrides["image_size"] = config.image_size
        if config.backbone_weights is not None:  # --backbone-weights: "none" is no ImageNet start
            overrides["backbone_weights"] = (
                None if config.backbone_weights == "none" else config.backbone_weights
            )
        return build_model(config.model, len(class_names) + 1, class_names=list(class_names), **overrides)

    def _take_weights(self, config: TrainConfig) -> TrainConfig:
        """Load the model of ``--weights`` (kept for :meth:`_fine_tuned`); the configuration with its
        architecture, input size and default boxes, which the recipe keeps (no default-box fit).

        Raises UserError with --resume, or for a --model, --image-size or model option the source
        contradicts.
        """
        from singleshot.models.sources import load_source

        if self.resume:
            raise UserError(
                f"--weights starts a new run from {config.weights} while --resume continues {self.resume}; "
                "give one of them"
            )
        source = self._source = load_source(config.weights)
        size = list(source.image_size)
        options = dict(source.arch_args)
        _refuse_contradictions(
            config,
            source.arch,
            size,
            options,
            f"--weights {config.weights}",
            "leave it out to train the source's model",
        )
        return dataclasses.replace(
            config, model=source.arch, image_size=size[0], model_options=options, fit_boxes=False
        )

    def _fine_tuned(self, class_names: list[str]):
        """A model of the source's architecture and default boxes for ``class_names``, holding the
        source's weights (classes matched by name, :func:`singleshot.models.transfer.transfer_weights`)."""
        from singleshot.models import build_model
        from singleshot.models.transfer import transfer_weights

        source, weights = self._source, self.config.weights
        model = build_model(source.arch, len(class_names) + 1, class_names=class_names, **source.arch_args)
        carried, new = transfer_weights(source, model)
        if not carried:
            self._say(
                f"weights: {weights} shares no class with {self.config.data_name}; every layer but the class "
                f"scores is carried over, and all {len(new)} classes start fresh"
            )
        else:
            fresh = f"; new: {', '.join(new)}" if new else "; no new classes"
            self._say(f"weights: from {weights}; classes carried over: {', '.join(carried)}{fresh}")
        self._source = None  # the memory of the source's weights is no longer needed
        return model

    def _check_resume(self, checkpoint: dict) -> None:
        """UserError unless ``checkpoint`` is a run's ``last.pt`` holding the model the configuration asks for."""
        if "optimizer" not in checkpoint or "config" not in checkpoint:
            raise UserError(
                f"{self.resume} holds weights but no training state (best.pt and exported checkpoints do not); "
                "resume from the run's last.pt"
            )
        config, saved = self.config, checkpoint["config"]
        size = checkpoint["preprocessing"]["image_size"]
        options = {**saved.get("model_options", {}), **checkpoint.get("arch_args", {})}  # what the model has
        _refuse_contradictions(
            config,
            checkpoint["arch"],
            size,
            options,
            str(self.resume),
            "resume without it, or start a new run to change the model",
        )

    # -- an epoch ----------------------------------------------------------------------------------
    def _train_epoch(self, run: _Run, state: RunState) -> bool:
        """The remaining steps of epoch ``state.epoch``; True when stopped early (``last.pt`` saved)."""
        sums = state.start_epoch(self.world.device)
        stopped = False
        if state.step < run.steps_per_epoch:
            run.sampler.set_epoch(state.epoch, state.step)
            run.model.train()
            hold_norms(run.frozen)
            stopped = self._run_steps(run, state, sums)
        if stopped:
            self._save_last(run, state)
        return stopped

    def _run_steps(self, run: _Run, state: RunState, sums: LossTerms) -> bool:
        """Train from step ``state.step`` to the end of the epoch, adding the loss terms to ``sums`` and the
        logged steps to ``state.history``; True when asked to stop before the end."""
        config = self.config
        bar = tqdm(
            total=run.steps_per_epoch,
            initial=state.step,
            desc=f"epoch {state.epoch + 1}/{config.epochs}",
            unit="step",
            disable=not self.bars,
            dynamic_ncols=True,
            leave=True,
            file=sys.stderr,
        )
        window = LossTerms.zeros(self.world.device)  # sums since the last read of the losses
        window_steps, window_began = 0, time.perf_counter()
        began = time.perf_counter()
        stopped = False
        try:
            for images, labels, offsets, skipped in run.loader:
                if skipped:
                    self._report_skipped(skipped)
                terms, lr, batch_size = self._train_step(run, images, labels, offsets)
                sums.add_(terms)
                window.add_(terms)
                window_steps += 1
                state.step += 1
                self.global_step += 1
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self)
                read = window_steps >= config.log_every or state.step == run.steps_per_epoch
                if read:
                    mean = window.mean(
                        window_steps
                    )  # the one host-device synchronisation every log_every steps
                    now = time.perf_counter()
                    speed = window_steps * batch_size * self.world.size / max(now - window_began, 1e-9)
                    self._log_steps(run, state, mean, lr, speed, bar)
                    window.zero_()
                    window_steps, window_began = 0, now
                if self._should_stop(read):
                    stopped = True
                    break
        finally:
            bar.close()
        state.seconds += time.perf_counter() - began
        return stopped

    def _report_skipped(self, errors: list[str]) -> None:
        """One line for each image that failed to decode, the first time it does."""
        for error in errors:
            if error not in self.skipped:
                self.skipped.add(error)
                self._say(f"skipping an image that does not decode (--skip-invalid): {error}")

    def _train_step(self, run: _Run, images, labels, offsets) -> tuple[LossTerms, float, int]:
        """One SGD step on a batch; ``(its loss terms, still on the device, the learning rate, images)``."""
        config, device = self.config, self.world.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        offsets = offsets.to(device, non_blocking=True)
        lr = run.schedule.step()
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=config.amp):
            x = run.core.normalize(images)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            cls_logits, box_deltas = run.model(x)
        losses = run.loss_fn.from_matched(cls_logits, box_deltas, labels, offsets)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(losses["loss"]).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.core)
        return LossTerms.of(losses), lr, images.shape[0]

    def _log_steps(self, run: _Run, state: RunState, mean, lr: float, speed: float, bar) -> None:
        """Record the mean losses of the steps since the last record (``mean``: :class:`LossValues`) in the
        history and on the progress bar; UserError when the loss is no longer finite."""
        if not math.isfinite(mean.loss):
            raise UserError(
                f"training diverged: the loss became {mean.loss} at epoch {state.epoch + 1}, step {state.step}; "
                f"lower the learning rate (--lr, now {self.config.lr:g})"
            )
        state.history["steps"].append(
            {
                "epoch": state.epoch + state.step / run.steps_per_epoch,
                "loss": mean.loss,
                "loc": mean.loc,
                "conf": mean.conf,
                "lr": lr,
            }
        )
        losses = (
            f"loss {mean.loss:.3f} (loc {mean.loc:.3f}, conf {mean.conf:.3f}) lr {lr:.2e} {speed:.1f} img/s"
        )
        if self.bars:
            bar.set_postfix_str(losses, refresh=False)
            return
        config = self.config
        left = (config.epochs * run.steps_per_epoch - self.global_step) * config.batch_size * self.world.size
        self._say(
            f"epoch {state.epoch + 1}/{config.epochs} step {state.step}/{run.steps_per_epoch}: {losses}, "
            f"{_duration(left / max(speed, 1e-9))} left"
        )

    # -- the end of an epoch -----------------------------------------------------------------------
    def _end_epoch(self, run: _Run, state: RunState, data) -> bool:
        """Validation (when due), the epoch's record, ``last.pt``, ``best.pt`` when the mAP improved,
        ``metrics.csv``; True when the run stops here (asked to, or stopped inside validation)."""
        config, world = self.config, self.world
        epoch = state.epoch
        distributed.average_batch_norm_statistics(run.core, world)
        val_set, val_map, val_seconds = data.val, None, None
        if val_set is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            began = time.perf_counter()
            try:
                val_map = self._validate(run.validated, val_set, list(data.train.class_names))
            except StopEvaluation:
                self._save_last(run, state)
                return True
            val_seconds = time.perf_counter() - began
            state.last_map = val_map
        record = self._epoch_record(run, state, val_map, val_seconds)
        state.history["epochs"].append(record)
        if not self.bars:
            self._say(
                f"epoch {epoch + 1}/{config.epochs} done: loss {record['loss']:.3f} (loc {record['loc']:.3f}, "
                f"conf {record['conf']:.3f}), {record['images_per_s']:.1f} img/s, {record['epoch_time_s']:.0f} s"
            )
        improved = val_map is not None and (state.best_map is None or val_map > state.best_map)
        if improved:
            state.best_map = val_map
        state.finish_epoch()
        if epoch == BUDGET_EPOCH:
            self._fit_time_budget(run, record["epoch_time_s"])
        self._save_last(run, state)
        if world.is_main:
            if improved:
                self._save_best(run, state, val_map)
            self._write_records(Path(config.out), state.history, self.config)
            if val_map is not None:
                self._say(
                    f"epoch {epoch + 1}/{config.epochs}: validation mAP ({config.metric}) "
                    f"{format_map(val_map)}, best {format_map(state.best_map)}"
                )
        return self._should_stop(True) and state.epoch < self.config.epochs

    def _fit_time_budget(self, run: _Run, epoch_s: float) -> None:
        """Cut the epochs the recipe chose to those that fit ``time_budget`` on this CPU at the pace of the
        epoch :data:`~singleshot.engine.recipe.BUDGET_EPOCH` (:func:`~singleshot.engine.recipe.epochs_in_budget`),
        once; the schedule and the validation interval follow; ``last.pt`` and ``config.json`` record it."""
        config = self.config
        if "epochs" not in config.recipe or self.world.device.type != "cpu" or self.world.distributed:
            return
        epochs, why = epochs_in_budget(config.epochs, epoch_s, config.time_budget)
        if why is None:
            return
        recipe = dict(config.recipe, epochs=why)
        val_every = config.val_every
        if "val_every" in recipe:
            val_every, recipe["val_every"] = validation_interval(epochs)
        self.config = dataclasses.replace(config, epochs=epochs, val_every=val_every, recipe=recipe)
        total = epochs * run.steps_per_epoch
        run.schedule.total_steps = total
        run.schedule.kwargs["milestones"] = _milestone_steps(config.milestones, total)
        self._write_config()
        self._say(f"recipe: epochs {why}")

    def _write_config(self) -> None:
        """``RUN/config.json``: the configuration as it stands (rank 0 calls it; the folder is made here)."""
        out = Path(self.config.out)
        with _writing(out / "config.json"):
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", self.config.to_dict())

    def _epoch_record(self, run: _Run, state: RunState, val_map, val_seconds) -> dict:
        """The row of ``metrics.csv`` for the epoch ``state.epoch`` just trained."""
        means = state.sums.mean(run.steps_per_epoch)
        images = run.steps_per_epoch * self.config.batch_size * self.world.size
        return {
            "epoch": state.epoch + 1,
            "step": run.schedule.last_step,
            "lr": run.optimizer.param_groups[0]["lr"],
            "loss": means.loss,
            "loc": means.loc,
            "conf": means.conf,
            "images_per_s": images / max(state.seconds, 1e-9),
            "epoch_time_s": state.seconds,
            "val_map": val_map,
            "val_time_s": val_seconds,
        }

    def _save_last(self, run: _Run, state: RunState) -> None:
        """``last.pt`` (rank 0): the model and everything a resume needs to continue from ``state``."""

        if not self.world.is_main:
            return
        path = Path(self.config.out) / "last.pt"
        with _writing(path):
            self._write_last(path, run, state)

    def _write_last(self, path: Path, run: _Run, state: RunState) -> None:
        from singleshot.models import save_checkpoint

        save_checkpoint(
            path,
            run.core,
            optimizer=run.optimizer.state_dict(),
            schedule=run.schedule.state_dict(),
            scaler=run.scaler.state_dict(),
            epoch=state.epoch,
            step=state.step,
            partial=state.partial(),
            rng=capture_rng(),
            history=state.history,
            best_map=state.best_map,
            config=self.config.to_dict(),
            **({} if run.ema is None else {"ema": run.ema.state_dict()}),
        )

    def _save_best(self, run: _Run, state: RunState, val_map: float) -> None:
        """``best.pt``: the model after epoch ``state.epoch``, whose validation mAP is the best so far."""
        from singleshot.models import save_checkpoint

        config = self.config
        with _writing(Path(config.out) / "best.pt"):
            save_checkpoint(
                Path(config.out) / "best.pt",
                run.validated,
                epoch=state.epoch,
                val_map=val_map,
                metric=config.metric,
                config=config.to_dict(),
            )

    def _finish(self, run: _Run, state: RunState, interrupted: bool) -> TrainResult:
        """The final records and, when stopped early, how to resume; all ranks return together."""
        config, out = self.config, Path(self.config.out)
        if self.world.is_main:
            self._write_records(out, state.history, config)
            if interrupted:
                self._say(
                    f"stopped in epoch {state.epoch + 1}/{config.epochs} after step "
                    f"{state.step}/{run.steps_per_epoch}; saved {out / 'last.pt'}; continue with: "
                    f"singleshot train --resume {out / 'last.pt'}"
                )
        distributed.barrier(self.world)
        epochs_done = len(state.history["epochs"])
        return TrainResult(
            out, epochs_done, state.best_map, state.last_map, interrupted, run.validated, config
        )

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
            progress=self.bars,
            desc="validate",
            should_stop=None if world.distributed else (lambda: self.stop_requested),
        )
        if not world.is_main:
            return None
        value = float(score(predictions, targets, val_set, config.metric, class_names)["map"])
        return None if math.isnan(value) else value  # NaN: the split has no ground truth to score

    def _write_records(self, out: Path, history: dict, config: TrainConfig) -> None:
        from singleshot.render.curves import plot_training_curves

        with _writing(out / "metrics.csv"):
            write_csv(out / "metrics.csv", history["epochs"], EPOCH_COLUMNS)
        with _writing(out / "curves.png"):
            plot_training_curves(
                out / "curves.png",
                history["steps"],
                history["epochs"],
                title=f"{config.model} on {_short_data_name(config)}",
            )

    def _say(self, text: str) -> None:
        if self.world.is_main:
            tqdm.write(text, file=sys.stderr)


@contextlib.contextmanager
def _writing(path: Path):
    """An OSError while writing the run's file ``path`` (a full disk, a folder made read-only) as one
    sentence; the file written before, if any, is intact (the writes are atomic)."""
    try:
        yield
    except OSError as error:
        last = path.parent / "last.pt"
        then = (
            f"{last} holds the last saved state: continue with singleshot train --resume {last}"
            if last.is_file()
            else "start the run again"
        )
        raise UserError(
            f"cannot write {path} ({error.strerror or error}); make room or fix the folder, then {then}"
        ) from None


_RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.csv")


def _refuse_existing_run(out: str | None, resume: str | None) -> None:
    """UserError when the folder ``out`` holds a run's files, unless the run resumed (``resume``) is there."""
    if not out or not Path(out).is_dir():
        return
    if resume is not None and Path(resume).parent.resolve() == Path(out).resolve():
        return
    found = [name for name in _RUN_FILES if (Path(out) / name).exists()]
    if found:
        raise UserError(
            f"{out} already holds a run ({', '.join(found)}); continue it with --resume "
            f"{Path(out) / 'last.pt'}, or replace it with --overwrite"
        )


def _refuse_contradictions(config: TrainConfig, arch: str, size: list, options: dict, source: str, hint: str):
    """UserError naming the first given option (model, image size, a model option) that the model of
    ``source`` (a resumed checkpoint or a --weights source: ``arch``, input ``size``, builder ``options``)
    contradicts; options not given are taken from the source."""
    contradictions = [
        ("model", config.model is not None and config.model != arch, arch),
        ("image_size", config.image_size is not None and [config.image_size] * 2 != list(size), size[0]),
        (
            "model_options",
            any(options.get(key, value) != value for key, value in config.model_options.items()),
            options,
        ),
    ]
    for key, differs, value in contradictions:
        if differs:
            raise UserError(
                f"{option_name(key)} {getattr(config, key)!r} contradicts {source}, which holds {value!r}; {hint}"
            )


def _milestone_steps(milestones: list[float], total_steps: int) -> list[int]:
    """The step numbers of the step schedule's milestones, given as fractions of ``total_steps``."""
    return [round(m * total_steps) for m in milestones]


_OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW"}


def _left_open_from(config: TrainConfig, saved: dict) -> TrainConfig:
    """``config`` with what it leaves open (None, or an empty dict) taken from a resumed run's ``saved``
    configuration: the values its recipe chose (epochs, batch size, augmentation, fitted default boxes, the
    optimizer)."""
    keys = ("epochs", "batch_size", "val_every", "augment", "recipe", "optimizer", "weight_decay")
    saved = {"optimizer": "sgd", "weight_decay": 5e-4, **saved}  # runs that predate AdamW trained with SGD
    values = {key: saved[key] for key in keys if key in saved and getattr(config, key) in (None, {})}
    values["model_options"] = {**saved.get("model_options", {}), **config.model_options}
    return config.updated(values, "the resumed run's configuration")


def _duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``42s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _short_data_name(config: TrainConfig) -> str:
    """The last two parts of each training data path, joined by " + " (a plot title)."""
    paths = config.data if isinstance(config.data, list) else [config.data]
    return " + ".join("/".join(Path(p).parts[-2:]) for p in paths)


def _precision(amp: bool, device: torch.device) -> str:
    """How the start line names mixed precision: ``, AMP (float16)`` or ``, AMP (bfloat16)``."""
    return f", AMP ({str(amp_dtype(device)).removeprefix('torch.')})" if amp else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only; biases and normalisation parameters (1-d) get none, as in Caffe's SSD."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
        if trainer.stop_signal is None:  # SIGINT then SIGTERM: one line, the first signal's exit status
            trainer.stop_signal = signum
            trainer._say(
                f"stopping after this step to save last.pt ({signal.Signals(signum).name}; "
                "send it again to quit at once)"
            )
        trainer.stop()

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, previous[s])
