"""The SSD detector: a backbone of source feature maps, one head per map, default boxes and settings.

``SSD.forward`` maps a normalised batch to raw outputs, in the order of the default boxes::

    x Tensor[B, 3, H, W] -> backbone -> [Tensor[B, c_k, h_k, w_k]] -> head -> (Tensor[B, P, C], Tensor[B, P, 4])

Loss (``model.loss_fn()``) and detections (``model.predict`` or :func:`singleshot.postprocess.postprocess`)
are separate callables. Default boxes follow the *real* feature-map sizes of the input, found by running
the backbone on shape-only ("meta") tensors, so any input size that keeps every map non-empty works.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from singleshot.errors import UserError
from singleshot.loss import MultiBoxLoss
from singleshot.models.inference import inference_network
from singleshot.models.winograd import use_winograd
from singleshot.postprocess import postprocess
from singleshot.priors import CLIP_MODES, boxes_per_cell, check_densities, default_boxes

# ImageNet statistics of torchvision's classification weights, RGB on the [0, 1] pixel scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or ``(h, w)`` -> ``(h, w)`` of positive ints."""
    pair = (
        (size, size)
        if isinstance(size, numbers.Number)
        else tuple(size)
        if isinstance(size, Sequence)
        else ()
    )
    if len(pair) != 2 or not all(isinstance(s, numbers.Integral) and s >= 1 for s in pair):
        raise UserError(f"image size must be a positive int or a (height, width) pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def _flatten_prediction(out: Tensor, columns: int) -> Tensor:
    """(B, A * K, H, W) -> (B, H * W * A, K): cells row-major, the A boxes of a cell together."""
    b, _, h, w = out.shape
    out = out.reshape(b, -1, columns, h, w)  # (B, A, K, H, W)
    return out.permute(0, 3, 4, 1, 2).reshape(b, -1, columns)  # (B, H*W*A, K)


class SSDHead(nn.Module):
    """One classification and one box-regression predictor per source map.

    Args:
        in_channels: channels of each source map (the backbone's ``out_channels``).
        boxes_per_cell: default boxes per cell of each map (``priors.boxes_per_cell(aspect_ratios)``).
        num_classes: C, background (class 0) included.
        separable: False: a 3x3 convolution per predictor (the paper). True: SSDLite's 3x3 depthwise
            convolution + BatchNorm + ReLU6 followed by a 1x1 convolution (MobileNetV2 paper, section 6.2).
        norm_layer: the normalisation of the separable predictors (BatchNorm2d by default).
        background_prior: None: zero biases (the paper). A probability p: the classification biases start
            so that every box scores background with probability p (the other classes share the rest),
            and the weights of the last classification convolutions start small (normal, std 0.01), so
            that the prior holds whatever the features: this spares a network trained from scratch the
            first steps of learning "background almost everywhere" (the prior initialisation of Lin et
            al. 2017, for the softmax).

    ``forward(features)`` takes the source maps and returns ``cls_logits`` Tensor[B, P, C] and
    ``box_deltas`` Tensor[B, P, 4].
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_cell: Sequence[int],
        num_classes: int,
        *,
        separable: bool = False,
        norm_layer=None,
        background_prior: float | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(boxes_per_cell):
            raise ValueError(
                f"{len(in_channels)} source maps but {len(boxes_per_cell)} boxes-per-cell values"
            )
        self.in_channels = list(in_channels)
        self.boxes_per_cell = list(boxes_per_cell)
        self.num_classes = num_classes
        self.separable = separable
        norm_layer = norm_layer or nn.BatchNorm2d

        def predictor(channels: int, outputs: int) -> nn.Module:
            if not separable:
                return nn.Conv2d(channels, outputs, kernel_size=3, padding=1)
            return nn.Sequential(
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                    norm_layer(channels),
                    nn.ReLU6(inplace=True),
                ),
                nn.Conv2d(channels, outputs, kernel_size=1),
            )

        pairs = list(zip(self.in_channels, self.boxes_per_cell))
        self.classification = nn.ModuleList(predictor(c, n * num_classes) for c, n in pairs)
        self.regression = nn.ModuleList(predictor(c, n * 4) for c, n in pairs)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                if separable:  # torchvision's SSDLite initialisation
                    nn.init.normal_(conv.weight, mean=0.0, std=0.03)
                else:  # Caffe SSD / torchvision ssd300_vgg16
                    nn.init.xavier_uniform_(conv.weight)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        if background_prior is not None:
            if not 0 < background_prior < 1:
                raise ValueError(f"background_prior must be in (0, 1), got {background_prior}")
            # softmax(b, 0, ..., 0)[0] = p  <=>  b = log(p (C - 1) / (1 - p))
            bias = math.log(background_prior * (num_classes - 1) / (1 - background_prior))
            with torch.no_grad():
                for layer in self.classification:
                    last = layer if isinstance(layer, nn.Conv2d) else layer[-1]
                    nn.init.normal_(last.weight, std=0.01)
                    last.bias.view(-1, num_classes)[:, 0] = bias  # (boxes, classes): class 0 of every box

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        cls_logits = torch.cat(
            [
                _flatten_prediction(layer(f), self.num_classes)
                for layer, f in zip(self.classification, features)
            ],
            1,
        )
        box_deltas = torch.cat(
            [_flatten_prediction(layer(f), 4) for layer, f in zip(self.regression, features)], 1
        )
        return cls_logits, box_deltas


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    Args:
        backbone: a module mapping Tensor[B, 3, H, W] to a list of source maps, with ``out_channels``
            (list of ints) naming their channels.
        head: an :class:`SSDHead` whose ``in_channels`` are the backbone's ``out_channels`` and whose
            ``boxes_per_cell`` follow from ``aspect_ratios``.
        num_classes: C, background (class 0) included.
        image_size: ``(h, w)`` (or an int) of the network input; ``predict`` resizes to it and
            ``model.priors`` are the default boxes of this size.
        aspect_ratios, scales, steps, clip, densities: the default boxes, see
            :func:`singleshot.priors.default_boxes`.
            ``steps`` (pixel strides) are those of ``image_size`` and apply to that input size only; at
            any other size the centres are spread evenly over each map, ``(j + 0.5) / f_k``.
        mean, std: RGB normalisation on the [0, 1] pixel scale.
        antialias: whether ``predict`` resizes with antialiasing: True as singleshot's data transforms
            (training and evaluation), False for models converted from torchvision (its SSD does not).
        class_names: C - 1 names, background excluded; default ``class1`` ... .
        score_threshold, nms_threshold, candidates_per_class, max_detections, variances: post-processing,
            see :func:`singleshot.postprocess.postprocess`; plain attributes a user can change.

    ``winograd`` (default True): whether, on the CPU in float32, ``predict`` and training compute the wide
    3x3 convolutions (>= 128 channels on maps >= 16 pixels a side, such as VGG16's conv3 to conv5) by
    Winograd's F(4x4, 3x3) (:mod:`singleshot.models.winograd`): 1.3-2x faster than the direct kernels for
    those layers, equal to float32 rounding (~1e-5 relative). ``model(x)`` in eval mode always runs the
    plain convolutions. False gives the direct convolutions everywhere.

    Attributes set by :func:`singleshot.models.build_model`: ``arch`` (the zoo name) and ``arch_args``
    (the builder's keyword arguments), which a checkpoint needs to rebuild the model.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: SSDHead,
        *,
        num_classes: int,
        image_size: int | Sequence[int],
        aspect_ratios: Sequence[Sequence[float]],
        scales: Sequence[float],
        steps: Sequence[float | Sequence[float]] | None = None,
        clip: str | None = None,
        densities: Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        antialias: bool = True,
        class_names: Sequence[str] | None = None,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        candidates_per_class: int = 400,
        max_detections: int = 200,
        variances: Sequence[float] = (0.1, 0.2),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes must be at least 2 (background and one class), got {num_classes}")
        if list(head.in_channels) != list(backbone.out_channels):
            raise ValueError(
                f"head in_channels {head.in_channels} != backbone out_channels {backbone.out_channels}"
            )
        try:
            densities = check_densities(densities, len(aspect_ratios))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if head.boxes_per_cell != boxes_per_cell(aspect_ratios, densities):
            raise ValueError(
                f"head boxes per cell {head.boxes_per_cell} do not follow from {aspect_ratios} "
                f"and densities {densities}"
            )
        if head.num_classes != num_classes:
            raise ValueError(f"head predicts {head.num_classes} classes, the model {num_classes}")
        if len(scales) != len(aspect_ratios) + 1:
            raise UserError(
                f"scales needs {len(aspect_ratios) + 1} values for {len(aspect_ratios)} source maps "
                f"(the last feeds the extra square box), got {len(scales)}"
            )
        if steps is not None and len(steps) != len(aspect_ratios):
            raise UserError(f"steps needs one value per source map ({len(aspect_ratios)}), got {len(steps)}")
        if clip not in CLIP_MODES:
            raise UserError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.aspect_ratios = [list(map(float, r)) for r in aspect_ratios]
        self.scales = [float(s) for s in scales]
        self.steps = None if steps is None else [s if isinstance(s, (int, float)) else list(s) for s in steps]
        self.clip = clip
        self.densities = densities
        self.antialias = bool(antialias)
        self.class_names = class_names
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.candidates_per_class = candidates_per_class
        self.max_detections = max_detections
        self.variances = tuple(float(v) for v in variances)
        self.register_buffer("_mean", torch.zeros(3), persistent=False)
        self.register_buffer("_std", torch.ones(3), persistent=False)
        self.mean, self.std = mean, std
        self.arch: str | None = None
        self.arch_args: dict = {}
        self.winograd = True  # makes the suitable convolutions Winograd-capable (same parameters)

        self._image_size = as_size(image_size)
        self._priors_cache: dict[tuple[int, int], Tensor] = {}
        self.register_buffer("priors", self.priors_for(self._image_size), persistent=False)

    # --- settings -------------------------------------------------------------------------------

    @property
    def winograd(self) -> bool:
        return self._winograd

    @winograd.setter
    def winograd(self, value: bool) -> None:
        self._winograd = bool(value)
        use_winograd(self, self._winograd)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(h, w)`` of the network input (fixed at construction: the default boxes depend on it)."""
        return self._image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self._mean_tuple

    @mean.setter
    def mean(self, value: Sequence[float]) -> None:
        self._mean_tuple = self._check_rgb("mean", value)
        self._mean.copy_(torch.tensor(self._mean_tuple))

    @property
    def std(self) -> tuple[float, float, float]:
        return self._std_tuple

    @std.setter
    def std(self, value: Sequence[float]) -> None:
        value = self._check_rgb("std", value)
        if min(value) <= 0:
            raise UserError(f"std must be positive, got {value}")
        self._std_tuple = value
        self._std.copy_(torch.tensor(value))

    @staticmethod
    def _check_rgb(name: str, value: Sequence[float]) -> tuple[float, float, float]:
        value = tuple(float(v) for v in value)
        if len(value) != 3:
            raise UserError(f"{name} needs 3 values (R, G, B), got {len(value)}")
        return value

    @property
    def class_names(self) -> list[str]:
        """C - 1 names; label i is ``class_names[i - 1]``."""
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        if names is None:
            names = [f"class{i}" for i in range(1, self.num_classes)]
        names = [str(n) for n in names]
        if len(names) != self.num_classes - 1:
            raise UserError(
                f"{len(names)} class names for a model of {self.num_classes - 1} classes (background excluded)"
            )
        self._class_names = names

    def postprocess_settings(self) -> dict:
        """The keyword arguments of :func:`singleshot.postprocess.postprocess` this model uses."""
        return {
            "score_threshold": float(self.score_threshold),
            "nms_threshold": float(self.nms_threshold),
            "candidates_per_class": int(self.candidates_per_class),
            "max_detections": int(self.max_detections),
            "variances": tuple(self.variances),
        }

    # --- default boxes --------------------------------------------------------------------------

    def feature_sizes(self, image_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """``(h_k, w_k)`` of every source map for an input of ``image_size``, computed on shapes only.

        Raises UserError when the input is too small for the backbone (a map would be empty).
        """
        h, w = as_size(image_size)
        sizes = self._try_feature_sizes(h, w)
        if sizes is None:
            lo, hi = 1, 4096  # the smallest square input that works, by bisection on shapes
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if self._try_feature_sizes(mid, mid) else (mid + 1, hi)
            raise UserError(
                f"image size {h}x{w} is too small for this network (a feature map would vanish); "
                f"use at least {lo} pixels a side"
            )
        return sizes

    def _try_feature_sizes(self, h: int, w: int) -> list[tuple[int, int]] | None:
        try:
            features = meta_call(self.backbone, (1, 3, h, w))
        except RuntimeError:
            return None
        sizes = [tuple(f.shape[-2:]) for f in features]
        return sizes if min(min(s) for s in sizes) >= 1 else None

    def priors_for(self, image_size: int | Sequence[int]) -> Tensor:
        """Tensor[P, 4] default boxes ``(cx, cy, w, h)`` relative to an input of ``image_size`` ``(h, w)``."""
        size = as_size(image_size)
        if size not in self._priors_cache:
            own = size == getattr(self, "_image_size", size)
            self._priors_cache[size] = default_boxes(
                self.feature_sizes(size),
                self.aspect_ratios,
                image_size=size,
                scales=self.scales,
                steps=self.steps if own else None,
                clip=self.clip,
                densities=self.densities,
            )
        device = self.priors.device if hasattr(self, "priors") else None
        return self._priors_cache[size].to(device)

    # --- running --------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw outputs of a normalised batch.

        Args:
            x: Tensor[B, 3, H, W], normalised (see :meth:`normalize`).

        Returns:
            cls_logits Tensor[B, P, C] and box_deltas Tensor[B, P, 4], P = ``len(self.priors_for((H, W)))``.
        """
        return self.head(self.backbone(x))

    def normalize(self, images: Tensor) -> Tensor:
        """Tensor[B, 3, H, W] uint8 (0..255) or float in [0, 1] -> normalised float on the model's device.

        The result has the dtype of the model's parameters (float32 unless the model was converted).
        """
        x = images.to(self._mean.device, non_blocking=True)
        x = x.float() / 255 if not x.is_floating_point() else x.float()
        x = (x - self._mean.float()[:, None, None]) / self._std.float()[:, None, None]
        dtype = next(self.parameters()).dtype
        return x.to(dtype)

    def _resize(self, x: Tensor) -> Tensor:
        """Tensor[B, 3, h, w] -> Tensor[B, 3, H, W] at ``image_size``: bilinear, half-pixel centres."""
        if tuple(x.shape[-2:]) == self._image_size:
            return x
        return F.interpolate(
            x, size=self._image_size, mode="bilinear", align_corners=False, antialias=self.antialias
        )

    def preprocess(self, images: Sequence[Tensor]) -> Tensor:
        """Images Tensor[3, h_i, w_i] (uint8 or float in [0, 1], any sizes) -> normalised Tensor[B, 3, H, W].

        Normalises, then resizes each image to ``image_size`` (in this order, as torchvision's SSD).
        """
        if len({tuple(im.shape) for im in images}) == 1:
            return self._resize(self.normalize(torch.stack(list(images))))
        return torch.cat([self._resize(self.normalize(im[None])) for im in images])

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of images of any sizes, with one batched forward pass.

        Args:
            images: Tensor[3, h_i, w_i] each, RGB, uint8 (0..255) or float in [0, 1]; or PIL images of any
                mode, or numpy uint8 arrays (h_i, w_i, 3) RGB (see ``singleshot.data.images.as_image_tensor``).

        Returns:
            one dict per image: ``"boxes"`` Tensor[K, 4] xyxy in that image's pixels, ``"scores"``
            Tensor[K], ``"labels"`` Tensor[K] int64 in 1..C-1, best first. The model is put in eval
            mode for the call and given back in the mode it was in.
        """
        from singleshot.data.images import as_image_tensor

        images = [as_image_tensor(im) for im in images]
        if not images:
            return []
        training = self.training
        self.eval()
        try:
            cls_logits, box_deltas = self.infer(self.preprocess(images))
        finally:
            self.train(training)
        sizes = [tuple(im.shape[-2:]) for im in images]
        return postprocess(
            cls_logits.float(), box_deltas.float(), self.priors.float(), sizes, **self.postprocess_settings()
        )

    @torch.no_grad()
    def infer(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw outputs of normalised input Tensor[B, 3, H, W], as ``forward`` in eval mode, by the fastest
        network available: on the CPU in float32 a cached channels-last copy with fused convolutions and
        Winograd's F(4x4, 3x3) for the wide 3x3 ones (equal to ``forward`` up to float32 rounding); elsewhere
        the model itself. The model must be in eval mode."""
        network = inference_network(self)
        if network is not self:
            x = x.contiguous(memory_format=torch.channels_last)
        return network(x)

    def loss_fn(self, **kwargs) -> MultiBoxLoss:
        """:class:`singleshot.loss.MultiBoxLoss` on this model's priors and variances (``kwargs`` pass on)."""
        kwargs.setdefault("variances", self.variances)
        return MultiBoxLoss(self.priors, **kwargs)

    def extra_repr(self) -> str:
        h, w = self._image_size
        return f"arch={self.arch!r}, num_classes={self.num_classes}, image_size={h}x{w}, priors={len(self.priors)}"


def meta_call(module: nn.Module, input_shape: Sequence[int]):
    """``module`` (in eval mode) applied to a shape-only ("meta") input of ``input_shape``; no arithmetic.

    The module's parameters and buffers are swapped for meta tensors for the call, so it works whatever
    device the module is on; its train/eval mode is restored afterwards.
    """
    tensors = itertools.chain(module.named_parameters(), module.named_buffers())
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    training = module.training
    module.eval()  # batch norm in training mode refuses a 1x1 map of a batch of 1
    try:
        with torch.no_grad():
            return torch.func.functional_call(module, meta, (torch.empty(*input_shape, device="meta"),))
    finally:
        module.train(training)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int | Sequence[int] | None = None) -> int:
    """Floating-point operations of one forward pass on one image (2 per multiply-add), counted on shapes.

    Convolutions and matrix products only (torch.utils.flop_counter); ``image_size`` defaults to the
    model's own.
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = as_size(image_size if image_size is not None else model.image_size)
    with FlopCounterMode(display=False) as counter:
        meta_call(model, (1, 3, h, w))
    return int(counter.get_total_flops())
