"""The model zoo: plain builder functions in a light registry.

    build_model("ssd300_vgg16", num_classes=21)                       # the paper's SSD300
    build_model("ssd_small", 4, image_size=256)                       # the CPU model, larger input
    build_model("ssdlite320_mobilenet_v3_large", 91, backbone_weights="torchvision")

Every builder takes ``num_classes`` and keyword arguments: its own (backbone, default boxes, ImageNet
weights) and any keyword of :class:`singleshot.models.SSD` (``mean``, ``std``, ``class_names``,
``score_threshold``, ``nms_threshold``, ``candidates_per_class``, ``max_detections``, ...).
``build_model`` records the name and the resolved keyword arguments on the model (``arch``, ``arch_args``:
every keyword of the builder with the value it took, defaults included, plus the SSD keywords given) so
that a checkpoint rebuilds the same architecture even after a later version changes a default.

Default boxes: ``scales`` is a list of m + 1 relative scales or the name of a reference configuration;
``steps="auto"`` uses the reference pixel strides at the reference input size and evenly spread centres
at any other size (``image_size`` may be an int or ``(h, w)``, e.g. ``(300, 500)``). Every builder takes
``densities`` (one int per source map, default all 1): layer k repeats its smallest square on a d x d
sub-grid of each cell (:func:`singleshot.priors.default_boxes`); ``singleshot default-boxes --fit``
proposes scales, ratios and densities for a data set.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Sequence

from singleshot.errors import UserError
from singleshot.models.mobilenet import BatchNorm2d, MobileNetV3Backbone, load_mobilenet_v3_weights
from singleshot.models.small import SmallBackbone
from singleshot.models.ssd import SSD, SSDHead, as_size
from singleshot.models.vgg import VGG16Backbone, convert_vgg16_state_dict
from singleshot.models.weights import backbone_state_dict
from singleshot.priors import (
    SSD300_COCO,
    SSD300_VOC,
    SSD512_VOC,
    TORCHVISION_SSD300,
    boxes_per_cell,
    check_densities,
)

DEFAULT_MODEL = "ssd_small"

_BUILDERS: dict[str, Callable[..., SSD]] = {}

# The models whose training from scratch starts from ImageNet backbone weights unless told otherwise (the
# paper's and torchvision's recipes): ``singleshot train``'s default --backbone-weights imagenet.
IMAGENET_BACKBONE_MODELS = ("ssd300_vgg16", "ssd512_vgg16", "ssdlite320_mobilenet_v3_large")

# Builder arguments that are not part of the architecture: a checkpoint holds the weights and names.
_NOT_ARCH_ARGS = ("backbone_weights", "class_names")


def register_model(builder: Callable[..., SSD]) -> Callable[..., SSD]:
    """Decorator: add ``builder`` to the zoo under its function name."""
    _BUILDERS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    """Names of the zoo's models, in registration order."""
    return list(_BUILDERS)


def model_summary(name: str) -> str:
    """First line of a builder's docstring."""
    return (inspect.getdoc(_get_builder(name)) or "").splitlines()[0]


def _get_builder(name: str) -> Callable[..., SSD]:
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(
            f"unknown model {name!r}; {hint}choose one of {', '.join(_BUILDERS)} (see 'singleshot models')"
        )
    return _BUILDERS[name]


def _accepted_keywords(builder: Callable[..., SSD]) -> set[str]:
    own = set(inspect.signature(builder).parameters) - {"num_classes", "kwargs"}
    ssd = set(inspect.signature(SSD.__init__).parameters) - {"self", "backbone", "head", "num_classes"}
    return own | ssd


def build_model(name: str, num_classes: int, **overrides) -> SSD:
    """A zoo model by name.

    Args:
        name: one of :func:`list_models`.
        num_classes: C, background included (a data set of K classes needs K + 1).
        overrides: keyword arguments of the builder or of :class:`SSD`, e.g. ``image_size=(300, 500)``,
            ``backbone_weights="torchvision"`` or a path, ``score_threshold=0.3``.

    Raises UserError for an unknown name or keyword (with a "did you mean").
    """
    builder = _get_builder(name)
    accepted = _accepted_keywords(builder)
    for key in overrides:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(
                f"model {name} has no option {key!r}; {hint}options: {', '.join(sorted(accepted))}"
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(
            f"num_classes must be an int of at least 2 (background + one class), got {num_classes!r}"
        )
    model = builder(num_classes, **overrides)
    model.arch = name
    model.arch_args = _resolved_arguments(builder, model, overrides)
    return model


def _resolved_arguments(builder: Callable[..., SSD], model: SSD, overrides: dict) -> dict:
    """Every keyword of ``builder`` with the value it took (defaults included), plus the given SSD keywords.

    Default-box keywords are recorded as the model resolved them (a ``scales`` preset name becomes its
    scales, ``steps="auto"`` the strides or None), and arguments a builder resolved itself (SSDLite's
    ``reduced_tail``) as resolved, so that the record alone rebuilds the same default boxes and layers.
    """
    own = {
        key: param.default
        for key, param in inspect.signature(builder).parameters.items()
        if key != "num_classes" and param.kind is not inspect.Parameter.VAR_KEYWORD
    }
    resolved = {**own, **overrides, "image_size": model.image_size}
    for key in ("aspect_ratios", "scales", "steps", "clip", "densities"):
        if key in own:
            resolved[key] = getattr(model, key)
    resolved.update(model.arch_args)
    return {key: _plain(value) for key, value in resolved.items() if key not in _NOT_ARCH_ARGS}


def _plain(value):
    """Tuples -> lists, recursively, so that a checkpoint stores plain types."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _scales(scales: str | Sequence[float], presets: dict[str, dict], model: str) -> list[float]:
    if isinstance(scales, str):
        if scales not in presets:
            raise UserError(
                f"{model}: unknown scales preset {scales!r}; use one of {', '.join(presets)} or a list"
            )
        return list(presets[scales]["scales"])
    return [float(s) for s in scales]


def _densities(densities: Sequence[int] | None, num_layers: int, model: str) -> list[int]:
    try:
        return check_densities(densities, num_layers)
    except ValueError as exc:
        raise UserError(f"{model}: {exc}") from None


def _steps(steps, image_size: tuple[int, int], reference: dict) -> list | None:
    if steps == "auto":
        ref = reference["image_size"]
        return list(reference["steps"]) if image_size == (ref, ref) else None
    return steps


def _vgg_ssd(
    variant: str,
    reference: dict,
    presets: dict[str, dict],
    num_classes: int,
    image_size,
    scales,
    steps,
    clip,
    densities,
    backbone_weights,
    kwargs: dict,
) -> SSD:
    image_size = as_size(image_size)
    aspect_ratios = reference["aspect_ratios"]
    name = f"ssd{reference['image_size']}_vgg16"
    densities = _densities(densities, len(aspect_ratios), name)
    backbone = VGG16Backbone(variant)
    if backbone_weights is not None:
        state, source = backbone_state_dict(backbone_weights, "vgg16")
        backbone.load_state_dict(convert_vgg16_state_dict(state, source), strict=False)
    head = SSDHead(backbone.out_channels, boxes_per_cell(aspect_ratios, densities), num_classes)
    return SSD(
        backbone,
        head,
        num_classes=num_classes,
        image_size=image_size,
        aspect_ratios=aspect_ratios,
        scales=_scales(scales, presets, name),
        steps=_steps(steps, image_size, reference),
        clip=clip,
        densities=densities,
        **kwargs,
    )


@register_model
def ssd300_vgg16(
    num_classes: int,
    *,
    image_size: int | Sequence[int] = 300,
    scales: str | Sequence[float] = "voc",
    steps: str | Sequence[float] | None = "auto",
    clip: str | None = None,
    densities: Sequence[int] | None = None,
    backbone_weights: str | os.PathLike | None = None,
    **kwargs,
) -> SSD:
    """SSD300 (Liu et al. 2016): VGG16 + extras, 8732 default boxes at 300x300.

    ``scales``: "voc" (min sizes 30 .. 264 px, Caffe's VOC model), "coco" (21 .. 261 px) or
    "torchvision" (torchvision's ssd300_vgg16); ``clip=None`` as Caffe's reference models (no clipping).
    ``backbone_weights``: "imagenet" (or "torchvision") or the path of a torchvision ``vgg16`` state dict (ImageNet).
    """
    presets = {"voc": SSD300_VOC, "coco": SSD300_COCO, "torchvision": TORCHVISION_SSD300}
    return _vgg_ssd(
        "ssd300",
        SSD300_VOC,
        presets,
        num_classes,
        image_size,
        scales,
        steps,
        clip,
        densities,
        backbone_weights,
        kwargs,
    )


@register_model
def ssd512_vgg16(
    num_classes: int,
    *,
    image_size: int | Sequence[int] = 512,
    scales: str | Sequence[float] = "voc",
    steps: str | Sequence[float] | None = "auto",
    clip: str | None = None,
    densities: Sequence[int] | None = None,
    backbone_weights: str | os.PathLike | None = None,
    **kwargs,
) -> SSD:
    """SSD512 (Liu et al. 2016): VGG16 + extras ending in a 4x4 conv, 24564 default boxes at 512x512.

    ``scales``: "voc" (min sizes 35.84 .. 460.8 px, Caffe's VOC model) or a list of 8 relative scales.
    ``backbone_weights``: "imagenet" (or "torchvision") or the path of a torchvision ``vgg16`` state dict (ImageNet).
    """
    presets = {"voc": SSD512_VOC}
    return _vgg_ssd(
        "ssd512",
        SSD512_VOC,
        presets,
        num_classes,
        image_size,
        scales,
        steps,
        clip,
        densities,
        backbone_weights,
        kwargs,
    )


# torchvision's SSDLite default boxes: DefaultBoxGenerator(min_ratio=0.2, max_ratio=0.95) gives the
# scales 0.2 + 0.15 k (k = 0..5) and a last 1.0; no steps (centres (j + 0.5) / f_k); w and h clipped.
SSDLITE_SCALES = [0.2 + (0.95 - 0.2) * k / 5.0 for k in range(6)] + [1.0]


@register_model
def ssdlite320_mobilenet_v3_large(
    num_classes: int,
    *,
    image_size: int | Sequence[int] = 320,
    scales: Sequence[float] = tuple(SSDLITE_SCALES),
    steps: Sequence[float] | None = None,
    clip: str | None = "wh",
    densities: Sequence[int] | None = None,
    reduced_tail: bool | None = None,
    backbone_weights: str | os.PathLike | None = None,
    **kwargs,
) -> SSD:
    """SSDLite320 (MobileNetV2/V3 papers, torchvision): MobileNetV3-Large + depthwise-separable extras and heads.

    3234 default boxes at 320x320 (ratios 2 and 3 on all 6 maps). ``reduced_tail`` halves the last
    stage (960 -> 480 channels); None: as torchvision, reduced unless ImageNet ``backbone_weights`` are
    loaded ("imagenet" (or "torchvision") or the path of a torchvision ``mobilenet_v3_large`` state dict). torchvision's
    COCO model has the reduced tail (it was trained from scratch).
    """
    if reduced_tail is None:
        reduced_tail = backbone_weights is None
    if reduced_tail and backbone_weights is not None:
        raise UserError("ImageNet backbone_weights need reduced_tail=False (the full MobileNetV3 tail)")
    aspect_ratios = [[2, 3] for _ in range(6)]
    backbone = MobileNetV3Backbone(reduced_tail=reduced_tail)
    if backbone_weights is not None:
        state, source = backbone_state_dict(backbone_weights, "mobilenet_v3_large")
        load_mobilenet_v3_weights(backbone, state, source)
    densities = _densities(densities, len(aspect_ratios), "ssdlite320_mobilenet_v3_large")
    head = SSDHead(
        backbone.out_channels,
        boxes_per_cell(aspect_ratios, densities),
        num_classes,
        separable=True,
        norm_layer=BatchNorm2d,
    )
    kwargs = {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "score_threshold": 0.001,
        "nms_threshold": 0.55,
        "candidates_per_class": 300,
        "max_detections": 300,
        **kwargs,
    }
    model = SSD(
        backbone,
        head,
        num_classes=num_classes,
        image_size=image_size,
        aspect_ratios=aspect_ratios,
        scales=[float(s) for s in scales],
        steps=steps,
        clip=clip,
        densities=densities,
        **kwargs,
    )
    model.arch_args = {"reduced_tail": reduced_tail}
    return model


# ssd_small's default boxes: 4 maps (strides 8 .. 64) for objects of about 8 % to 90 % of the image side.
# The smallest boxes span at least 2 strides of their map even at 128 px, so that an object anywhere in
# a cell still overlaps several boxes by IoU >= 0.5 (the density of positives drives the learning speed).
SMALL_SCALES = [0.15, 0.3, 0.5, 0.75, 0.95]
SMALL_ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2]]


@register_model
def ssd_small(
    num_classes: int,
    *,
    image_size: int | Sequence[int] = 192,
    width: int = 16,
    depth: int = 1,
    scales: Sequence[float] = tuple(SMALL_SCALES),
    aspect_ratios: Sequence[Sequence[float]] = tuple(map(tuple, SMALL_ASPECT_RATIOS)),
    steps: Sequence[float] | None = None,
    clip: str | None = "cxcywh",
    densities: Sequence[int] | None = None,
    backbone_weights: None = None,
    **kwargs,
) -> SSD:
    """A small SSD for CPUs that trains from scratch in minutes: narrow VGG-style + BatchNorm, 192 px.

    4 source maps (strides 8, 16, 32, 64) with ``4w, 8w, 8w, 8w`` channels for ``width`` w; 3x3 heads;
    ``depth`` more 3x3 convolutions at strides 4 and 8 each (a checkpoint written before the option
    existed rebuilds with the depth its weights have, 0).
    """
    if backbone_weights is not None:
        raise UserError("ssd_small has no ImageNet weights; train it from scratch (drop backbone_weights)")
    densities = _densities(densities, len(aspect_ratios), "ssd_small")
    backbone = SmallBackbone(width, depth)
    head = SSDHead(
        backbone.out_channels, boxes_per_cell(aspect_ratios, densities), num_classes, background_prior=0.99
    )
    return SSD(
        backbone,
        head,
        num_classes=num_classes,
        image_size=image_size,
        aspect_ratios=aspect_ratios,
        scales=[float(s) for s in scales],
        steps=steps,
        clip=clip,
        densities=densities,
        **kwargs,
    )
